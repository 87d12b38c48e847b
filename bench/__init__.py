"""Benchmarks: programs that print figures (not tests). Run as `python -m bench.<name>`."""
