"""The migration executor: one prioritized queue, concurrent live migrations, journal first.

```python
store = Store.open(url)                                  # balancer.storage
ex = Executor(port, store, clock=clock, config=ExecutorConfig.from_policy(policy), policy=policy)
ex.recover()                                             # reconcile after a crash
sub = ex.submit_plan(plan, made_at=snapshot_time)        # or ex.submit(MigrationRequest(...))
ex.run()                                                 # CLI: until nothing is left
ExecutorWorker(ex).start()                               # service: a worker thread
```

See docs/executor.md for priority classes, limits, journal states, recovery and the audit chain.
"""

from __future__ import annotations

from balancer.executor.checks import TargetChooser, make_default_chooser, premises_digest
from balancer.executor.engine import Executor, JobFinder, PlanSubmission, plan_digest, result_of
from balancer.executor.types import (
    AbortReason,
    ExecutorConfig,
    ExecutorStatus,
    MigrationRequest,
    MigrationResult,
    PriorityClass,
    QueuedView,
    Result,
    RunningView,
    SkipReason,
)
from balancer.executor.worker import ExecutorWorker

__all__ = [
    "AbortReason",
    "Executor",
    "ExecutorConfig",
    "ExecutorStatus",
    "ExecutorWorker",
    "JobFinder",
    "MigrationRequest",
    "MigrationResult",
    "PlanSubmission",
    "PriorityClass",
    "QueuedView",
    "Result",
    "RunningView",
    "SkipReason",
    "TargetChooser",
    "make_default_chooser",
    "plan_digest",
    "premises_digest",
    "result_of",
]
