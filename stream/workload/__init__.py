"""Synthetic workloads: seeded content, profiles and objections for the demo, tests and benchmarks."""
