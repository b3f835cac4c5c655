"""Settings of the collectors part (pydantic, at the edge). The service settings file embeds
:class:`CollectorSettings` under its ``collectors`` key.

The InfluxDB token is never stored in a settings file: the settings name an environment variable
(``token_env``) or a file (``token_file``) that holds it, and :meth:`InfluxSettings.token`
reads it when a client is made. The token is a :class:`pydantic.SecretStr`, so it never shows in
a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from balancer.errors import SettingsError
from balancer.inputs import TOKEN, read_text

DEFAULT_TOKEN_ENV = "BALANCER_INFLUX_TOKEN"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InfluxSettings(_Settings):
    """Where and how samples and migration events are exported."""

    url: str = Field(description="e.g. http://127.0.0.1:8086 (loopback in tests)")
    org: str
    bucket: str
    #: name of the environment variable holding the token (used when token_file is not set)
    token_env: str | None = DEFAULT_TOKEN_ENV
    #: a file holding the token (first line, surrounding whitespace stripped)
    token_file: Path | None = None
    #: the ``cluster`` tag on every point
    cluster: str = "default"
    #: directory of the on-disk spool (SQLite) that keeps points until the server took them
    spool_dir: Path = Path("/var/lib/balancer/influx-spool")
    #: spool size limit; beyond it the oldest points are dropped and counted (never silently)
    spool_max_mib: int = Field(default=1024, ge=1)
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    #: backoff after a failed write: min, doubling up to max
    retry_min_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _needs_token_source(self) -> InfluxSettings:
        if self.token_env is None and self.token_file is None:
            raise ValueError("set token_env or token_file")
        return self

    def token(self) -> SecretStr:
        """The API token from ``token_file`` or else ``token_env`` (never logged)."""
        if self.token_file is not None:
            try:  # a regular file of at most 64 KiB, never blocking (balancer.inputs)
                text = read_text(self.token_file, TOKEN)
            except SettingsError as exc:
                raise SettingsError(
                    f"cannot read the token file: {exc.message.split(': ', 1)[-1]}",
                    path=str(self.token_file),
                    field="influx.token_file",
                ) from exc
            value = text.strip().splitlines()[0].strip() if text.strip() else ""
            if not value:
                raise SettingsError(
                    "the token file is empty", path=str(self.token_file), field="influx.token_file"
                )
            return SecretStr(value)
        assert self.token_env is not None
        value = os.environ.get(self.token_env, "").strip()
        if not value:
            raise SettingsError(
                f"environment variable {self.token_env} is not set", field="influx.token_env"
            )
        return SecretStr(value)


DAY_S = 86_400


class HistorySettings(_Settings):
    """The demand history beyond the decision window (collectors/history.py).

    Fine buckets of ``fine_step_s`` are kept for ``fine_keep_days``, then folded into coarse
    buckets of ``coarse_step_s`` (mean and max) kept until ``coarse_keep_days`` after their time.
    At most ``max_series`` series (VMs + hosts); beyond it the series seen least recently go.
    """

    enabled: bool = True
    fine_step_s: int = Field(default=300, gt=0, le=DAY_S)
    fine_keep_days: int = Field(default=14, ge=1, le=3660)
    #: a multiple of fine_step_s that divides a day
    coarse_step_s: int = Field(default=3600, gt=0, le=DAY_S)
    #: the total age limit (coarse buckets older than this are dropped); > fine_keep_days
    coarse_keep_days: int = Field(default=90, ge=2, le=36600)
    max_series: int = Field(default=20_000, ge=1, le=1_000_000)

    @field_validator("fine_step_s")
    @classmethod
    def _fine_divides_day(cls, v: int) -> int:
        if DAY_S % v:
            raise ValueError("must divide a day (86400 s)")
        return v

    @field_validator("coarse_step_s")
    @classmethod
    def _coarse_grid(cls, v: int, info: ValidationInfo) -> int:
        fine = info.data.get("fine_step_s")
        if fine is not None and v % fine:
            raise ValueError(f"must be a multiple of fine_step_s ({fine})")
        if DAY_S % v:
            raise ValueError("must divide a day (86400 s)")
        return v

    @field_validator("coarse_keep_days")
    @classmethod
    def _coarse_longer(cls, v: int, info: ValidationInfo) -> int:
        fine = info.data.get("fine_keep_days")
        if fine is not None and v <= fine:
            raise ValueError(f"must exceed fine_keep_days ({fine})")
        return v


class CollectorSettings(_Settings):
    """Window, demand and staleness settings, and the optional InfluxDB export."""

    #: length of the sample window the demand is computed over
    window_s: float = Field(default=3600.0, gt=0)
    #: expected sampling interval; the window keeps ceil(window_s / sample_interval_s) + 1 slots
    sample_interval_s: float = Field(default=20.0, gt=0)
    #: the high percentile of the demand formula (0 < percentile <= 100)
    percentile: float = Field(default=95.0, gt=0, le=100)
    #: half-life of the exponentially weighted mean (alpha per sample = 1 - 2**(-interval/halflife))
    halflife_s: float = Field(default=600.0, gt=0)
    #: a host or VM without a sample for this long is stale (balancing moves pause)
    stale_after_s: float = Field(default=120.0, gt=0)
    influx: InfluxSettings | None = None
    #: the long demand history (forecasting); on by default
    history: HistorySettings = Field(default_factory=HistorySettings)

    @model_validator(mode="after")
    def _consistent(self) -> CollectorSettings:
        if self.sample_interval_s > self.window_s:
            raise ValueError("sample_interval_s must not exceed window_s")
        if self.stale_after_s < self.sample_interval_s:
            raise ValueError("stale_after_s must be at least sample_interval_s")
        return self

    @property
    def window_slots(self) -> int:
        return math.ceil(self.window_s / self.sample_interval_s) + 1

    @property
    def alpha(self) -> float:
        """The per-sample EWM smoothing factor equivalent to ``halflife_s`` at the nominal rate."""
        return float(1.0 - 2.0 ** (-self.sample_interval_s / self.halflife_s))
