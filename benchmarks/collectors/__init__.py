"""Benchmark of one collection cycle and the demand computation (see run.py)."""
