"""A local multi-host libvirt/KVM lab: N libvirtd hosts on one machine with tiny guests.

Python API::

    from balancer.lab import Lab
    lab = Lab.up(hosts=3, vms=3, busy=1, state_dir="/tmp/my-lab")
    lab.status().to_json()        # {"hosts": [{"name", "uri", "vms"}]}
    lab.read_counter("busy-1")    # the busy guest's counter
    backend = lab.backend()       # a balancer.libvirt.LibvirtBackend on the lab hosts
    lab.down()

For pytest, :mod:`balancer.lab.testing` has the fixture helpers.
"""

from __future__ import annotations

from balancer.lab.bootsector import COUNTER_GPA, GuestKind, boot_sector
from balancer.lab.lab import (
    Lab,
    LabHostStatus,
    LabStatus,
    LabVM,
    check_prerequisites,
    choose_accel,
    default_state_dir,
    lab_session,
    missing_prerequisites,
)

__all__ = [
    "COUNTER_GPA",
    "GuestKind",
    "Lab",
    "LabHostStatus",
    "LabStatus",
    "LabVM",
    "boot_sector",
    "check_prerequisites",
    "choose_accel",
    "default_state_dir",
    "lab_session",
    "missing_prerequisites",
]
