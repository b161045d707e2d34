"""The shell around the core: Kafka wiring (the worker loop), the RocksDB stores, topics, metrics, the app."""
