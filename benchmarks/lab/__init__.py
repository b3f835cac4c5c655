"""Lab live-migration benchmark: python -m benchmarks.lab.run"""
