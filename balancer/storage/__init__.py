"""The durable store: journal of requests and state changes, and the hash-chained audit trail.

```python
store = Store.open("sqlite:///state/balancer.db")   # or postgresql://..., or None (default)
store.verify()                                      # raises AuditChainError naming a record
```
"""

from __future__ import annotations

from balancer.storage.audit import AuditEntry, AuditQuery, AuditRecord
from balancer.storage.db import default_url, make_engine, normalize_url
from balancer.storage.journal import (
    ACTIVE_STATES,
    FENCED_SQLSTATE,
    FINAL_STATES,
    IN_FLIGHT_STATES,
    Fence,
    JournalEvent,
    NewPlan,
    NewRequest,
    Outcome,
    PlanRow,
    RequestRow,
    Store,
)
from balancer.storage.schema import create_schema, metadata

__all__ = [
    "ACTIVE_STATES",
    "FENCED_SQLSTATE",
    "FINAL_STATES",
    "IN_FLIGHT_STATES",
    "AuditEntry",
    "AuditQuery",
    "AuditRecord",
    "Fence",
    "JournalEvent",
    "NewPlan",
    "NewRequest",
    "Outcome",
    "PlanRow",
    "RequestRow",
    "Store",
    "create_schema",
    "default_url",
    "make_engine",
    "metadata",
    "normalize_url",
]
