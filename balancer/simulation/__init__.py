"""Trace-driven simulation and policy backtesting (see docs/simulation.md).

Pure parts: :mod:`~balancer.simulation.spec` (host and VM specs), :mod:`~balancer.simulation.
figures` (overload, imbalance, ping-pong, energy), :mod:`~balancer.simulation.decide` (the
per-interval decision, as the service makes it) and :mod:`~balancer.simulation.consolidate`
(packing and power). The shell: :mod:`~balancer.simulation.engine` (the loop on the simulated
cluster), :mod:`~balancer.simulation.execute` (moves on the port), :mod:`~balancer.simulation.
continuous` (continuous multi-day traces: ``vms.csv`` and day files), :mod:`~balancer.simulation.
run` (trace files, policies, a whole run) and :mod:`~balancer.simulation.report` (JSON, CSV,
PNG).
"""
