"""``balancer place``: initial placement of a new VM on the running service's cluster
(``POST /api/v1/placements``), and with ``--define FILE.xml [--start]`` its definition there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from balancer.cli.common import finite, handle_errors, json_option, print_json, print_table
from balancer.cli.service import Client, _client_options
from balancer.errors import InputError
from balancer.inputs import DOMAIN_XML, read_text


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"--label {text!r}: KEY=VALUE", subject="--label")
    return key, value


def _from_xml(xml: str, path: Path) -> tuple[str, int, int]:
    """(name, vCPUs, MiB) of a domain definition."""
    import xml.etree.ElementTree as ET

    from balancer.libvirt.domxml import parse_domain

    try:
        info = parse_domain(xml)
    except ET.ParseError as exc:
        raise InputError(f"{path}: not a domain XML: {exc}", subject=str(path)) from exc
    if not info.name or info.memory_mib < 1:
        raise InputError(f"{path}: the domain needs a <name> and a <memory>", subject=str(path))
    return info.name, info.vcpus, info.memory_mib


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--name", "vm", help="The new VM's name (default: the --define XML's).")
    @click.option("--vcpus", type=click.IntRange(1, 4096), help="Default: the XML's.")
    @click.option(
        "--memory-mib", type=click.IntRange(1, 64 * 1024 * 1024), help="Default: the XML's."
    )
    @click.option(
        "--cpu-demand",
        type=finite(0, 4096),
        default=None,
        help="CPU cores to plan it with (default: all its vCPUs).",
    )
    @click.option("--feature", "features", multiple=True, help="A CPU feature it requires.")
    @click.option("--label", "labels", multiple=True, help="KEY=VALUE, for the policy's rules.")
    @click.option(
        "--define",
        "define_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Define this domain XML on the best host (or --host).",
    )
    @click.option("--start", is_flag=True, help="With --define: start it there.")
    @click.option("--host", help="With --define: this host instead of the best.")
    @_client_options
    @json_option
    @handle_errors
    def place(
        vm: str | None,
        vcpus: int | None,
        memory_mib: int | None,
        cpu_demand: float | None,
        features: tuple[str, ...],
        labels: tuple[str, ...],
        define_path: Path | None,
        start: bool,
        host: str | None,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Initial placement: the best hosts for a new VM under the policy (rules, headroom,
        CPU features), ranked, and why the others are out; with --define, define it there."""
        if define_path is None and (start or host):
            raise InputError(f"--{'start' if start else 'host'} goes with --define FILE.xml")
        xml: str | None = None
        if define_path is not None:
            xml = read_text(define_path, DOMAIN_XML)
            x_name, x_vcpus, x_mib = _from_xml(xml, define_path)
            vm, vcpus, memory_mib = vm or x_name, vcpus or x_vcpus, memory_mib or x_mib
        if not vm or vcpus is None or memory_mib is None:
            raise InputError("give --name, --vcpus and --memory-mib (or --define FILE.xml)")
        body: dict[str, Any] = {
            "vm": vm,
            "vcpus": vcpus,
            "memory_mib": memory_mib,
            "cpu_demand_cores": cpu_demand,
            "features": list(features),
            "labels": dict(_label(x) for x in labels),
        }
        if xml is not None:
            body |= {"define": xml, "start": start} | ({"host": host} if host else {})
        doc = Client(url, token, config_path).call("POST", "/placements", json=body)
        if as_json:
            print_json(doc)
            return
        click.echo(f"{doc['vm']}: planned with {doc['cpu_demand_cores']:g} cores")
        print_table(
            "candidates (best first)",
            ["rank", "host", "cpu load", "memory load", "imbalance"],
            [
                [i + 1, c["host"], f"{c['cpu_load']:.2f}", f"{c['memory_load']:.2f}",
                 f"{c['imbalance']:.3f}"]
                for i, c in enumerate(doc["candidates"])
            ],
        )  # fmt: skip
        print_table(
            "ruled out",
            ["host", "reason", "detail"],
            [[r["host"], r["reason"], r["detail"]] for r in doc["ruled_out"]],
        )
        if doc["placed_on"]:
            done = "defined and started" if doc["started"] else "defined"
            click.echo(f"{doc['vm']} {done} on {doc['placed_on']}")
