"""Benchmarks: run on demand, print figures (never wall-clock asserts in tests)."""
