"""Failover benchmark of the high-availability service (``python -m benchmarks.ha.run``)."""
