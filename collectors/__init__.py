"""Collectors: sample hosts and VMs, keep a bounded window, compute the demand the optimizer
uses, and export samples and migration events to InfluxDB. See docs/collectors.md."""
