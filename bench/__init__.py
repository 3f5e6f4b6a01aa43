"""Benchmark suite: `python -m bench` (see README)."""
