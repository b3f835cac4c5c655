"""``python -m balancer.executor``: ``balancer execute`` on the simulated cluster without loading
the other command modules (a quick start: the kill test restarts it many times).

Same options and output as ``balancer execute --json`` for the simulated cluster.
"""

from __future__ import annotations

import argparse
import json
import sys

from balancer.errors import BalancerError
from balancer.executor.runner import outcomes_json, run_plan_file
from balancer.executor.types import ExecutorConfig, Result
from balancer.sim.cluster import DEFAULT_LINK_MIB_S


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m balancer.executor")
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--db", default=None)
    ap.add_argument("--state", default=None)
    ap.add_argument("--per-host", type=int, default=2)
    ap.add_argument("--total", type=int, default=8)
    ap.add_argument("--retry", action="store_true")
    ap.add_argument("--poll", type=float, default=0.2)
    ap.add_argument("--link-mib-s", type=float, default=DEFAULT_LINK_MIB_S)
    args = ap.parse_args(argv)
    try:
        run = run_plan_file(
            plan_path=args.plan,
            snapshot_path=args.snapshot,
            db_url=args.db,
            state_path=args.state,
            config=ExecutorConfig(
                concurrent_per_host=args.per_host,
                concurrent_total=args.total,
                poll_interval_s=args.poll,
            ),
            link_mib_s=args.link_mib_s,
            allow_retry=args.retry,
        )
    except BalancerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(outcomes_json(run), indent=2))
    return 1 if any(r.result in (Result.FAILED, Result.ABORTED) for r in run.results) else 0


if __name__ == "__main__":
    sys.exit(main())
