"""Prometheus: instant and range queries that never raise for "no data".

A failed query is a Measurement with `error` set; no data is a Measurement with no value.
Neither is ever a pass: the caller (policy) decides what each means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from prefect import task

from phasegate.blocks.systems import PrometheusConnection
from phasegate.errors import SourceUnavailable

__all__ = ["Measurement", "count_series", "jobs_of", "query_instant", "query_range",
           "server_version"]


@dataclass(frozen=True)
class Measurement:
    """One query's outcome: `value`, or `error`, or neither (no data)."""

    query: str
    value: float | None = None
    error: str | None = None
    points: tuple[tuple[float, float], ...] = ()

    @property
    def has_value(self) -> bool:
        """True only for a real, finite number."""
        return self.error is None and self.value is not None and math.isfinite(self.value)


@task(timeout_seconds=120)
def query_instant(prom: PrometheusConnection, query: str) -> Measurement:
    """Evaluate `query` now; a vector must have exactly one sample (aggregate in PromQL)."""
    try:
        result = prom.get_client().custom_query(query=query)
    except Exception as exc:  # noqa: BLE001 - any failure is an Error measurement
        return Measurement(query, error=f"{type(exc).__name__}: {exc}")
    if not result:
        return Measurement(query)
    if len(result) > 1:
        return Measurement(query, error=f"{len(result)} series; aggregate to one")
    return Measurement(query, value=float(result[0]["value"][1]))


# Prometheus refuses a range query of more than 11,000 points per series.
_MAX_POINTS = 10_000


@task(timeout_seconds=120)
def query_range(prom: PrometheusConnection, query: str, start: datetime, end: datetime,
                step: timedelta) -> Measurement:
    """Evaluate `query` over [start, end] at `step`, in chunks Prometheus accepts; `points` are
    (epoch, value) of the single series and `value` is the last point. Never raises."""
    points: list[tuple[float, float]] = []
    chunk = step * _MAX_POINTS
    lo = start
    while lo <= end:
        hi = min(end, lo + chunk)
        part = _range_chunk(prom, query, lo, hi, step)
        if isinstance(part, Measurement):
            return part  # an error or more than one series: the whole answer is that
        points.extend(part)
        lo = hi + step
    if not points:
        return Measurement(query)
    return Measurement(query, value=points[-1][1], points=tuple(points))


def _range_chunk(prom: PrometheusConnection, query: str, start: datetime, end: datetime,
                 step: timedelta) -> list[tuple[float, float]] | Measurement:
    try:
        result = prom.get_client().custom_query_range(
            query=query, start_time=start, end_time=end, step=f"{int(step.total_seconds())}s")
    except Exception as exc:  # noqa: BLE001 - any failure is an Error measurement
        return Measurement(query, error=f"{type(exc).__name__}: {exc}")
    if len(result) > 1:
        return Measurement(query, error=f"{len(result)} series; aggregate to one")
    return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []


# ---------------------------------------------------------------- preflight probes
# Plain functions (no task, no retry): the preflight wants the first answer, within its deadline.


def server_version(prom: PrometheusConnection) -> str:
    """The server's version (`/api/v1/status/buildinfo`); raises SourceUnavailable."""
    try:
        resp = httpx.get(f"{prom.url.rstrip('/')}/api/v1/status/buildinfo",
                         headers=prom.headers(), timeout=prom.timeout_s)
        resp.raise_for_status()
        return str(resp.json()["data"]["version"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise SourceUnavailable(f"Prometheus {prom.url}: {type(exc).__name__}: {exc}") from exc


def count_series(prom: PrometheusConnection, query: str) -> int:
    """How many series `query` returns now; raises SourceUnavailable when it fails."""
    try:
        return len(prom.get_client().custom_query(query=query))
    except Exception as exc:  # noqa: BLE001 - the client raises several types
        raise SourceUnavailable(f"{type(exc).__name__}: {exc}") from exc


def jobs_of(prom: PrometheusConnection, metric: str) -> list[str]:
    """The job labels that carry series named `metric` now (sorted)."""
    quoted = metric.replace("\\", "\\\\").replace('"', '\\"')
    result = prom.get_client().custom_query(query=f'count by (job) ({{__name__="{quoted}"}})')
    return sorted(str(r["metric"].get("job", "")) for r in result)
