"""Benchmarks of the eligibility filter against the real broker (issue 3); not tests. See bench/run.py."""
