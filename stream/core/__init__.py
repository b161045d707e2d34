"""The pure core: the contract's vocabulary, its rule and the engine that applies it. No I/O, no Kafka."""
