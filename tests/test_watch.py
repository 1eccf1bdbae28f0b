"""policy.watch: Argo Rollouts' analysis semantics, table-driven."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from phasegate.policy.plan import Watch, WatchMetric, load_plan
from phasegate.policy.watch import (
    KEEP_MEASUREMENTS,
    Outcome,
    WatchState,
    assess_value,
    progress,
    record,
    scoped_query,
    watch_verdict,
)

NAN, INF = float("nan"), float("inf")

GPU = WatchMetric.model_validate({"name": "gpu-util", "query": "avg(DCGM_FI_DEV_GPU_UTIL)",
                                  "unit": "%", "success": {"ge": 60, "le": 80},
                                  "failure": {"gt": 85}})
ERRORS = WatchMetric.model_validate({"name": "error-rate",
                                     "query": "sum(rate(http_requests_total[10m]))",
                                     "unit": "%", "success": {"lt": 1}})


def make_watch(**limits: Any) -> Watch:
    """A 10-minute watch at 1-minute intervals over GPU and error rate."""
    return Watch.model_validate({"duration": "10m", "interval": "1m", "metrics": [
        GPU.model_dump(exclude_none=True), ERRORS.model_dump(exclude_none=True)], **limits})


# ---------------------------------------------------------------- assess_value

@pytest.mark.parametrize(("metric", "value", "error", "outcome"), [
    (GPU, 70.0, None, "successful"),
    (GPU, 60.0, None, "successful"),        # ge: inclusive
    (GPU, 80.0, None, "successful"),        # le: inclusive
    (GPU, 85.0, None, "inconclusive"),      # gt 85: 85 is not a failure
    (GPU, 85.1, None, "failed"),
    (GPU, 30.0, None, "inconclusive"),      # below success, not in failure
    (GPU, None, None, "error"),             # no data
    (GPU, NAN, None, "error"),
    (GPU, INF, None, "error"),
    (GPU, -INF, None, "error"),
    (GPU, 70.0, "prometheus unreachable", "error"),   # an error wins over a value
    (ERRORS, 0.5, None, "successful"),
    (ERRORS, 1.0, None, "failed"),          # no failure bound: outside success fails
    (ERRORS, 0.0, None, "successful"),
])
def test_assess_value(metric: WatchMetric, value: float | None, error: str | None,
                      outcome: Outcome) -> None:
    assert assess_value(metric, value, error) == outcome


# ---------------------------------------------------------------- record

def feed(outcomes: str, metric: str = "gpu-util", state: WatchState | None = None,
         start: float = 0.0) -> WatchState:
    """Record outcomes given as letters: s(uccessful) f(ailed) e(rror) i(nconclusive)."""
    names: dict[str, Outcome] = {"s": "successful", "f": "failed", "e": "error",
                                 "i": "inconclusive"}
    state = state or WatchState()
    for step, letter in enumerate(outcomes):
        outcome = names[letter]
        value = None if outcome == "error" else float(step)
        error = "no data" if outcome == "error" else None
        state = record(state, metric, outcome, value, error, start + 60.0 * step)
    return state


@pytest.mark.parametrize(("outcomes", "counts", "consecutive"), [
    ("", (0, 0, 0, 0), 0),
    ("ee", (0, 0, 2, 0), 2),
    ("eese", (1, 0, 3, 0), 1),          # a success resets the run of errors
    ("eeie", (0, 0, 3, 1), 1),          # so does an inconclusive
    ("eefe", (0, 1, 3, 0), 1),          # and a failure
    ("sfie", (1, 1, 1, 1), 1),
])
def test_record_counts(outcomes: str, counts: tuple[int, int, int, int],
                       consecutive: int) -> None:
    tally = feed(outcomes).metric("gpu-util")
    assert tuple(tally.counts[o] for o in ("successful", "failed", "error", "inconclusive")) \
        == counts
    assert tally.consecutive_errors == consecutive


def test_record_is_pure_and_keeps_the_last_ten() -> None:
    before = feed("s" * 3)
    after = record(before, "gpu-util", "failed", 90.0, None, 999.0)
    assert before.metric("gpu-util").counts["failed"] == 0
    assert after.metric("gpu-util").counts["failed"] == 1
    many = feed("s" * 15)
    readings = many.metric("gpu-util").measurements
    assert len(readings) == KEEP_MEASUREMENTS
    assert readings[0].at_s == 300.0 and readings[-1].at_s == 840.0
    assert many.metric("gpu-util").counts["successful"] == 15


def test_record_stores_nan_as_an_error_and_refuses_unknown_outcomes() -> None:
    state = record(WatchState(), "gpu-util", "error", NAN, None, 0.0)
    reading = state.metric("gpu-util").measurements[0]
    assert (reading.value, reading.error) == (None, "value nan")
    with pytest.raises(ValueError, match="unknown outcome"):
        record(state, "gpu-util", "passed", 1.0, None, 0.0)  # type: ignore[arg-type]


def test_state_round_trips_through_json() -> None:
    state = feed("sfie", "gpu-util", feed("se", "error-rate"))
    text = json.dumps(state.to_dict(), allow_nan=False)
    assert WatchState.from_dict(json.loads(text)) == state


# ---------------------------------------------------------------- watch_verdict

# Rows: limits, GPU outcomes, error-rate outcomes, elapsed seconds, status, reason (start of).
VERDICTS: list[tuple[dict[str, int], str, str, float, str, str]] = [
    ({}, "", "", 0, "running", "0s of 10m00s"),
    ({}, "sss", "sss", 180, "running", "3m00s of 10m00s"),
    # failure_limit 0 (Argo's default): the first failure fails, before the duration ends
    ({}, "ssf", "sss", 180, "failed", "gpu-util: 1 failed measurements (limit 0); last: 2"),
    ({"failure_limit": 2}, "sfsf", "ssss", 240, "running", ""),
    ({"failure_limit": 2}, "sfsff", "sssss", 300, "failed",
     "gpu-util: 3 failed measurements (limit 2)"),
    # failures are cumulative, not consecutive
    ({"failure_limit": 1}, "fsssf", "sssss", 300, "failed",
     "gpu-util: 2 failed measurements (limit 1)"),
    # consecutive errors: more than the limit, and any non-error measurement resets the run
    ({"consecutive_error_limit": 2}, "see", "sss", 180, "running", ""),
    ({"consecutive_error_limit": 2}, "seee", "ssss", 240, "error",
     "gpu-util: 3 consecutive errors (limit 2); last: no data"),
    ({"consecutive_error_limit": 2, "inconclusive_limit": 5}, "eeieeseei", "sssssssss", 540,
     "running", ""),
    ({"consecutive_error_limit": 0}, "s", "e", 60, "error",
     "error-rate: 1 consecutive errors (limit 0)"),
    # inconclusive_limit 0: the first inconclusive ends the watch (Argo pauses; we roll back)
    ({}, "si", "ss", 120, "inconclusive", "gpu-util: 1 inconclusive measurements (limit 0)"),
    ({"inconclusive_limit": 2}, "iis", "sss", 180, "running", ""),
    ({"inconclusive_limit": 2}, "iisi", "ssss", 240, "inconclusive",
     "gpu-util: 3 inconclusive measurements (limit 2)"),
    # precedence when several limits break: failed, then inconclusive, then error (Argo)
    ({}, "i", "f", 60, "failed", "error-rate: 1 failed measurements (limit 0)"),
    ({"consecutive_error_limit": 0}, "i", "e", 60, "inconclusive", "gpu-util: 1 inconclusive"),
    # the end: every metric needs a successful measurement
    ({}, "ssssssssss", "ssssssssss", 600, "successful", "10m00s watched: no limit breached"),
    ({"failure_limit": 3}, "ssfsfsfsss", "ssssssssss", 600, "successful", ""),
    ({}, "ssssssssss", "ssssssssss", 599.9, "running", ""),
    ({"consecutive_error_limit": 4}, "ssssssssss", "eeeeseeee", 600, "successful", ""),
    ({"consecutive_error_limit": 4}, "ssssssssss", "eeeeseeeee", 600, "error",
     "error-rate: 5 consecutive errors (limit 4)"),
    ({"consecutive_error_limit": 4}, "ssssssssss", "eeeeieeee", 600, "inconclusive",
     "error-rate: 1 inconclusive measurements (limit 0)"),
    ({"consecutive_error_limit": 4, "inconclusive_limit": 5}, "ssssssss", "eeeeieeee", 600,
     "inconclusive", "error-rate: no successful measurement during the watch "
     "(8 error, 1 inconclusive)"),
    ({"consecutive_error_limit": 10}, "ssssssssss", "eeeeeeeeee", 600, "inconclusive",
     "error-rate: no successful measurement during the watch (10 error)"),
    # a metric never measured at all: no data is never a pass
    ({}, "ssssssssss", "", 600, "error",
     "error-rate: no measurement during the watch (no data is never a pass)"),
    ({}, "", "", 600, "error", "gpu-util: no measurement during the watch"),
]


@pytest.mark.parametrize(("limits", "gpu", "errors", "elapsed", "status", "reason"), VERDICTS)
def test_watch_verdict(limits: dict[str, int], gpu: str, errors: str, elapsed: float,
                       status: str, reason: str) -> None:
    watch = make_watch(**limits)
    state = feed(errors, "error-rate", feed(gpu, "gpu-util"))
    decision = watch_verdict(state, watch, elapsed)
    assert decision.status == status
    assert decision.reason.startswith(reason), decision.reason
    assert decision.done is (status != "running")
    json.dumps(decision.to_dict())


def test_failed_verdict_names_the_metric_and_last_value() -> None:
    state = record(WatchState(), "gpu-util", "failed", 92.5, None, 60.0)
    decision = watch_verdict(state, make_watch(), 60.0)
    assert (decision.status, decision.metric) == ("failed", "gpu-util")
    assert decision.reason == "gpu-util: 1 failed measurements (limit 0); last: 92.5"


def test_unwatched_metrics_in_the_state_are_ignored() -> None:
    state = feed("ffff", "not-in-the-plan", feed("s", "error-rate", feed("s")))
    assert watch_verdict(state, make_watch(), 600).status == "successful"


def test_the_plans_watch_breaches_at_its_limits() -> None:
    """The real plan: 3 failures tolerated, the 4th rolls back; 5 errors in a row roll back."""
    watch = load_plan().transition(1, 2).watch
    assert (watch.failure_limit, watch.consecutive_error_limit) == (3, 4)
    assert watch_verdict(feed("fff"), watch, 180).status == "running"
    assert watch_verdict(feed("ffff"), watch, 240).status == "failed"
    assert watch_verdict(feed("eeee", "api-p95"), watch, 240).status == "running"
    assert watch_verdict(feed("eeeee", "api-p95"), watch, 300).status == "error"


# ---------------------------------------------------------------- progress

def test_progress() -> None:
    watch = make_watch(failure_limit=2)
    state = feed("sfe", "gpu-util", feed("ss", "error-rate"))
    report = progress(state, watch, 150.0)
    assert report["percent"] == 25.0
    assert (report["elapsed_s"], report["duration_s"]) == (150.0, 600.0)
    assert report["status"] == "running"
    assert report["counts"] == {"successful": 3, "failed": 1, "error": 1, "inconclusive": 0}
    gpu = report["metrics"]["gpu-util"]
    assert (gpu["successful"], gpu["failed"], gpu["error"], gpu["consecutive_errors"]) == (
        1, 1, 1, 1)
    assert (gpu["last_outcome"], gpu["last_value"], gpu["last_error"]) == (
        "error", None, "no data")
    assert report["limits"] == {"failure_limit": 2, "consecutive_error_limit": 4,
                                "inconclusive_limit": 0}
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize(("elapsed", "percent"), [(0, 0.0), (-5, 0.0), (600, 100.0),
                                                  (900, 100.0), (200, 33.3)])
def test_progress_percent_is_clamped(elapsed: float, percent: float) -> None:
    report = progress(WatchState(), make_watch(), elapsed)
    assert report["percent"] == percent
    assert report["metrics"]["error-rate"]["last_outcome"] is None


def test_empty_state_lists_every_metric_and_judges_like_a_new_one() -> None:
    watch = make_watch()
    state = WatchState.empty([m.name for m in watch.metrics])
    assert set(state.metrics) == {"gpu-util", "error-rate"}
    assert watch_verdict(state, watch, 600) == watch_verdict(WatchState(), watch, 600)
    assert WatchState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


# ---------------------------------------------------------------- scoped_query


@pytest.mark.parametrize(("since_start", "window"), [
    (0, "1m"),          # before min_window has passed: min_window (the flow waits for it)
    (59, "1m"),
    (150, "2m30s"),     # the time since the watch began
    (600, "10m"),
    (7200, "10m"),      # never longer than the plan wrote
])
def test_scoped_query_cuts_windows_to_the_time_since_the_watch_began(
        since_start: float, window: str) -> None:
    watch = make_watch()
    query = scoped_query(ERRORS, watch, timedelta(seconds=since_start))
    assert query == f"sum(rate(http_requests_total[{window}]))"


def test_scoped_query_keeps_queries_without_windows_and_honours_min_window() -> None:
    watch = make_watch(min_window="30s")
    assert scoped_query(GPU, watch, timedelta(0)) == GPU.query
    assert scoped_query(ERRORS, watch, timedelta(0)) == "sum(rate(http_requests_total[30s]))"
    with pytest.raises(ValueError, match="min_window"):
        make_watch(min_window="0s")
