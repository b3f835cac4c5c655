"""Benchmarks (not timed tests): python -m benchmarks.<part>.run"""
