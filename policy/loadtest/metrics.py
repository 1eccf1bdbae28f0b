"""k6's metric types as sinks, and the store the engine feeds every sample into.

Four sinks, as k6 has them: `Trend` (a latency-grade histogram), `Rate` (share of non-zero
samples), `Counter` (a sum) and `Gauge` (the last value, with min and max). `MetricStore`
aggregates on insert: a sample updates two sinks (the whole run's and its time window's) of its
(metric, tags) series and is then forgotten, so memory depends on the number of series and
windows, never on the number of requests.

Percentiles: `Trend.percentile(p)` follows k6's own definition (k6 `TrendSink.P`): the rank
p/100 * (n - 1) interpolated linearly between the two closest ranks; numpy calls it
method="linear" (Hyndman and Fan type 7). The order statistics themselves come from a
log-linear histogram (HdrHistogram's layout: each power of two split into `SUB_BUCKETS` linear
buckets) whose bucket midpoints are within 1 / (2 * SUB_BUCKETS) = 0.39 % of every value they
hold, for any positive value (so 1 us .. 1 h in ms is covered with room to spare); min and max
are exact and clamp the midpoints, so a run of identical values reports that value exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from math import frexp, inf, ldexp
from typing import Literal

__all__ = [
    "KNOWN_METRICS",
    "SUB_BUCKETS",
    "TIME_METRICS",
    "Counter",
    "Gauge",
    "Kind",
    "MetricStore",
    "Rate",
    "Sink",
    "Tags",
    "Trend",
    "new_sink",
]

Kind = Literal["trend", "rate", "counter", "gauge"]
Tags = tuple[tuple[str, str], ...]

SUB_BUCKETS = 128
_TWICE = 2 * SUB_BUCKETS
# Keys of the non-positive buckets sit far below every positive key (frexp exponents of finite
# floats lie in -1073..1024, so positive keys lie within about +-140k).
_ZERO_KEY = -10_000_000
_NEGATIVE_BASE = -20_000_000

KNOWN_METRICS: dict[str, Kind] = {
    "http_reqs": "counter",
    "http_req_duration": "trend",
    "http_req_waiting": "trend",
    "http_req_latency": "trend",  # ours: from the intended send time (loadtest/vu.py)
    "http_req_failed": "rate",
    "iterations": "counter",
    "iteration_duration": "trend",
    "dropped_iterations": "counter",
    "vus": "gauge",
    "vus_max": "gauge",
    "checks": "rate",
    "data_sent": "counter",
    "data_received": "counter",
    "errors": "rate",
    "llm_ttft": "trend",
    "llm_itl": "trend",
    "llm_e2e": "trend",
    "llm_tokens": "counter",
    "llm_tokens_per_s": "trend",
    "llm_errors": "rate",
}
# Trends whose values are milliseconds (the summary prints them as durations).
TIME_METRICS: frozenset[str] = frozenset({
    "http_req_duration", "http_req_waiting", "http_req_latency", "iteration_duration",
    "llm_ttft", "llm_itl",
    "llm_e2e",
})


def _bucket_key(value: float) -> int:
    """The histogram bucket of `value`; keys sort in the order of the values they hold."""
    if value > 0:
        mantissa, exponent = frexp(value)  # value = mantissa * 2**exponent, mantissa in [.5, 1)
        return exponent * SUB_BUCKETS + int(mantissa * _TWICE)
    if value == 0:
        return _ZERO_KEY
    return _NEGATIVE_BASE - _bucket_key(-value)


def _bucket_mid(key: int) -> float:
    """The midpoint of bucket `key`: within 0.5 / SUB_BUCKETS of any value in the bucket."""
    if key == _ZERO_KEY:
        return 0.0
    if key < _ZERO_KEY:
        return -_bucket_mid(_NEGATIVE_BASE - key)
    exponent, step = divmod(key, SUB_BUCKETS)
    return ldexp((SUB_BUCKETS + step + 0.5) / _TWICE, exponent - 1)


class Trend:
    """k6 Trend: count, min, max, mean and percentiles of the values added."""

    kind: Kind = "trend"
    __slots__ = ("buckets", "count", "max", "min", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = inf
        self.max = -inf

    def add(self, value: float) -> None:
        """Record one value (hot path: a few arithmetic operations and one dict update)."""
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value > 0:  # _bucket_key inlined: this runs for every latency sample
            mantissa, exponent = frexp(value)
            key = exponent * SUB_BUCKETS + int(mantissa * _TWICE)
        else:
            key = _bucket_key(value)
        buckets = self.buckets
        buckets[key] = buckets.get(key, 0) + 1

    def merge(self, other: Trend) -> None:
        """Add every value of `other` to this trend (exact: buckets are shared)."""
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        for key, count in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + count

    @property
    def mean(self) -> float | None:
        """The arithmetic mean (exact), None without data."""
        return self.total / self.count if self.count else None

    def percentile(self, p: float) -> float | None:
        """k6's p(`p`), p in 0..100; None without data. See the module docstring."""
        return self.percentiles([p])[0]

    def percentiles(self, ps: Iterable[float]) -> list[float | None]:
        """Several percentiles in one pass over the histogram."""
        wanted = list(ps)
        if any(not 0 <= p <= 100 for p in wanted):
            raise ValueError(f"percentiles lie in 0..100, got {wanted}")
        if not self.count:
            return [None] * len(wanted)
        # k6: position p/100 * (n - 1), linear between the order statistics around it.
        positions = [p / 100 * (self.count - 1) for p in wanted]
        ranks = sorted({int(x) for x in positions} | {min(int(x) + 1, self.count - 1)
                                                       for x in positions})
        values = self._order_statistics(ranks)
        # The extreme ranks are known exactly.
        values[0], values[self.count - 1] = self.min, self.max
        out: list[float | None] = []
        for x in positions:
            low, high = values[int(x)], values[min(int(x) + 1, self.count - 1)]
            out.append(low + (high - low) * (x - int(x)))
        return out

    def _order_statistics(self, ranks: list[int]) -> dict[int, float]:
        """{rank: value} for sorted 0-based ranks, read off the cumulative bucket counts."""
        found: dict[int, float] = {}
        pending = iter(ranks)
        rank = next(pending, None)
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            while rank is not None and rank < seen:
                found[rank] = min(max(_bucket_mid(key), self.min), self.max)
                rank = next(pending, None)
            if rank is None:
                break
        return found

    def copy(self) -> Trend:
        """An independent copy."""
        twin = Trend()
        twin.merge(self)
        return twin


class Rate:
    """k6 Rate: the share of samples that are non-zero (k6 calls them passes)."""

    kind: Kind = "rate"
    __slots__ = ("count", "passes")

    def __init__(self) -> None:
        self.count = 0
        self.passes = 0

    def add(self, value: float) -> None:
        """Record one sample; any non-zero value (True, 1) counts as a pass, as in k6."""
        self.count += 1
        if value:
            self.passes += 1

    def merge(self, other: Rate) -> None:
        """Add the samples of `other`."""
        self.count += other.count
        self.passes += other.passes

    @property
    def fails(self) -> int:
        """Samples that were zero."""
        return self.count - self.passes

    @property
    def rate(self) -> float | None:
        """passes / count; None without data."""
        return self.passes / self.count if self.count else None

    def copy(self) -> Rate:
        """An independent copy."""
        twin = Rate()
        twin.merge(self)
        return twin


class Counter:
    """k6 Counter: the sum of the values added (its rate needs a duration, see `per_s`)."""

    kind: Kind = "counter"
    __slots__ = ("count", "sum")

    def __init__(self) -> None:
        self.count = 0  # samples
        self.sum = 0.0

    def add(self, value: float) -> None:
        """Add `value` (usually 1, or bytes for data_sent)."""
        self.count += 1
        self.sum += value

    def merge(self, other: Counter) -> None:
        """Add the samples of `other`."""
        self.count += other.count
        self.sum += other.sum

    def per_s(self, duration_s: float) -> float:
        """The sum per second over `duration_s` (k6's counter `rate`)."""
        return self.sum / duration_s if duration_s > 0 else 0.0

    def copy(self) -> Counter:
        """An independent copy."""
        twin = Counter()
        twin.merge(self)
        return twin


class Gauge:
    """k6 Gauge: the last value added, with the smallest and largest seen."""

    kind: Kind = "gauge"
    __slots__ = ("count", "max", "min", "value")

    def __init__(self) -> None:
        self.count = 0
        self.value = 0.0
        self.min = inf
        self.max = -inf

    def add(self, value: float) -> None:
        """Set the gauge to `value`."""
        self.count += 1
        self.value = value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, other: Gauge) -> None:
        """Fold in `other`, taken to be the later of the two (its value wins when it has one)."""
        if other.count:
            self.value = other.value
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> Gauge:
        """An independent copy."""
        twin = Gauge()
        twin.merge(self)
        return twin


Sink = Trend | Rate | Counter | Gauge
_SINKS: dict[str, type[Trend] | type[Rate] | type[Counter] | type[Gauge]] = {
    "trend": Trend, "rate": Rate, "counter": Counter, "gauge": Gauge,
}


def new_sink(kind: Kind) -> Sink:
    """An empty sink of `kind`."""
    return _SINKS[kind]()


def _merge(into: Sink, other: Sink) -> None:
    into.merge(other)  # type: ignore[arg-type]  # same kind: both come from one metric


class _Series:
    """One (metric, tags): the whole-run sink and one sink per time window."""

    __slots__ = ("factory", "tags", "total", "windows")

    def __init__(self, kind: Kind, tags: Tags) -> None:
        self.factory = _SINKS[kind]
        self.tags = dict(tags)
        self.total: Sink = self.factory()
        self.windows: dict[int, Sink] = {}


class MetricStore:
    """Every sample of a run, aggregated on insert per (metric, tags) and per time window.

    `window_s`: the length of the per-window view (window i covers [i * window_s,
    (i + 1) * window_s) seconds since the run started).
    """

    def __init__(self, window_s: float = 10.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be above 0, got {window_s}")
        self.window_s = window_s
        self._kinds: dict[str, Kind] = dict(KNOWN_METRICS)
        self._series: dict[tuple[str, Tags], _Series] = {}
        self._by_metric: dict[str, list[_Series]] = {}
        self._last_t = -inf

    def declare(self, name: str, kind: Kind) -> None:
        """Register a custom metric (k6's `new Rate('errors')`). Re-declaring the same kind is
        fine; another kind raises ValueError."""
        if kind not in _SINKS:
            raise ValueError(f"unknown metric kind {kind!r}: use {', '.join(_SINKS)}")
        known = self._kinds.get(name)
        if known is not None and known != kind:
            raise ValueError(f"metric {name!r} is a {known}, cannot re-declare it as a {kind}")
        self._kinds[name] = kind

    def kind(self, name: str) -> Kind | None:
        """The kind of metric `name`, None if it is neither built in nor declared."""
        return self._kinds.get(name)

    @property
    def kinds(self) -> dict[str, Kind]:
        """Every known metric and its kind (a copy)."""
        return dict(self._kinds)

    def add(self, metric: str, value: float, t: float, tags: Tags = ()) -> None:
        """Record one sample of `metric` at `t` seconds since the run started.

        Hot path (~20k calls/s): two dict lookups and two sink updates. `tags` are used as
        given, so the engine should build them in a fixed order (a different order only makes
        a second series; `select` still merges both). Raises KeyError for an undeclared metric.
        """
        series = self._series.get((metric, tags))
        if series is None:
            series = self._new_series(metric, tags)
        series.total.add(value)
        window = int(t // self.window_s)
        sink = series.windows.get(window)
        if sink is None:
            sink = series.windows[window] = series.factory()
        sink.add(value)
        if t > self._last_t:
            self._last_t = t

    def _new_series(self, metric: str, tags: Tags) -> _Series:
        kind = self._kinds.get(metric)
        if kind is None:
            raise KeyError(f"unknown metric {metric!r}: declare(name, kind) it first")
        series = self._series[metric, tags] = _Series(kind, tags)
        self._by_metric.setdefault(metric, []).append(series)
        return series

    @property
    def duration_s(self) -> float:
        """The latest sample time seen (0 without samples): the run's length so far."""
        return max(self._last_t, 0.0)

    @property
    def empty(self) -> bool:
        """No sample has been added yet."""
        return not self._series

    def window_indexes(self) -> range:
        """Every window from 0 to the one holding the latest sample (empty without samples).
        Windows without any sample in between are included: a stall must show, not vanish."""
        return range(int(self._last_t // self.window_s) + 1) if self._series else range(0)

    def window_has_data(self, window: int) -> bool:
        """Whether any metric has a sample in `window`."""
        return any(window in s.windows for s in self._series.values())

    def metrics(self) -> list[str]:
        """Names of the metrics that have samples, sorted."""
        return sorted(self._by_metric)

    def series(self, metric: str) -> Iterator[tuple[dict[str, str], Sink]]:
        """(tags, whole-run sink) for every tag set of `metric` (sinks are the store's own)."""
        for series in self._by_metric.get(metric, []):
            yield series.tags, series.total

    def select(self, metric: str, tag_filter: dict[str, str] | None = None, *,
               window: int | None = None) -> Sink:
        """The merge of every series of `metric` whose tags include `tag_filter` (k6
        sub-metrics: `http_req_duration{name:feedback}`), over the whole run or, with
        `window`, over that window only. A fresh sink, empty when nothing matched.

        Raises KeyError if `metric` is neither built in nor declared.
        """
        kind = self._kinds.get(metric)
        if kind is None:
            raise KeyError(f"unknown metric {metric!r}")
        wanted = (tag_filter or {}).items()
        merged = new_sink(kind)
        for series in self._by_metric.get(metric, []):
            if not all(series.tags.get(k) == v for k, v in wanted):
                continue
            sink = series.total if window is None else series.windows.get(window)
            if sink is not None:
                _merge(merged, sink)
        return merged
