"""``balancer agent``: sample this host (CPU, memory, PSI, network) once or on a schedule and
push the samples to the service's ingest endpoint or to InfluxDB. Thin: parse, call
:mod:`collectors.agent`, format."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import click

from balancer.cli.common import finite, handle_errors, json_option, print_json, print_table
from balancer.errors import InputError
from balancer.inputs import TOKEN, read_text


@click.command()
@click.option("--once", is_flag=True, help="Print one sample of this host and exit.")
@json_option
@click.option("--host", envvar="BALANCER_AGENT_HOST", help="Host name (default: this host's).")
@click.option(
    "--interval-s",
    type=finite(0.05, 86400),
    default=20.0,
    show_default=True,
    envvar="BALANCER_AGENT_INTERVAL_S",
    help="Seconds between samples.",
)
@click.option(
    "--measure-s",
    type=finite(0.05, 3600),
    default=1.0,
    show_default=True,
    help="With --once: seconds over which CPU and network rates are measured.",
)
@click.option(
    "--push-url",
    envvar="BALANCER_INGEST_URL",
    help="Service base URL; samples are POSTed to <url>/api/v1/ingest/host.",
)
@click.option(
    "--push-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BALANCER_INGEST_TOKEN_FILE",
    help="File with the service's API token.",
)
@click.option("--influx-url", envvar="BALANCER_INFLUX_URL", help="InfluxDB URL.")
@click.option("--influx-org", envvar="BALANCER_INFLUX_ORG")
@click.option("--influx-bucket", envvar="BALANCER_INFLUX_BUCKET")
@click.option(
    "--influx-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BALANCER_INFLUX_TOKEN_FILE",
    help="File with the InfluxDB token (else env BALANCER_INFLUX_TOKEN).",
)
@click.option(
    "--cluster",
    envvar="BALANCER_CLUSTER",
    default="default",
    show_default=True,
    help="The cluster tag of the InfluxDB points.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="BALANCER_STATE_DIR",
    default=Path("/var/lib/balancer/agent"),
    show_default=True,
    help="Where the InfluxDB spool lives.",
)
@handle_errors
def agent(
    once: bool,
    as_json: bool,
    host: str | None,
    interval_s: float,
    measure_s: float,
    push_url: str | None,
    push_token_file: Path | None,
    influx_url: str | None,
    influx_org: str | None,
    influx_bucket: str | None,
    influx_token_file: Path | None,
    cluster: str,
    state_dir: Path,
) -> None:
    """Sample this host's CPU, memory, pressure and network; print or push the samples."""
    from balancer.sim.clock import RealClock
    from collectors.agent import host_sample_doc
    from collectors.hostagent import HostAgentSampler

    clock = RealClock()
    sampler = HostAgentSampler(clock.now(), host=host)
    if once:
        clock.sleep(measure_s)
        (sample,) = sampler.sample(clock.now()).hosts
        doc = host_sample_doc(sample)
        if as_json:
            print_json(doc)
        else:
            psi = doc["psi"]
            cpu_psi = psi["cpu"]["some"]["avg10"] if psi and psi.get("cpu") else None
            print_table(
                f"host {sample.host}",
                ["field", "value"],
                [
                    ("time", doc["time"]),
                    ("cpu", f"{sample.cpu_used_cores:.2f} / {sample.cpu_cores} cores"),
                    ("memory", f"{sample.memory_used_mib} / {sample.memory_mib} MiB"),
                    ("cpu pressure (some, avg10)", "n/a" if cpu_psi is None else f"{cpu_psi} %"),
                    ("net rx / tx", f"{doc['net_rx_bps']} / {doc['net_tx_bps']} B/s"),
                ],
            )
        return
    _run_loop(
        sampler,
        interval_s=interval_s,
        push_url=push_url,
        push_token_file=push_token_file,
        influx_url=influx_url,
        influx_org=influx_org,
        influx_bucket=influx_bucket,
        influx_token_file=influx_token_file,
        cluster=cluster,
        state_dir=state_dir,
    )


def _run_loop(
    sampler: object,
    *,
    interval_s: float,
    push_url: str | None,
    push_token_file: Path | None,
    influx_url: str | None,
    influx_org: str | None,
    influx_bucket: str | None,
    influx_token_file: Path | None,
    cluster: str,
    state_dir: Path,
) -> None:
    from pydantic import ValidationError

    from collectors.agent import HttpIngestTarget, InfluxTarget, Target, run_agent
    from collectors.hostagent import HostAgentSampler
    from collectors.influx import InfluxExporter
    from collectors.settings import InfluxSettings

    assert isinstance(sampler, HostAgentSampler)
    targets: list[Target] = []
    if push_url:
        token = None
        if push_token_file is not None:
            token = read_text(push_token_file, TOKEN).strip() or None  # balancer.inputs
        targets.append(HttpIngestTarget(push_url, token=token))
    if influx_url:
        if not influx_org or not influx_bucket:
            raise InputError("--influx-url needs --influx-org and --influx-bucket")
        try:
            settings = InfluxSettings(
                url=influx_url,
                org=influx_org,
                bucket=influx_bucket,
                token_file=influx_token_file,
                cluster=cluster,
                spool_dir=state_dir / "influx-spool",
            )
        except ValidationError as exc:
            raise InputError(f"InfluxDB settings: {exc.errors()[0]['msg']}") from exc
        settings.token()  # fail now, not at the first write, when the token is missing
        targets.append(InfluxTarget(InfluxExporter(settings)))
    if not targets:
        raise InputError("no target: give --push-url or --influx-url (or use --once)")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        logging.getLogger("balancer.collectors.agent").info(
            "agent: %s received, stopping", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    where = ", ".join(
        t for t in (push_url and f"ingest {push_url}", influx_url and f"influx {influx_url}") if t
    )
    logging.getLogger("balancer.collectors.agent").info(
        "agent: sampling %s every %g s, pushing to %s", sampler.host, interval_s, where
    )
    cycles = run_agent(
        sampler, targets, interval_s=interval_s, stop=stop, now=lambda: datetime.now(UTC)
    )
    logging.getLogger("balancer.collectors.agent").info("agent: stopped after %d samples", cycles)


def register(cli: click.Group) -> None:
    cli.add_command(agent)
