"""``balancer ha status``: the instances of a high-availability deployment and their clusters,
read from the shared database (works while any instance, or all, are down)."""

from __future__ import annotations

from pathlib import Path

import click

from balancer.cli.common import handle_errors, json_option, print_json, print_table
from balancer.errors import InputError


def register(cli: click.Group) -> None:
    @cli.group()
    def ha() -> None:
        """High availability: instances, leases and leaders (docs/deployment.md)."""

    @ha.command("status")
    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default="config/balancer.yaml",
        show_default=True,
        help="Settings file (its database and lease length).",
    )
    @click.option("--db", "db_url", default=None, help="Database URL (default: from --config).")
    @json_option
    @handle_errors
    def status(config_path: str, db_url: str | None, as_json: bool) -> None:
        """Instances (alive or not, the clusters each leads) and each cluster's lease."""
        from balancer.ha.lease import LeaseStore
        from balancer.ha.status import deployment_status
        from balancer.settings import load_settings
        from balancer.storage import make_engine
        from balancer.storage.journal import sqlite_file

        alive_s = 30.0
        if db_url is None:
            settings = load_settings(config_path)
            db_url = settings.database
            if settings.ha is not None:
                alive_s = settings.ha.alive_s
        db_file = sqlite_file(db_url)
        if db_file is not None and not Path(db_file).is_file():
            raise InputError(f"{db_file}: the database does not exist (it is not created)")
        engine = make_engine(db_url)
        try:
            doc = deployment_status(LeaseStore(engine), alive_s=alive_s)
        finally:
            engine.dispose()
        if as_json:
            print_json(doc)
            return
        print_table(
            "instances",
            ["instance", "alive", "seen", "clusters", "api", "pid"],
            [
                [
                    i["instance"],
                    "yes" if i["alive"] else "no",
                    f"{i['seen_s_ago']:.1f} s ago",
                    ", ".join(i["clusters"]) or "-",
                    i["api"],
                    i["pid"],
                ]
                for i in doc["instances"]
            ],
        )
        print_table(
            "clusters",
            ["cluster", "leader", "epoch", "since", "expires"],
            [
                [
                    c["cluster"],
                    c["leader"] or "(none: lease free or expired)",
                    c["epoch"],
                    c["since"],
                    c["expires_at"],
                ]
                for c in doc["leases"]
            ],
        )
