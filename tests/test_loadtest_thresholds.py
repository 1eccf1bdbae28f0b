"""k6 thresholds: syntax, which aggregation fits which metric, semantics at the boundary,
sub-metrics, no data, per-window verdicts (a 30 s spike in 9 minutes) and abortOnFail."""

from __future__ import annotations

import random
from typing import Any

import pytest

from phasegate.errors import PlanError
from phasegate.policy.loadtest.metrics import MetricStore
from phasegate.policy.loadtest.thresholds import (
    Threshold,
    abort_due,
    evaluate,
    evaluate_windows,
    parse_key,
    parse_thresholds,
    threshold_problems,
)


def _one(key: str, expression: str | dict[str, Any]) -> Threshold:
    return parse_thresholds({key: [expression]})[0]


# ---------------------------------------------------------------- syntax

@pytest.mark.parametrize(("key", "expression", "aggregation", "percentile", "op", "limit"), [
    ("http_req_duration", "p(95)<300", "p", 95, "<", 300),
    ("http_req_duration", "p(99.9) <= 1000", "p", 99.9, "<=", 1000),
    ("http_req_duration", " avg < 200 ", "avg", None, "<", 200),
    ("http_req_duration", "med>=1.5", "med", None, ">=", 1.5),
    ("http_req_duration", "min>0", "min", None, ">", 0),
    ("http_req_duration", "max!=1e4", "max", None, "!=", 10_000),
    ("errors", "rate<0.01", "rate", None, "<", 0.01),
    ("dropped_iterations", "count<1", "count", None, "<", 1),
    ("http_reqs", "rate>=100", "rate", None, ">=", 100),
    ("vus", "value===5", "value", None, "===", 5),
    ("my_custom", "p(50)==-2", "p", 50, "==", -2),  # unknown metrics: checked when evaluated
])
def test_parse(key: str, expression: str, aggregation: str, percentile: float | None,
               op: str, limit: float) -> None:
    threshold = _one(key, expression)
    assert (threshold.aggregation, threshold.percentile, threshold.operator, threshold.limit) \
        == (aggregation, percentile, op, limit)
    assert threshold.expression == expression and threshold.metric == key


@pytest.mark.parametrize(("key", "expression", "reason"), [
    ("http_req_duration", "p95<300", "'p95<300' is not a k6 threshold"),
    ("http_req_duration", "p(95)<", "is not a k6 threshold"),
    ("http_req_duration", "p(95)=>300", "is not a k6 threshold"),
    ("http_req_duration", "p(101)<5", "'p(101)<5': a percentile is at most 100"),
    ("http_req_duration", "rate<0.01", "is a trend and supports only avg, max, med, min, p"),
    ("http_req_failed", "avg<0.01", "is a rate and supports only rate"),
    ("dropped_iterations", "p(95)<1", "is a counter and supports only count, rate"),
    ("vus", "max<10", "is a gauge and supports only value"),
    ("http req duration", "avg<1", "is not a k6 metric name"),
    ("http_req_duration{name}", "avg<1", "bad tag filter"),
    ("http_req_duration{name:}", "avg<1", "bad tag filter"),
])
def test_parse_errors_name_the_key_and_expression(key: str, expression: str,
                                                  reason: str) -> None:
    with pytest.raises(PlanError) as info:
        parse_thresholds({key: [expression]})
    assert any(path == f'thresholds["{key}"]' and reason in why
               for path, why in info.value.problems), info.value.problems


def test_every_bad_entry_is_reported() -> None:
    with pytest.raises(PlanError) as info:
        parse_thresholds({"http_req_duration": ["p95<1", "avg<1", "x"], "errors": [],
                          "checks": [{"threshold": "rate>0.9", "abortOnFail": "sometimes"}]})
    assert len(info.value.problems) == 4


@pytest.mark.parametrize(("key", "tags"), [
    ("http_req_duration{scenario:phase2}", (("scenario", "phase2"),)),
    ("http_req_duration{ name : feedback , expected_response:true}",
     (("name", "feedback"), ("expected_response", "true"))),
    ("http_req_duration{url:http://x/v1/questions?subject=math}",
     (("url", "http://x/v1/questions?subject=math"),)),
])
def test_sub_metric_keys(key: str, tags: tuple[tuple[str, str], ...]) -> None:
    assert parse_key(key) == ("http_req_duration", tags)


def test_object_form() -> None:
    threshold = _one("errors", {"threshold": "rate<0.01", "abortOnFail": True,
                                "delayAbortEval": "1m30s"})
    assert threshold.abort_on_fail and threshold.delay_abort_eval_s == 90
    assert not _one("errors", "rate<0.01").abort_on_fail
    assert threshold_problems("errors", [{"threshold": "rate<0.01", "abortOnFial": True}]) \
        == ["{'threshold': 'rate<0.01', 'abortOnFial': True}: abortOnFial: unknown key"]


def test_custom_kinds_are_checked_when_given() -> None:
    assert threshold_problems("cache_hits", ["p(95)<1"]) == []
    assert threshold_problems("cache_hits", ["p(95)<1"], {"cache_hits": "counter"})


# ---------------------------------------------------------------- semantics

def _trend_store(values: list[float], metric: str = "http_req_duration") -> MetricStore:
    store = MetricStore()
    for i, value in enumerate(values):
        store.add(metric, value, i * 0.01)
    return store


@pytest.mark.parametrize(("values", "expression", "ok"), [
    ([300.0] * 100, "p(95)<300", False),      # exactly at the limit: < fails, as in k6
    ([300.0] * 100, "p(95)<=300", True),
    ([299.99] * 100, "p(95)<300", True),
    ([100.0] * 94 + [1000.0] * 6, "p(95)<300", False),  # rank 94.05 lies in the slow tail
    ([100.0] * 96 + [1000.0] * 4, "p(95)<300", True),
    ([10.0, 20.0, 30.0], "avg==20", True),
    ([10.0, 20.0, 30.0], "med<20", False),
    ([10.0, 20.0, 30.0], "min>=10", True),
    ([10.0, 20.0, 30.0], "max>30", False),
    ([10.0, 20.0, 30.0], "p(100)===30", True),
])
def test_trend_thresholds(values: list[float], expression: str, ok: bool) -> None:
    [result] = evaluate([_one("http_req_duration", expression)], _trend_store(values))
    assert result.ok is ok and not result.no_data


@pytest.mark.parametrize(("fails", "total", "ok"), [(0, 100, True), (1, 100, False),
                                                     (1, 101, True), (100, 100, False)])
def test_error_rate(fails: int, total: int, ok: bool) -> None:
    store = MetricStore()
    for i in range(total):
        store.add("errors", i < fails, i * 0.1)
    [result] = evaluate([_one("errors", "rate<0.01")], store)
    assert result.ok is ok and result.observed == pytest.approx(fails / total)


def test_dropped_iterations_count() -> None:
    threshold = _one("dropped_iterations", "count<1")
    store = _trend_store([50.0] * 10)
    # nothing dropped: the engine adds no sample, and a counter without samples is 0
    [clean] = evaluate([threshold], store)
    assert (clean.ok, clean.observed, clean.no_data) == (True, 0, False)
    store.add("dropped_iterations", 1, 0.05)
    [dropped] = evaluate([threshold], store)
    assert (dropped.ok, dropped.observed) == (False, 1)
    [empty] = evaluate([threshold], MetricStore())  # no run at all: no data, not 0
    assert empty.no_data


def test_counter_rate_and_gauge_value() -> None:
    store = MetricStore()
    for i in range(100):
        store.add("http_reqs", 1, i * 0.1)  # 100 requests by t = 9.9 s
        store.add("vus", i % 10, i * 0.1)
    [rate] = evaluate([_one("http_reqs", "rate>=10")], store, elapsed_s=10)
    assert rate.ok and rate.observed == 10
    [vus] = evaluate([_one("vus", "value<10")], store)
    assert vus.ok and vus.observed == 9


def test_tag_filtered_sub_metrics() -> None:
    store = MetricStore()
    for i in range(200):
        name = "feedback" if i % 2 else "questions"
        value = 4000.0 if name == "feedback" else 40.0
        store.add("http_req_duration", value, i * 0.05, (("scenario", "p2"), ("name", name)))
    results = evaluate(parse_thresholds({
        "http_req_duration{name:questions}": ["p(95)<300"],
        "http_req_duration{name:feedback}": ["p(95)<300", "p(95)<5000"],
        "http_req_duration{scenario:p2}": ["p(95)<300"],
        "http_req_duration{scenario:p3}": ["p(95)<300"],
    }), store)
    assert [(r.ok, r.no_data) for r in results] == [
        (True, False), (False, False), (True, False), (False, False), (True, True)]


def test_no_data() -> None:
    store = _trend_store([10.0] * 50)
    thresholds = parse_thresholds({"llm_ttft": ["p(95)<1000"], "errors": ["rate<0.01"],
                                   "never_declared": ["avg<1"]})
    for result in evaluate(thresholds, store):
        assert (result.ok, result.no_data, result.observed) == (True, True, None)  # as k6
    for window in evaluate_windows(thresholds, store):
        assert (window.ok, window.no_data) == (None, True)  # never called a pass per window


def test_kind_mismatch_on_a_declared_metric_is_an_error() -> None:
    store = MetricStore()
    store.declare("cache_hits", "counter")
    store.add("cache_hits", 1, 0.0)
    [result] = evaluate([_one("cache_hits", "p(95)<1")], store)
    assert not result.ok and result.error and "is a counter" in result.error


def test_a_30s_spike_in_9_minutes_fails_its_windows_not_the_run() -> None:
    rng = random.Random(7)
    store = MetricStore(window_s=10)
    for i in range(540 * 20):  # 20 requests/s for 9 minutes
        t = i / 20
        spike = 240 <= t < 270
        store.add("http_req_duration", rng.uniform(50, 1500) if spike else rng.uniform(40, 80),
                  t, (("scenario", "phase2"),))
    thresholds = parse_thresholds({"http_req_duration{scenario:phase2}": ["p(95)<300"]})
    [whole] = evaluate(thresholds, store)
    assert whole.ok and whole.observed is not None and whole.observed < 300
    windows = evaluate_windows(thresholds, store)
    assert len(windows) == 54
    failed = [(w.start_s, w.end_s) for w in windows if w.ok is False]
    assert failed == [(240, 250), (250, 260), (260, 270)]
    assert all(w.observed is not None and w.observed > 1000 for w in windows if not w.ok)


def test_windows_without_samples_are_no_data_and_counters_zero() -> None:
    store = MetricStore(window_s=10)
    store.add("http_req_duration", 50, 5)
    store.add("http_req_duration", 50, 25)  # window 1 (10..20 s) saw nothing at all
    thresholds = parse_thresholds({"http_req_duration": ["p(95)<300"],
                                   "dropped_iterations": ["count<1"]})
    verdicts = [(w.threshold.metric, w.window, w.ok, w.no_data)
                for w in evaluate_windows(thresholds, store)]
    assert verdicts == [
        ("http_req_duration", 0, True, False), ("http_req_duration", 1, None, True),
        ("http_req_duration", 2, True, False),
        ("dropped_iterations", 0, True, False), ("dropped_iterations", 1, None, True),
        ("dropped_iterations", 2, True, False),
    ]


# ---------------------------------------------------------------- abortOnFail

def _errors_store(until_s: float, error_every: int) -> MetricStore:
    store = MetricStore()
    for i in range(int(until_s * 10)):
        store.add("errors", i % error_every == 0, i / 10)
    return store


@pytest.mark.parametrize(("spec", "elapsed", "aborts"), [
    ({"threshold": "rate<0.01", "abortOnFail": True}, 1, True),
    ({"threshold": "rate<0.01", "abortOnFail": True, "delayAbortEval": "30s"}, 29.9, False),
    ({"threshold": "rate<0.01", "abortOnFail": True, "delayAbortEval": "30s"}, 30, True),
    ({"threshold": "rate<0.01", "abortOnFail": False}, 60, False),
    ("rate<0.01", 60, False),
    ({"threshold": "rate<0.5", "abortOnFail": True}, 60, False),  # failing 10 %: holds
])
def test_abort_on_fail_after_delay(spec: Any, elapsed: float, aborts: bool) -> None:
    thresholds = [_one("errors", spec)]
    due = abort_due(thresholds, _errors_store(elapsed, 10), elapsed)
    assert (due is thresholds[0]) is aborts


def test_no_data_never_aborts() -> None:
    thresholds = [_one("llm_ttft", {"threshold": "p(95)<1", "abortOnFail": True})]
    assert abort_due(thresholds, _errors_store(10, 2), 10) is None
