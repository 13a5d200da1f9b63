"""Benchmarks of claude-hooks: `make bench` (or `python -m bench.run`) runs them all."""
