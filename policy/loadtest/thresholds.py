"""k6 thresholds: parsing, whole-run and per-window verdicts, abortOnFail.

Syntax and meaning are k6's: a key names a metric, optionally narrowed to a sub-metric by tags
(`http_req_duration{scenario:phase2,expected_response:true}`), and holds a list of expressions
`<aggregation> <operator> <number>` or objects `{threshold, abortOnFail, delayAbortEval}`.
Aggregations by metric kind, as k6 allows them: trend avg/min/max/med/p(N), rate `rate`,
counter `count`/`rate` (per second), gauge `value`. Operators: < <= > >= == === !=.

Verdicts keep "no data" apart from "passed". Over the whole run a threshold whose metric has no
sample passes, as in k6, but is marked `no_data`; in the per-window view such a window has
`ok=None`. A counter is the exception: a built-in or declared counter without samples is 0
(nothing was dropped), which is a measurement, as long as the run (or window) has any sample.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)

from phasegate.errors import PlanError
from phasegate.policy.durations import format_duration, parse_duration
from phasegate.policy.loadtest.metrics import (
    KNOWN_METRICS,
    Counter,
    Gauge,
    Kind,
    MetricStore,
    Rate,
    Sink,
)

__all__ = [
    "ALLOWED_AGGREGATIONS",
    "Threshold",
    "ThresholdEntry",
    "ThresholdResult",
    "ThresholdSpec",
    "ThresholdsSpec",
    "WindowResult",
    "abort_due",
    "evaluate",
    "evaluate_windows",
    "expression_of",
    "parse_key",
    "parse_thresholds",
    "threshold_problems",
]

_METRIC = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_.]{0,127})(?:\{(?P<tags>[^{}]*)\})?")
_TAG = re.compile(r"\s*(?P<k>[A-Za-z_][A-Za-z0-9_.-]*)\s*:\s*(?P<v>[^,{}\s][^,{}]*?)\s*")
_EXPRESSION = re.compile(
    r"\s*(?P<agg>count|rate|value|avg|min|max|med|p\(\s*(?P<pct>\d+(?:\.\d+)?)\s*\))"
    r"\s*(?P<op>===|==|!=|>=|<=|>|<)"
    r"\s*(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
)
# k6's table "aggregation methods by metric type"; "p" stands for every p(N).
ALLOWED_AGGREGATIONS: dict[Kind, frozenset[str]] = {
    "trend": frozenset({"avg", "min", "max", "med", "p"}),
    "rate": frozenset({"rate"}),
    "counter": frozenset({"count", "rate"}),
    "gauge": frozenset({"value"}),
}
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "===": operator.eq, "!=": operator.ne,
}


def _to_duration(value: object) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


class ThresholdSpec(BaseModel):
    """k6's object form of a threshold: `{threshold: 'rate<0.01', abortOnFail: true,
    delayAbortEval: '10s'}` (snake_case accepted too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: str
    abort_on_fail: bool = Field(
        False, validation_alias=AliasChoices("abort_on_fail", "abortOnFail"))
    delay_abort_eval: Annotated[timedelta, BeforeValidator(_to_duration),
                                PlainSerializer(format_duration, return_type=str)] = Field(
        timedelta(0), validation_alias=AliasChoices("delay_abort_eval", "delayAbortEval"))


def _spec_problems(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"])
        reason = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        out.append(f"{field}: {reason.removeprefix('Value error, ')}" if field else reason)
    return out


def _entry(value: object) -> object:
    """An entry as str or ThresholdSpec, with one readable error instead of one per member of
    the union."""
    if isinstance(value, str | ThresholdSpec):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"expected an expression such as 'p(95)<300' or {{threshold, "
                         f"abortOnFail, delayAbortEval}}, got {value!r}")
    try:
        return ThresholdSpec.model_validate(value)
    except ValidationError as exc:
        raise ValueError("; ".join(_spec_problems(exc))) from exc


ThresholdEntry = Annotated[str | ThresholdSpec, BeforeValidator(_entry)]
ThresholdsSpec = dict[str, Annotated[list[ThresholdEntry], Field(min_length=1)]]


def expression_of(entry: str | ThresholdSpec) -> str:
    """The k6 expression of an entry, whichever form it was written in."""
    return entry if isinstance(entry, str) else entry.threshold


@dataclass(frozen=True)
class Threshold:
    """One parsed threshold expression on one (sub-)metric."""

    key: str                      # as written: 'http_req_duration{name:feedback}'
    metric: str                   # 'http_req_duration'
    tags: tuple[tuple[str, str], ...]
    expression: str               # as written: 'p(95)<300'
    aggregation: str              # 'avg', 'min', 'max', 'med', 'p', 'rate', 'count', 'value'
    percentile: float | None      # N of p(N)
    operator: str
    limit: float
    abort_on_fail: bool = False
    delay_abort_eval_s: float = 0.0

    @property
    def tag_filter(self) -> dict[str, str]:
        """The sub-metric's tags as a dict (empty for the whole metric)."""
        return dict(self.tags)

    @property
    def label(self) -> str:
        """Key and expression, as k6 prints them: `http_req_duration{name:x}: p(95)<300`."""
        return f"{self.key}: {self.expression}"

    def holds(self, observed: float) -> bool:
        """Whether `observed` satisfies the expression."""
        return _OPERATORS[self.operator](observed, self.limit)


@dataclass(frozen=True)
class ThresholdResult:
    """The whole-run verdict of one threshold. `ok` is True when `no_data` (k6 passes it);
    `error` says why a threshold could not be evaluated at all (then `ok` is False)."""

    threshold: Threshold
    ok: bool
    observed: float | None
    no_data: bool
    error: str | None = None


@dataclass(frozen=True)
class WindowResult:
    """The verdict of one threshold in one time window [start_s, end_s); `ok` is None when
    the window has no data for it."""

    threshold: Threshold
    window: int
    start_s: float
    end_s: float
    ok: bool | None
    observed: float | None
    no_data: bool


# ---------------------------------------------------------------- parsing

def parse_key(key: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """'http_req_duration{name:feedback}' -> ('http_req_duration', (('name', 'feedback'),)).

    Raises ValueError with the reason.
    """
    match = _METRIC.fullmatch(key.strip())
    if not match:
        raise ValueError(f"{key!r} is not a k6 metric name, optionally with {{tag:value}}")
    if match["tags"] is None:
        return match["name"], ()
    tags = [_TAG.fullmatch(part) for part in match["tags"].split(",")]
    if not all(tags):
        raise ValueError(
            f"bad tag filter in {key!r}: write {{tag:value}} or {{tag:value,tag2:value2}}")
    return match["name"], tuple((t["k"], t["v"]) for t in tags if t)


def _parse_expression(expression: str, kind: Kind | None, metric: str) -> re.Match[str]:
    match = _EXPRESSION.fullmatch(expression)
    if not match:
        raise ValueError(f"{expression!r} is not a k6 threshold (e.g. 'p(95)<500', "
                         "'rate<0.01', 'avg<200', 'count<1')")
    if match["pct"] is not None and float(match["pct"]) > 100:
        raise ValueError(f"{expression!r}: a percentile is at most 100")
    allowed = ALLOWED_AGGREGATIONS.get(kind) if kind else None
    if allowed is not None and match["agg"].split("(")[0] not in allowed:
        raise ValueError(f"{expression!r}: k6 metric {metric} is a {kind} and supports "
                         f"only {', '.join(sorted(allowed))}")
    return match


def _spec(entry: object) -> ThresholdSpec:
    if isinstance(entry, str):
        return ThresholdSpec(threshold=entry)
    if isinstance(entry, ThresholdSpec):
        return entry
    return ThresholdSpec.model_validate(entry)


def _parse_entry(key: str, entry: object, kinds: Mapping[str, Kind]) -> Threshold:
    """One threshold; raises ValueError whose message names the expression."""
    metric, tags = parse_key(key)
    try:
        spec = _spec(entry)
    except ValidationError as exc:
        raise ValueError(f"{entry!r}: " + "; ".join(_spec_problems(exc))) from exc
    match = _parse_expression(spec.threshold, kinds.get(metric), metric)
    aggregation = match["agg"].split("(")[0]
    return Threshold(
        key=key, metric=metric, tags=tags, expression=spec.threshold, aggregation=aggregation,
        percentile=float(match["pct"]) if match["pct"] is not None else None,
        operator=match["op"], limit=float(match["value"]), abort_on_fail=spec.abort_on_fail,
        delay_abort_eval_s=spec.delay_abort_eval.total_seconds(),
    )


def _entries(value: object) -> list[object]:
    if isinstance(value, str | ThresholdSpec | Mapping):
        return [value]  # k6 also accepts one expression without the list
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def threshold_problems(key: str, entries: Iterable[object],
                       kinds: Mapping[str, Kind] | None = None) -> list[str]:
    """Every problem with one k6 threshold entry `key: [expressions]`, e.g.
    `http_req_duration{name:feedback}: ["p(95)<5000"]` or `errors: ["rate<0.01"]`.

    `kinds`: metric kinds to check aggregations against (default: the built-in metrics);
    metrics it does not list accept any aggregation here and are checked when evaluated.
    """
    known = KNOWN_METRICS if kinds is None else kinds
    try:
        parse_key(key)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    for entry in entries:
        try:
            _parse_entry(key, entry, known)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def parse_thresholds(mapping: Mapping[str, Any],
                     kinds: Mapping[str, Kind] | None = None) -> list[Threshold]:
    """Parse k6's `thresholds` option ({key: [expression | {threshold, abortOnFail,
    delayAbortEval}]}) into Thresholds, in the mapping's order.

    Raises PlanError naming every bad entry as ('thresholds["key"]', "'expression': reason").
    """
    known = KNOWN_METRICS if kinds is None else kinds
    problems: list[tuple[str, str]] = []
    parsed: list[Threshold] = []
    for key, value in mapping.items():
        entries = _entries(value)
        if not entries:
            problems.append((f'thresholds["{key}"]', "no threshold expression given"))
        for reason in threshold_problems(key, entries, known):
            problems.append((f'thresholds["{key}"]', reason))
        if not problems:
            parsed += [_parse_entry(key, entry, known) for entry in entries]
    if problems:
        raise PlanError(problems)
    return parsed


# ---------------------------------------------------------------- evaluation

def _observe(threshold: Threshold, sink: Sink, duration_s: float,
             scope_has_data: bool) -> float | None:
    """The value the threshold compares, from `sink`; None when there is no data."""
    aggregation = threshold.aggregation
    if isinstance(sink, Counter):
        if not sink.count and not scope_has_data:
            return None
        return sink.sum if aggregation == "count" else sink.per_s(duration_s)
    if isinstance(sink, Rate):
        return sink.rate
    if isinstance(sink, Gauge):
        return sink.value if sink.count else None
    if not sink.count:
        return None
    if aggregation == "avg":
        return sink.mean
    if aggregation in ("min", "max"):
        return sink.min if aggregation == "min" else sink.max
    return sink.percentile(50.0 if aggregation == "med" else threshold.percentile or 0.0)


def _kind_error(threshold: Threshold, store: MetricStore) -> str | None:
    """Why the threshold cannot apply to its metric's kind (custom metrics are only known
    once declared), or None."""
    kind = store.kind(threshold.metric)
    if kind is None or threshold.aggregation in ALLOWED_AGGREGATIONS[kind]:
        return None
    return (f"{threshold.expression!r}: metric {threshold.metric} is a {kind} and supports "
            f"only {', '.join(sorted(ALLOWED_AGGREGATIONS[kind]))}")


def _whole_run(threshold: Threshold, store: MetricStore, elapsed_s: float) -> ThresholdResult:
    error = _kind_error(threshold, store)
    if error:
        return ThresholdResult(threshold, False, None, no_data=False, error=error)
    if store.kind(threshold.metric) is None:
        return ThresholdResult(threshold, True, None, no_data=True)
    sink = store.select(threshold.metric, threshold.tag_filter)
    observed = _observe(threshold, sink, elapsed_s, scope_has_data=not store.empty)
    if observed is None:
        return ThresholdResult(threshold, True, None, no_data=True)
    return ThresholdResult(threshold, threshold.holds(observed), observed, no_data=False)


def evaluate(thresholds: Iterable[Threshold], store: MetricStore, *,
             elapsed_s: float | None = None) -> list[ThresholdResult]:
    """The whole-run verdict of every threshold (k6's only verdict).

    `elapsed_s`: the run's length for counter rates (default: the latest sample's time).
    """
    elapsed = store.duration_s if elapsed_s is None else elapsed_s
    return [_whole_run(threshold, store, elapsed) for threshold in thresholds]


def _in_window(threshold: Threshold, store: MetricStore, window: int) -> WindowResult:
    start = window * store.window_s
    end = start + store.window_s
    observed = None
    if store.kind(threshold.metric) is not None and not _kind_error(threshold, store):
        sink = store.select(threshold.metric, threshold.tag_filter, window=window)
        observed = _observe(threshold, sink, store.window_s, store.window_has_data(window))
    if observed is None:
        return WindowResult(threshold, window, start, end, None, None, no_data=True)
    return WindowResult(threshold, window, start, end, threshold.holds(observed), observed,
                        no_data=False)


def evaluate_windows(thresholds: Iterable[Threshold], store: MetricStore) -> list[WindowResult]:
    """The verdict of every threshold in every window of the run so far (threshold-major:
    all windows of the first threshold, then the next). Windows are `store.window_s` long;
    a counter's `rate` is per second of the window."""
    windows = store.window_indexes()
    return [_in_window(threshold, store, w) for threshold in thresholds for w in windows]


def abort_due(thresholds: Iterable[Threshold], store: MetricStore,
              elapsed_s: float) -> Threshold | None:
    """The first abortOnFail threshold that fails over the run so far, once `elapsed_s` has
    reached its delayAbortEval; None if the run may go on. No data never aborts."""
    for threshold in thresholds:
        if not threshold.abort_on_fail or elapsed_s < threshold.delay_abort_eval_s:
            continue
        result = _whole_run(threshold, store, elapsed_s)
        if not result.ok and not result.no_data:
            return threshold
    return None
