"""One exception tree for the whole project.

```
BalancerError                    every error we raise on purpose; has ``exit_code`` for the CLI
├── InputError                   bad input from a person or a file (exit 2)
│   ├── SnapshotError            a snapshot file: names the item and the field
│   ├── PolicyError              a policy file: names the file, line and field
│   └── SettingsError            the service settings file: names the file, line and field
├── PlanningError                the optimizer could not produce a plan (exit 3)
│   └── InfeasibleError          hard rules conflict: names the smallest conflicting rule set
├── HypervisorError              a hypervisor port call failed (exit 4)
│   ├── HostUnreachableError     a host did not answer
│   ├── VMNotFoundError          the VM is on no reachable host
│   └── MigrationError           a live migration failed: which VM, hosts, and what the backend said
├── StorageError                 the journal / audit store (exit 5)
│   ├── AuditChainError          the hash chain does not verify: names the first bad record
│   └── FencedError              the database refused a write from a lease epoch that is no
│                                longer the cluster's (another instance leads it now)
├── ServiceError                 talking to the running service (exit 6)
└── LabError                     the local lab cannot be set up: says what is missing (exit 7)
```

Adapters translate library errors at the boundary and chain the cause (``raise X(...) from exc``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.plan import InfeasibilityCause


class BalancerError(Exception):
    """Base of every error raised on purpose by the balancer."""

    exit_code: int = 1

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.subject = subject

    def __str__(self) -> str:
        return self.message


class InputError(BalancerError):
    exit_code = 2


class SnapshotError(InputError):
    """A snapshot document is invalid; ``subject`` is the item (``vms[3] 'vm004'``)."""

    def __init__(
        self,
        message: str,
        *,
        item: str | None = None,
        field: str | None = None,
        path: str | None = None,
    ) -> None:
        where = ": ".join(p for p in (path, item, field) if p)
        super().__init__(f"{where}: {message}" if where else message, subject=item)
        self.item = item
        self.field = field
        self.path = path


class PolicyError(InputError):
    """A policy file is invalid; names file, line and field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        loc = path or "<policy>"
        if line is not None:
            loc = f"{loc}:{line}"
        text = f"{loc}: {field}: {message}" if field else f"{loc}: {message}"
        super().__init__(text, subject=field)
        self.path = path
        self.line = line
        self.field = field


class SettingsError(PolicyError):
    """The service settings file is invalid (same location format as policy errors)."""


class PlanningError(BalancerError):
    exit_code = 3


class InfeasibleError(PlanningError):
    """``rules``: the rules found in conflict; ``causes``: one structured cause per conflict
    (code, kind, rules, VMs, message)."""

    def __init__(
        self,
        message: str,
        *,
        rules: tuple[str, ...] = (),
        causes: tuple[InfeasibilityCause, ...] = (),
    ) -> None:
        super().__init__(message, subject=",".join(rules) or None)
        self.rules = rules
        self.causes = causes


class HypervisorError(BalancerError):
    exit_code = 4


class HostUnreachableError(HypervisorError):
    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"host {host} is unreachable: {detail}", subject=host)
        self.host = host


class VMNotFoundError(HypervisorError):
    def __init__(self, vm: str) -> None:
        super().__init__(f"VM {vm} was not found on any reachable host", subject=vm)
        self.vm = vm


class MigrationError(HypervisorError):
    def __init__(self, vm: str, source: str, target: str, detail: str) -> None:
        super().__init__(
            f"migration of {vm} from {source} to {target} failed: {detail}", subject=vm
        )
        self.vm = vm
        self.source = source
        self.target = target
        self.detail = detail


class StorageError(BalancerError):
    exit_code = 5


class AuditChainError(StorageError):
    def __init__(self, message: str, *, record_id: int | None = None) -> None:
        super().__init__(message, subject=str(record_id) if record_id is not None else None)
        self.record_id = record_id


class FencedError(StorageError):
    """A write carried a fencing token (cluster, epoch) that no longer holds the cluster's
    lease: another instance has taken the cluster over, so this one must step down."""

    def __init__(self, message: str, *, cluster: str, epoch: int) -> None:
        super().__init__(message, subject=cluster)
        self.cluster = cluster
        self.epoch = epoch


class ServiceError(BalancerError):
    exit_code = 6


class LabError(BalancerError):
    exit_code = 7
