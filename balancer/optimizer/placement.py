"""Initial placement (pure): the best hosts for a VM that does not run yet, ranked, with the
loads each would have, and why every other host is ruled out.

Words: a *new VM* is a size (vCPUs, memory), the CPU demand to expect of it (default: all its
vCPUs, the safe assumption for a VM nobody has measured yet), the CPU features it requires and
its labels (so the policy's rules and label selectors apply to it as to any VM: a ``vm_host``
rule, an anti-affinity group naming it, the headroom). The ranking is the migration assistant's
(:func:`balancer.optimizer.assist`, the optimizer's own host filters): the VM is put, for the
computation only, on a stand-in host that takes no part in the balance and accepts nothing, and
asked where it should move. So a placement never offers a host a plan would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from balancer.errors import InputError
from balancer.model import VM, Host, HostState, Snapshot
from balancer.optimizer.assist import Assistance, assist
from policies.model import Policy

#: the stand-in host's name (a host name the inputs never allow: it has a control character)
STAND_IN = "\x00new"


@dataclass(frozen=True, slots=True, kw_only=True)
class NewVM:
    name: str
    vcpus: int
    memory_mib: int
    #: the CPU demand to plan with (None: all its vCPUs)
    cpu_demand_cores: float | None = None
    cpu_features: frozenset[str] = frozenset()
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # each message starts with the field it names (the API's error "field")
        if not self.name:
            raise InputError("vm: a new VM needs a name", subject="vm")
        if self.vcpus < 1:
            raise InputError(f"vcpus: {self.vcpus}: a new VM needs at least 1", subject="vcpus")
        if self.memory_mib < 1:
            raise InputError(
                f"memory_mib: {self.memory_mib}: a new VM needs at least 1 MiB",
                subject="memory_mib",
            )
        demand = self.cpu_demand_cores
        if demand is not None and not 0 <= demand <= self.vcpus:
            raise InputError(
                f"cpu_demand_cores: {demand:g} cores, outside 0..{self.vcpus} (its vCPUs)",
                subject="cpu_demand_cores",
            )


def place(snapshot: Snapshot, policy: Policy, new: NewVM) -> Assistance:
    """The hosts ``new`` could start on now, best first (module docstring); ``current`` of
    the answer is empty."""
    if new.name in snapshot.vm_map():
        raise InputError(f"a VM named {new.name!r} exists already", subject=new.name)
    stand_in = Host(
        name=STAND_IN,
        cpu_cores=new.vcpus,
        memory_mib=new.memory_mib,
        cpu_features=new.cpu_features,
        state=HostState.MAINTENANCE,
    )
    vm = VM(
        name=new.name,
        host=STAND_IN,
        vcpus=new.vcpus,
        memory_mib=new.memory_mib,
        cpu_used_cores=float(new.vcpus if new.cpu_demand_cores is None else new.cpu_demand_cores),
        memory_used_mib=new.memory_mib,
        cpu_features=new.cpu_features,
        labels=dict(new.labels),
    )
    with_new = replace(snapshot, hosts=(*snapshot.hosts, stand_in), vms=(*snapshot.vms, vm))
    result = assist(with_new, policy, new.name)
    return replace(
        result,
        current="",
        ruled_out=tuple(r for r in result.ruled_out if r.host != STAND_IN),
        blocked=None,
    )
