"""The metric watch after a change (pure), with Argo Rollouts' analysis semantics.

Every interval the flow measures each watch metric (a value, or an error: no data, NaN,
Prometheus unreachable), classifies it with `assess_value`, folds it into a `WatchState` with
`record`, and asks `watch_verdict` whether the watch is over. Rules, per metric, as Argo's
`assessMetricStatus` (checked in its order: failed, inconclusive, error):

- failed when the metric's failed count > failure_limit (0: the first failure fails);
- inconclusive when its inconclusive count > inconclusive_limit (0: the first inconclusive);
  Argo pauses there for a human; the flow treats it as a failed watch and rolls back;
- error when its consecutive errors > consecutive_error_limit; any non-error measurement
  resets the run of errors;
- successful only when the duration has elapsed, nothing was breached, and every metric had
  at least one successful measurement: no data is never a pass. At the end, a metric never
  measured is an error, one measured but never successful is inconclusive.
- otherwise running.

Every measurement runs the metric's query with its range windows cut to the time since the
watch began (`scoped_query`), so the switch and the load test are never judged as the new phase.

The state is a plain JSON-ready value (`to_dict` / `from_dict`) so the flow can persist it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal, get_args

from phasegate.policy.plan import Watch, WatchMetric
from phasegate.policy.promql import clamp_windows

__all__ = [
    "KEEP_MEASUREMENTS",
    "Measurement",
    "MetricState",
    "Outcome",
    "WatchDecision",
    "WatchState",
    "WatchStatus",
    "assess_value",
    "progress",
    "record",
    "scoped_query",
    "watch_verdict",
]

Outcome = Literal["successful", "failed", "error", "inconclusive"]
WatchStatus = Literal["running", "successful", "failed", "error", "inconclusive"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
KEEP_MEASUREMENTS = 10   # Argo keeps the last 10 measurements per metric


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def assess_value(metric: WatchMetric, value: float | None, error: str | None) -> Outcome:
    """Classify one measurement of `metric`.

    An error, no value, NaN or an infinity is "error" (never a pass). Inside `success` is
    "successful"; inside `failure` is "failed"; without a `failure` bound, outside `success`
    is "failed"; anything else "inconclusive".
    """
    if error is not None or value is None or not _finite(value):
        return "error"
    if metric.success.holds(value):
        return "successful"
    if metric.failure is None or metric.failure.holds(value):
        return "failed"
    return "inconclusive"


# ---------------------------------------------------------------- state

@dataclass(frozen=True)
class Measurement:
    """One measurement: `at_s` seconds since the watch began; value None when in error."""

    at_s: float
    outcome: Outcome
    value: float | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"at_s": self.at_s, "outcome": self.outcome, "value": self.value,
                "error": self.error}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Inverse of `to_dict`."""
        outcome = data["outcome"]
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        value = data.get("value")
        return cls(float(data["at_s"]), outcome, None if value is None else float(value),
                   data.get("error"))


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(OUTCOMES, 0)


@dataclass(frozen=True)
class MetricState:
    """One metric's tally: counts per outcome, the current run of errors, recent readings."""

    counts: dict[str, int] = field(default_factory=_zero_counts)
    consecutive_errors: int = 0
    measurements: tuple[Measurement, ...] = ()

    @property
    def total(self) -> int:
        """How many measurements were taken."""
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"counts": dict(self.counts), "consecutive_errors": self.consecutive_errors,
                "measurements": [m.to_dict() for m in self.measurements]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricState:
        """Inverse of `to_dict`."""
        counts = _zero_counts() | {k: int(v) for k, v in data.get("counts", {}).items()}
        return cls(counts, int(data.get("consecutive_errors", 0)),
                   tuple(Measurement.from_dict(m) for m in data.get("measurements", [])))


@dataclass(frozen=True)
class WatchState:
    """Every metric's tally, by metric name. Start with `WatchState()`."""

    metrics: dict[str, MetricState] = field(default_factory=dict)

    @classmethod
    def empty(cls, metric_names: Iterable[str] = ()) -> WatchState:
        """A state with zero counts for each of `metric_names` (same verdicts as WatchState();
        the progress artifact then lists every metric from the start)."""
        return cls({name: MetricState() for name in metric_names})

    def metric(self, name: str) -> MetricState:
        """The tally of `name` (empty if never recorded)."""
        return self.metrics.get(name) or MetricState()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"metrics": {name: m.to_dict() for name, m in self.metrics.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WatchState:
        """Inverse of `to_dict`."""
        return cls({name: MetricState.from_dict(m)
                    for name, m in data.get("metrics", {}).items()})


def record(state: WatchState, metric_name: str, outcome: Outcome, value: float | None,
           error: str | None, at_s: float) -> WatchState:
    """A new state with one more measurement of `metric_name` (pure; `state` is unchanged).

    A non-finite value is stored as None with the error "value nan" so the state stays
    valid JSON. Any outcome but "error" resets the consecutive-error count.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
    if value is not None and not math.isfinite(value):
        value, error = None, error or f"value {value}"
    old = state.metric(metric_name)
    reading = Measurement(at_s, outcome, value, error)
    new = MetricState(
        counts={**old.counts, outcome: old.counts.get(outcome, 0) + 1},
        consecutive_errors=old.consecutive_errors + 1 if outcome == "error" else 0,
        measurements=(*old.measurements, reading)[-KEEP_MEASUREMENTS:],
    )
    return replace(state, metrics={**state.metrics, metric_name: new})


# ---------------------------------------------------------------- verdict

@dataclass(frozen=True)
class WatchDecision:
    """The watch's status now, why, and which metric decided it (None: all / none)."""

    status: WatchStatus
    reason: str
    metric: str | None = None

    @property
    def done(self) -> bool:
        """True once the watch has a final verdict."""
        return self.status != "running"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"status": self.status, "reason": self.reason, "metric": self.metric,
                "done": self.done}


def _last(tally: MetricState, outcome: str) -> str:
    """"; last: 92 %" style evidence: the latest reading with that outcome."""
    match = [m for m in tally.measurements if m.outcome == outcome]
    if not match:
        return ""
    latest = match[-1]
    shown = latest.error if latest.value is None else f"{latest.value:g}"
    return f"; last: {shown}"


def _breach(name: str, tally: MetricState, watch: Watch) -> WatchDecision | None:
    """The first limit `tally` breaches, in Argo's order, or None."""
    checks: tuple[tuple[WatchStatus, int, int, str], ...] = (
        ("failed", tally.counts["failed"], watch.failure_limit, "failed measurements"),
        ("inconclusive", tally.counts["inconclusive"], watch.inconclusive_limit,
         "inconclusive measurements"),
        ("error", tally.consecutive_errors, watch.consecutive_error_limit,
         "consecutive errors"),
    )
    for status, count, limit, what in checks:
        if count > limit:
            evidence = _last(tally, status)
            return WatchDecision(status, f"{name}: {count} {what} (limit {limit}){evidence}",
                                 name)
    return None


def _never_passed(state: WatchState, watch: Watch) -> WatchDecision | None:
    """At the end: a metric without a successful measurement fails the watch."""
    for metric in watch.metrics:
        tally = state.metric(metric.name)
        if tally.total == 0:
            return WatchDecision("error", f"{metric.name}: no measurement during the watch "
                                 "(no data is never a pass)", metric.name)
        if tally.counts["successful"] == 0:
            counts = ", ".join(f"{tally.counts[o]} {o}" for o in OUTCOMES if tally.counts[o])
            return WatchDecision("inconclusive", f"{metric.name}: no successful measurement "
                                 f"during the watch ({counts})", metric.name)
    return None


def scoped_query(metric: WatchMetric, watch: Watch, since_start: timedelta) -> str:
    """The metric's query with its range windows cut to the time since the watch began (at
    least `watch.min_window`): a measurement judges the new phase only, not the switch's
    outage or the load test's tail that a 10m window would still hold."""
    return clamp_windows(metric.query, max(since_start, watch.min_window))


def watch_verdict(state: WatchState, watch: Watch, elapsed_s: float) -> WatchDecision:
    """The watch's verdict after `elapsed_s` seconds (see the module docstring for the rules).

    A breached limit ends the watch at once, before the duration is over.
    """
    for status in ("failed", "inconclusive", "error"):
        for metric in watch.metrics:
            breach = _breach(metric.name, state.metric(metric.name), watch)
            if breach is not None and breach.status == status:
                return breach
    duration = watch.duration.total_seconds()
    if elapsed_s < duration:
        return WatchDecision("running", f"{_clock(elapsed_s)} of {_clock(duration)}, "
                             "no limit breached")
    never = _never_passed(state, watch)
    if never is not None:
        return never
    return WatchDecision("successful", f"{_clock(duration)} watched: no limit breached and "
                         "every metric had successful measurements")


def _clock(seconds: float) -> str:
    """"1h05m" / "12m30s" / "45s"."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress(state: WatchState, watch: Watch, elapsed_s: float) -> dict[str, Any]:
    """JSON-ready progress for the flow's artifact: elapsed, percent, counts per metric."""
    duration = watch.duration.total_seconds()
    decision = watch_verdict(state, watch, elapsed_s)
    metrics = {}
    for metric in watch.metrics:
        tally = state.metric(metric.name)
        last = tally.measurements[-1] if tally.measurements else None
        metrics[metric.name] = {
            "unit": metric.unit, **tally.counts, "consecutive_errors": tally.consecutive_errors,
            "last_value": last.value if last else None,
            "last_outcome": last.outcome if last else None,
            "last_error": last.error if last else None,
        }
    totals = {o: sum(state.metric(m.name).counts[o] for m in watch.metrics) for o in OUTCOMES}
    return {
        "elapsed_s": elapsed_s, "duration_s": duration,
        "percent": round(min(100.0, 100.0 * max(elapsed_s, 0.0) / duration), 1),
        "status": decision.status, "reason": decision.reason, "counts": totals,
        "limits": {"failure_limit": watch.failure_limit,
                   "consecutive_error_limit": watch.consecutive_error_limit,
                   "inconclusive_limit": watch.inconclusive_limit},
        "metrics": metrics,
    }
