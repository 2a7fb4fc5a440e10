"""Benchmarks against the real local stack (``make bench``); see docs/benchmarks.md."""
