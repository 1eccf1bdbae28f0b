"""Metric sinks and the store: percentiles against numpy on 100k-value samples, merge, the k6
sink types, windows and k6 sub-metric selection. Pure and fast."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from phasegate.policy.loadtest.metrics import Counter, Gauge, MetricStore, Rate, Trend

RNG = np.random.default_rng(20240601)
N = 100_000
PS = [0, 0.1, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100]


def _bimodal(n: int) -> np.ndarray:
    # fast cache hits around 20 ms and slow GPU calls around 2 s: 80 / 20
    fast = RNG.lognormal(np.log(20), 0.3, int(n * 0.8))
    slow = RNG.lognormal(np.log(2000), 0.4, n - len(fast))
    return np.concatenate([fast, slow])


SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "lognormal": lambda: RNG.lognormal(np.log(50), 1.0, N),
    "uniform": lambda: RNG.uniform(1, 1000, N),
    "bimodal": lambda: _bimodal(N),
    # every decade of the required range, 1 us .. 1 h in ms
    "log-uniform 1us..1h": lambda: np.exp(RNG.uniform(np.log(1e-3), np.log(3.6e6), N)),
}


def _trend(values: np.ndarray) -> Trend:
    trend = Trend()
    for value in values.tolist():
        trend.add(value)
    return trend


@pytest.fixture(scope="module", params=list(SAMPLES))
def sample(request: pytest.FixtureRequest) -> tuple[np.ndarray, Trend]:
    values = SAMPLES[request.param]()
    return values, _trend(values)


def test_percentiles_match_k6_definition_within_1_percent(
        sample: tuple[np.ndarray, Trend]) -> None:
    # k6 TrendSink.P interpolates between the closest ranks: numpy's "linear" (the default).
    values, trend = sample
    exact = np.percentile(values, PS, method="linear")
    ours = np.array(trend.percentiles(PS), dtype=float)
    assert np.all(np.abs(ours - exact) <= 0.01 * np.abs(exact)), list(zip(PS, ours, exact,
                                                                          strict=True))
    assert np.max(np.abs(ours - exact) / exact) < 0.004  # the bucket midpoints' bound


@pytest.mark.parametrize("method", ["inverted_cdf", "lower"])
def test_percentiles_within_1_percent_of_the_order_statistics(
        sample: tuple[np.ndarray, Trend], method: str) -> None:
    # With 100k continuous values the neighbouring order statistics are ~0.01 % apart, so the
    # k6 definition is also within 1 % of the non-interpolating ones; p(80) is left out as it
    # falls in the bimodal sample's gap, where interpolation and "lower" legitimately differ.
    values, trend = sample
    ps = [p for p in PS if p != 80]
    exact = np.percentile(values, ps, method=method)  # type: ignore[call-overload]
    ours = np.array(trend.percentiles(ps), dtype=float)
    assert np.all(np.abs(ours - exact) <= 0.01 * exact)


def test_interpolation_between_ranks_as_k6() -> None:
    # 95 x 100 ms and 5 x 400 ms: rank 0.95 * 99 = 94.05 -> 100 + 0.05 * 300 = 115
    trend = _trend(np.array([100.0] * 95 + [400.0] * 5))
    assert trend.percentile(95) == pytest.approx(115, rel=0.005)
    assert np.percentile([100.0] * 95 + [400.0] * 5, 95) == pytest.approx(115)
    assert trend.percentile(100) == 400 and trend.percentile(0) == 100


def test_exact_statistics() -> None:
    values = RNG.lognormal(3, 1, 10_000)
    trend = _trend(values)
    assert trend.count == 10_000
    assert (trend.min, trend.max) == (values.min(), values.max())
    assert trend.mean == pytest.approx(values.mean(), rel=1e-12)
    same = _trend(np.full(7, 300.0))
    assert same.percentiles([50, 95, 99]) == [300.0, 300.0, 300.0]  # clamped to min/max


def test_empty_and_bad_percentiles() -> None:
    empty = Trend()
    assert (empty.mean, empty.percentile(95), empty.count) == (None, None, 0)
    with pytest.raises(ValueError):
        _trend(np.array([1.0])).percentile(101)


def test_zero_and_negative_values_keep_their_order() -> None:
    values = np.array([-5.0, -0.5, 0.0, 0.0, 0.001, 3.0, 70.0])
    trend = _trend(values)
    ours = trend.percentiles([0, 20, 40, 50, 70, 100])
    exact = np.percentile(values, [0, 20, 40, 50, 70, 100])
    assert np.allclose(np.array(ours, dtype=float), exact, rtol=0.01, atol=1e-12)


def test_merge_equals_adding_everything() -> None:
    a_values, b_values = RNG.lognormal(3, 1, 5000), RNG.uniform(0, 100, 3000)
    merged = _trend(a_values)
    merged.merge(_trend(b_values))
    whole = _trend(np.concatenate([a_values, b_values]))
    assert merged.buckets == whole.buckets
    assert (merged.count, merged.min, merged.max) == (whole.count, whole.min, whole.max)
    assert merged.percentiles(PS) == whole.percentiles(PS)
    assert merged.mean == pytest.approx(whole.mean)
    copy = merged.copy()
    copy.add(1e9)
    assert merged.max < 1e9


def test_rate_counter_gauge() -> None:
    rate = Rate()
    for value in (True, False, 1, 0, 0.0, 2):
        rate.add(value)
    assert (rate.count, rate.passes, rate.fails, rate.rate) == (6, 3, 3, 0.5)
    assert Rate().rate is None
    counter = Counter()
    for value in (1, 1, 512):
        counter.add(value)
    assert (counter.sum, counter.count, counter.per_s(2)) == (514, 3, 257)
    gauge = Gauge()
    for value in (3, 9, 1, 4):
        gauge.add(value)
    assert (gauge.value, gauge.min, gauge.max) == (4, 1, 9)
    later = Gauge()
    later.add(7)
    gauge.merge(later)
    assert (gauge.value, gauge.max, gauge.count) == (7, 9, 5)
    gauge.merge(Gauge())  # an empty later gauge leaves the value alone
    assert gauge.value == 7
    both = rate.copy()
    both.merge(rate)
    assert (both.count, both.passes) == (12, 6)


# ---------------------------------------------------------------- the store

def _store() -> MetricStore:
    store = MetricStore(window_s=10)
    for i in range(300):  # 30 s at 10 samples/s, two endpoints, one scenario
        t = i / 10
        name = "feedback" if i % 2 else "questions"
        tags = (("scenario", "phase2"), ("name", name), ("expected_response", "true"))
        store.add("http_req_duration", 900.0 if name == "feedback" else 30.0, t, tags)
        store.add("http_reqs", 1, t, tags)
    return store


def test_store_keeps_whole_run_and_windows() -> None:
    store = _store()
    whole = store.select("http_req_duration")
    assert isinstance(whole, Trend) and whole.count == 300
    assert list(store.window_indexes()) == [0, 1, 2]
    first = store.select("http_req_duration", window=1)
    assert isinstance(first, Trend) and first.count == 100
    assert store.select("http_reqs", window=7).count == 0
    assert store.duration_s == pytest.approx(29.9)
    assert store.metrics() == ["http_req_duration", "http_reqs"]


@pytest.mark.parametrize(("tag_filter", "count", "p50"), [
    ({}, 300, None),
    ({"name": "feedback"}, 150, 900.0),
    ({"name": "questions"}, 150, 30.0),
    ({"scenario": "phase2", "expected_response": "true"}, 300, None),
    ({"scenario": "phase3"}, 0, None),
    ({"name": "feedback", "scenario": "phase2"}, 150, 900.0),
])
def test_select_sub_metrics_by_tags(tag_filter: dict[str, str], count: int,
                                    p50: float | None) -> None:
    sink = _store().select("http_req_duration", tag_filter)
    assert isinstance(sink, Trend) and sink.count == count
    if p50 is not None:
        assert sink.percentile(50) == p50


def test_select_returns_a_copy() -> None:
    store = _store()
    sink = store.select("http_req_duration", {"name": "feedback"})
    sink.add(1e6)
    again = store.select("http_req_duration", {"name": "feedback"})
    assert isinstance(again, Trend) and again.max == 900


def test_windows_with_gaps_are_listed() -> None:
    store = MetricStore(window_s=5)
    store.add("vus", 3, 1.0)
    store.add("vus", 5, 21.0)  # nothing in 5..20 s: a stall must show as windows without data
    assert list(store.window_indexes()) == [0, 1, 2, 3, 4]
    assert [store.window_has_data(w) for w in range(5)] == [True, False, False, False, True]
    assert MetricStore().window_indexes() == range(0) and MetricStore().empty


def test_declare_custom_metrics() -> None:
    store = MetricStore()
    with pytest.raises(KeyError):
        store.add("cache_hits", 1, 0.0)
    with pytest.raises(KeyError):
        store.select("cache_hits")
    store.declare("cache_hits", "counter")
    store.declare("cache_hits", "counter")  # idempotent
    store.add("cache_hits", 1, 0.0)
    assert store.kind("cache_hits") == "counter" and store.kinds["errors"] == "rate"
    with pytest.raises(ValueError):
        store.declare("cache_hits", "trend")
    with pytest.raises(ValueError):
        store.declare("x", "histogram")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MetricStore(window_s=0)


def test_memory_is_per_series_not_per_sample() -> None:
    store = MetricStore()
    for i in range(20_000):
        store.add("http_req_duration", 50 + (i % 7), i / 1000)  # 20 s, 7 distinct values
    sink = store.select("http_req_duration")
    assert isinstance(sink, Trend) and len(sink.buckets) == 7
    assert json.dumps(list(store.series("http_req_duration"))[0][0]) == "{}"
