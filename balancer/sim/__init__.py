"""The simulated cluster: a deterministic, seeded, in-process implementation of the
hypervisor port, and a generator of realistic synthetic clusters."""
