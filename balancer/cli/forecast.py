"""``balancer forecast backtest``: the forecaster's accuracy on a continuous trace, against
reactive persistence (thin: parse, call :mod:`balancer.forecast.accuracy`, format);
``balancer forecast show``: the running service's last forecast (``GET /api/v1/forecast``)."""

from __future__ import annotations

from pathlib import Path

import click

from balancer.cli.common import finite, handle_errors, json_option, print_json, print_table
from balancer.cli.service import Client, _client_options
from balancer.errors import InputError


def parse_horizons(text: str, step_s: float) -> list[int]:
    """``30m,1h,4h`` -> steps (each a whole number of steps, at most a day)."""
    from balancer.simulation.spec import parse_duration_s

    out: list[int] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            raise InputError(f"--horizons {text!r}: an empty item", subject="--horizons")
        seconds = parse_duration_s(item)
        steps = round(seconds / step_s)
        if steps < 1 or abs(steps * step_s - seconds) > 1e-6 or seconds > 86400:
            raise InputError(
                f"--horizons: {item!r} must be a whole number of {step_s:g} s steps, "
                "at most one day",
                subject="--horizons",
            )
        out.append(steps)
    return sorted(set(out))


def register(cli: click.Group) -> None:
    @cli.group()
    def forecast() -> None:
        """Demand forecasts: accuracy against what happened."""

    @forecast.command()
    @_client_options
    @json_option
    @handle_errors
    def show(url: str | None, token: str | None, config_path: str | None, as_json: bool) -> None:
        """The service's last forecast: each host's expected CPU peak and when it comes."""
        doc = Client(url, token, config_path).call("GET", "/forecast")
        if as_json:
            print_json(doc)
            return
        if not doc["enabled"]:
            click.echo(
                "predictive balancing is off (policy: predictive: {horizon_minutes, quantile, "
                "weight}); "
                + (f"history kept for {doc['history_series']} series" if doc["history"] else "")
            )
            return
        if doc["at"] is None:
            click.echo("no forecast yet: it is made at the next balance cycle")
            return
        click.echo(
            f"forecast at {doc['at']}: horizon {doc['horizon_minutes']} min, "
            f"quantile {doc['quantile']}, weight {doc['weight']}, "
            f"{doc['fallback_vms']} VMs on present demand (short history)"
        )
        print_table(
            "hosts",
            ["host", "cpu now", "expected peak", "at"],
            [
                [
                    h["host"],
                    f"{100 * h['present_load']:.0f}%",
                    f"{100 * h['peak_load']:.0f}% ({h['peak_cores']:.1f} cores)",
                    h["peak_at"],
                ]
                for h in doc["hosts"]
            ],
        )

    @forecast.command()
    @click.option(
        "--traces",
        required=True,
        type=click.Path(path_type=Path),
        help="Continuous trace directory (vms.csv + dayNN.csv(.gz) with the same VMs).",
    )
    @click.option(
        "--vms-csv",
        type=click.Path(path_type=Path),
        default=None,
        help="VM sizes (vm,vcpus,...); default: vms.csv in the trace directory.",
    )
    @click.option("--train-days", default=14, show_default=True, type=click.IntRange(1, 3650))
    @click.option("--horizons", default="30m,1h,4h", show_default=True)
    @click.option("--quantile", default=0.9, show_default=True, type=finite(0.5, 0.99))
    @click.option(
        "--every",
        default="1h",
        show_default=True,
        help="Distance between rolling origins.",
    )
    @json_option
    @handle_errors
    def backtest(
        traces: Path,
        vms_csv: Path | None,
        train_days: int,
        horizons: str,
        quantile: float,
        every: str,
        as_json: bool,
    ) -> None:
        """Learn on the first days, then score the forecast at rolling origins over the rest:
        MAE of the mean and coverage of the upper quantile per horizon, against reactive
        persistence."""
        from balancer.forecast import fit
        from balancer.forecast.accuracy import backtest as run_backtest
        from balancer.forecast.accuracy import fitted, persistence, series_of
        from balancer.simulation.spec import parse_duration_s
        from collectors.continuous import read_continuous_trace

        trace = read_continuous_trace(traces, vms_csv=vms_csv)
        steps = parse_horizons(horizons, trace.step_s)
        stride = round(parse_duration_s(every) / trace.step_s)
        if stride < 1:
            raise InputError(f"--every {every!r}: at least one step", subject="--every")
        per_day = round(86400 / trace.step_s)
        total = trace.demand_cores.shape[1]
        start = train_days * per_day
        origins = list(range(start, total - max(steps) + 1, stride))
        if not origins:
            raise InputError(
                f"{traces}: {total / per_day:g} days of trace leave no origin after "
                f"{train_days} training days and a {max(steps)}-step horizon",
                subject=str(traces),
            )
        series = series_of(trace.names, trace.demand_cores, step_s=trace.step_s)
        model = fit(series.head(start), horizon_steps=max(steps))
        methods = {
            "forecast": fitted(model, quantile),
            "persistence": persistence(quantile),
        }
        scores = {
            name: run_backtest(series, f, origins=origins, horizons=steps)
            for name, f in methods.items()
        }
        if as_json:
            print_json(
                {
                    "traces": str(traces),
                    "vms": len(trace.names),
                    "train_days": train_days,
                    "origins": len(origins),
                    "step_s": trace.step_s,
                    "quantile": quantile,
                    "horizons": [
                        {
                            "horizon_s": h * trace.step_s,
                            **{
                                name: {
                                    "mae_cores": s[i].mae,
                                    "wape": s[i].wape,
                                    "coverage": s[i].coverage,
                                    "points": s[i].points,
                                }
                                for name, s in scores.items()
                            },
                        }
                        for i, h in enumerate(steps)
                    ],
                }
            )
            return
        rows = []
        for i, h in enumerate(steps):
            f, p = scores["forecast"][i], scores["persistence"][i]
            rows.append(
                (
                    f"{h * trace.step_s / 60:g} min",
                    f"{f.mae:.3f}",
                    f"{p.mae:.3f}",
                    f"{f.coverage:.1%}",
                    f"{p.coverage:.1%}",
                    f.points,
                )
            )
        print_table(
            f"forecast backtest: {len(trace.names)} VMs, {len(origins)} origins, q={quantile:g}",
            [
                "horizon",
                "MAE forecast",
                "MAE persistence",
                "coverage forecast",
                "coverage persistence",
                "points",
            ],
            rows,
        )
