"""The phase plan: the seed's scaling strategy as a typed, validated document.

`plans/dreamseed.yaml` says, for every phase, what the system should look like (GPU hosts, the
vLLM layout, Cloud Run, Redis, read replicas, budget, load test) and, for every step N -> N+1,
when to take it (trigger conditions and a quorum), how to watch it (metrics, limits) and the
checklist around it. Pure: the only I/O is reading the plan file in `load_plan`.

Validation collects every problem rather than stopping at the first: pydantic reports field
problems for the whole document at once, model validators add cross-field ones (each carrying
its own sub-path), and `validate_plan_data` adds the plan-wide ones that still make sense when
other parts failed (phase numbering, transition end points). All of them arrive together in one
`PlanError(problems=[(field path, reason), ...])`.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from phasegate.errors import PlanError
from phasegate.policy.durations import (
    format_duration,
    parse_duration,
    positive_duration,
    to_duration,
)
from phasegate.policy.loadtest.scenario import (
    ConstantArrivalRate,
    ConstantVus,
    Options,
    RampingArrivalRate,
    RampingVus,
    Scenario,
    Stage,
)
from phasegate.policy.loadtest.thresholds import threshold_problems as k6_threshold_problems
from phasegate.policy.promql import promql_problems

__all__ = [
    "DEFAULT_PLAN_PATH",
    "PLAN_FORMAT_VERSION",
    "Approvals",
    "Bound",
    "Business",
    "ChecklistItem",
    "ChecklistStage",
    "CloudRun",
    "Condition",
    "ConstantVus",
    "ConsecutiveDays",
    "ConsecutiveWeeks",
    "GpuHost",
    "Instant",
    "LoadTest",
    "ManualSource",
    "PeakWeek",
    "PeakWindow",
    "Phase",
    "Plan",
    "PromQLSource",
    "Quorum",
    "RampingVus",
    "Redis",
    "SQLSource",
    "Stage",
    "Transition",
    "Vllm",
    "Watch",
    "WatchMetric",
    "Weekly",
    "k6_threshold_problems",
    "load_plan",
    "plan_digest",
    "parse_duration",
    "scalar_sql_problems",
    "sql_problems",
    "validate_plan_data",
]

DEFAULT_PLAN_PATH = Path(__file__).resolve().parent.parent / "plans" / "dreamseed.yaml"
PLAN_FORMAT_VERSION = 1

Problems = list[tuple[str, str]]


# ---------------------------------------------------------------- reporting problems

def _raise_problems(problems: Problems) -> None:
    """Raise one pydantic error carrying several (sub-path, reason) problems, if any.

    A model validator cannot choose the location of its error; the sub-paths ride in `ctx`
    and `_validation_problems` appends them to the model's own location.
    """
    if problems:
        summary = "; ".join(f"{path}: {reason}" if path else reason for path, reason in problems)
        raise PydanticCustomError("plan_problems", "{summary}",
                                  {"summary": summary, "problems": problems})


def _join(prefix: str, sub: str) -> str:
    if not sub:
        return prefix
    if not prefix or sub.startswith("["):
        return prefix + sub
    return f"{prefix}.{sub}"


# ---------------------------------------------------------------- scalar types

def _to_clock(value: object) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int):
        # YAML 1.1 reads an unquoted 19:00 as the base-60 number 1140.
        raise ValueError("write times in quotes, e.g. '19:00' (YAML reads 19:00 as a number)")
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", str(value))
    if not match:
        raise ValueError(f"expected a time of day 'HH:MM', got {value!r}")
    return time(int(match[1]), int(match[2]))


Duration = Annotated[
    timedelta, BeforeValidator(to_duration), AfterValidator(positive_duration),
    PlainSerializer(format_duration, return_type=str),
]
ClockTime = Annotated[
    time, BeforeValidator(_to_clock),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str),
]


def _pattern(regex: str, hint: str) -> AfterValidator:
    """A regex check whose error says what is expected, not the regex."""
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r}: {hint}")
        return value

    return AfterValidator(check)


Slug = Annotated[str, _pattern(r"[a-z0-9]+(?:[-_][a-z0-9]+)*",
                               "use lowercase letters, digits, '-' or '_'")]
Text = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Comparison = Literal[">", ">=", "<", "<="]


def _check_promql(query: str) -> str:
    _raise_problems([("", reason) for reason in promql_problems(query)])
    return query


PromQL = Annotated[str, AfterValidator(_check_promql)]


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as `max_instance` must not silently keep a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- SQL conditions

_SQL_PARAMS = frozenset({"start", "end", "tz"})
_PERCENT = re.compile(r"%(?:\((?P<name>[A-Za-z_]\w*)\)s|%)?")
_SQL_START = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*(?:select|with)\b", re.I | re.S)


def sql_problems(query: str) -> list[str]:
    """Problems with a condition's SQL text (lab/README.md convention): one SELECT statement,
    psycopg named parameters %(start)s and %(end)s (and optionally %(tz)s), literal % as %%.
    """
    problems = []
    if not _SQL_START.match(query):
        problems.append("must be one SELECT (or WITH ... SELECT) statement")
    if ";" in query.strip().rstrip(";"):
        problems.append("must be a single statement (found ';' inside)")
    names = set()
    for match in _PERCENT.finditer(query):
        if match.group() == "%":
            problems.append("a literal % must be written %% (psycopg named parameters)")
        elif match["name"]:
            names.add(match["name"])
    problems += [f"unknown parameter %({n})s: only start, end and tz are passed"
                 for n in sorted(names - _SQL_PARAMS)]
    problems += [f"must use %({n})s: rows are one per local day in [start, end)"
                 for n in ("start", "end") if n not in names]
    return list(dict.fromkeys(problems))


def _check_sql(query: str) -> str:
    _raise_problems([("", reason) for reason in sql_problems(query)])
    return query


SQL = Annotated[str, AfterValidator(_check_sql)]


def scalar_sql_problems(query: str) -> list[str]:
    """Problems with a one-number query (business figures): one SELECT statement, no
    parameters (it is run as written, so a % needs no doubling)."""
    problems = []
    if not _SQL_START.match(query):
        problems.append("must be one SELECT (or WITH ... SELECT) statement")
    if ";" in query.strip().rstrip(";"):
        problems.append("must be a single statement (found ';' inside)")
    if re.search(r"%\(\w+\)s", query):
        problems.append("takes no parameters: it is run as written")
    return problems


def _check_scalar_sql(query: str) -> str:
    _raise_problems([("", reason) for reason in scalar_sql_problems(query)])
    return query


ScalarSQL = Annotated[str, AfterValidator(_check_scalar_sql)]


# ---------------------------------------------------------------- phases

class PeakWindow(_Model):
    """The daily peak window, local time. Daily values with `window: peak` use only it."""

    timezone: str = "Asia/Seoul"
    peak_start: ClockTime
    peak_end: ClockTime

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> PeakWindow:
        if self.peak_start == self.peak_end:
            _raise_problems([("peak_end", "equals peak_start: the window would be empty")])
        return self


class GpuHost(_Model):
    """A GPU server (an SSH target) and how many GPUs the phase needs on it."""

    name: Annotated[str, _pattern(r"[a-z0-9][a-z0-9-]*", "use lowercase letters, digits and '-'")]
    gpus: PositiveInt


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


class Vllm(_Model):
    """The vLLM deployment: model facts, parallel layout and engine settings."""

    image: Text
    model_path: Text
    served_model_name: Text
    num_attention_heads: PositiveInt = Field(description="model fact (config.json)")
    num_hidden_layers: PositiveInt = Field(description="model fact (config.json)")
    tensor_parallel_size: PositiveInt
    pipeline_parallel_size: PositiveInt = 1
    replicas: PositiveInt
    gpu_memory_utilization: float = Field(gt=0, le=1)
    max_model_len: PositiveInt

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one engine occupies: tensor x pipeline parallel size."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @model_validator(mode="after")
    def _layout(self) -> Vllm:
        problems: Problems = []
        tp, heads = self.tensor_parallel_size, self.num_attention_heads
        if heads % tp:
            # vLLM shards attention heads evenly across the tensor-parallel ranks.
            valid = ", ".join(str(d) for d in _divisors(heads))
            problems.append(("tensor_parallel_size", f"{tp} does not divide the model's "
                             f"{heads} attention heads; valid sizes: {valid}"))
        if self.pipeline_parallel_size > self.num_hidden_layers:
            problems.append(("pipeline_parallel_size", f"{self.pipeline_parallel_size} stages "
                             f"for {self.num_hidden_layers} layers: at most one stage per layer"))
        _raise_problems(problems)
        return self


class CloudRun(_Model):
    """The API service's Cloud Run settings (`gcloud run services update` flags)."""

    min_instances: NonNegativeInt
    max_instances: PositiveInt
    memory: Annotated[str, _pattern(r"[1-9]\d*(Mi|Gi)", "expected Mi or Gi, e.g. '4Gi'")]
    cpu: Annotated[str, _pattern(r"[1-9]\d*|0\.\d*[1-9]\d*|[1-9]\d*m",
                                 "expected a CPU count such as '2', '0.5' or '500m'")]
    timeout: Duration
    max_concurrency: int = Field(ge=1, le=1000, description="requests per instance")

    @field_validator("timeout")
    @classmethod
    def _timeout_limit(cls, value: timedelta) -> timedelta:
        if value > timedelta(hours=1):
            raise ValueError("Cloud Run allows at most 60m")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> CloudRun:
        if self.min_instances > self.max_instances:
            _raise_problems([("min_instances", f"{self.min_instances} is larger than "
                              f"max_instances ({self.max_instances})")])
        return self


RedisPolicy = Literal[
    "noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
    "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
]


class Redis(_Model):
    """Redis memory settings, applied with CONFIG SET."""

    # Redis's own units; 0 ("no limit") is refused: Redis memory % would be meaningless.
    maxmemory: Annotated[str, _pattern(r"(?i:[1-9]\d*(b|k|kb|m|mb|g|gb)?)",
                                       "expected a Redis size such as '16gb' or '512mb'")]
    maxmemory_policy: RedisPolicy
    cluster: bool = Field(
        default=False,
        description="the seed builds a Redis cluster from phase 3; phasegate does not: it "
        "shows the flag in the summary and checklist, the cluster is built by hand",
    )


class LoadTest(_Model):
    """A k6 load test for a phase: scenario, thresholds in k6's syntax, check names.

    The scenario and threshold models are the load-test engine's own (policy.loadtest), so a
    plan's load test is exactly what the engine runs.
    """

    scenario: Scenario
    # Expressions only (no {threshold, abortOnFail} objects): plan_cli prints them joined.
    thresholds: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(min_length=1)
    checks: list[Text] = []
    k6_script: Text | None = Field(
        default=None,
        description="a k6 script (the team's load_test.js; relative to the plan file's folder) "
        "run with the real k6 instead of the built-in engine; the thresholds above judge it",
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, thresholds: dict[str, list[str]]) -> dict[str, list[str]]:
        # A field validator: reported even when the scenario has problems of its own.
        _raise_problems([
            (f'["{key}"]', reason)
            for key, entries in thresholds.items()
            for reason in k6_threshold_problems(key, entries)
        ])
        return thresholds

    def to_options(self, name: str) -> Options:
        """The engine's options: this scenario under `name` (e.g. 'phase2') and the
        thresholds."""
        thresholds: dict[str, list[Any]] = {k: list(v) for k, v in self.thresholds.items()}
        return Options(scenarios={name: self.scenario}, thresholds=thresholds)


def _placement_problems(hosts: list[GpuHost], vllm: Vllm) -> Problems:
    """Does the vLLM layout fit the hosts? Each replica must sit on one host."""
    size, replicas = vllm.gpus_per_replica, vllm.replicas
    largest = max(h.gpus for h in hosts)
    total = sum(h.gpus for h in hosts)
    layout = f"TP {vllm.tensor_parallel_size} x PP {vllm.pipeline_parallel_size}"
    if size > largest:
        return [("vllm.tensor_parallel_size", f"one replica ({layout}) needs {size} GPUs "
                 f"but the largest host has {largest}")]
    if replicas * size > total:
        return [("vllm.replicas", f"{replicas} replicas x {size} GPUs ({layout}) need "
                 f"{replicas * size} GPUs; the phase's hosts have {total}")]
    fits = sum(h.gpus // size for h in hosts)
    if fits < replicas:
        return [("vllm.replicas", f"{replicas} replicas of {size} GPUs do not fit: a replica "
                 f"cannot span hosts, and these hosts hold only {fits}")]
    return []


class Phase(_Model):
    """What the system looks like in one phase."""

    name: Text
    users: PositiveInt = Field(description="the user scale the phase is sized for")
    gpu_hosts: Annotated[list[GpuHost], Field(min_length=1)]
    vllm: Vllm
    cloud_run: CloudRun
    redis: Redis
    db_read_replicas: NonNegativeInt = Field(
        description="target count; the seed sets replicas up by hand, phasegate tracks it")
    monthly_cost_usd: float = Field(gt=0)
    load_test: LoadTest

    @property
    def total_gpus(self) -> int:
        """GPUs across all of the phase's hosts."""
        return sum(h.gpus for h in self.gpu_hosts)

    @model_validator(mode="after")
    def _hosts(self) -> Phase:
        problems: Problems = []
        seen: set[str] = set()
        for index, host in enumerate(self.gpu_hosts):
            if host.name in seen:
                problems.append((f"gpu_hosts[{index}].name", f"duplicate host {host.name!r}"))
            seen.add(host.name)
        _raise_problems(problems + _placement_problems(self.gpu_hosts, self.vllm))
        return self


# ---------------------------------------------------------------- trigger conditions

DailyAggregate = Literal["max", "avg", "min", "last", "p95"]
DayWindow = Literal["all_day", "peak"]
WeekAggregate = Literal["last", "avg", "sum", "max", "min"]


class PromQLSource(_Model):
    """A Prometheus range query at `step`, reduced to one value per local day."""

    kind: Literal["promql"]
    query: PromQL
    step: Duration = timedelta(minutes=5)
    daily_aggregate: DailyAggregate
    window: DayWindow = "all_day"


class SQLSource(_Model):
    """A query on the app database returning (day, value) for every local day."""

    kind: Literal["sql"]
    query: SQL


class ManualSource(_Model):
    """A fact no system measures: a person enters the value when the transition is reviewed."""

    kind: Literal["manual"]
    prompt: Text


Source = Annotated[PromQLSource | SQLSource | ManualSource, Field(discriminator="kind")]


class ConsecutiveDays(_Model):
    """The condition held on each of the last `count` complete days ("7 consecutive days")."""

    rule: Literal["consecutive_days"]
    count: PositiveInt
    window: DayWindow = "all_day"


class ConsecutiveWeeks(_Model):
    """The condition held for each of the last `count` weeks (7-day blocks ending yesterday);
    a week's value is `aggregate` of its daily values ("last": the query is already weekly).
    """

    rule: Literal["consecutive_weeks"]
    count: PositiveInt
    aggregate: WeekAggregate = "last"


class Weekly(_Model):
    """The condition holds for the last 7 complete days taken together ("(weekly)")."""

    rule: Literal["weekly"]
    aggregate: WeekAggregate = "last"


class PeakWeek(_Model):
    """ "peak time, 1 week": each of the last 7 complete days, measured over the peak window."""

    rule: Literal["peak_week"]


class Instant(_Model):
    """No persistence in the seed: the last complete day's value decides."""

    rule: Literal["instant"]


Persistence = Annotated[
    ConsecutiveDays | ConsecutiveWeeks | Weekly | PeakWeek | Instant,
    Field(discriminator="rule"),
]
Group = Literal["users", "performance", "business", "feedback", "infrastructure"]


class Condition(_Model):
    """One trigger bullet of the seed: `value <comparison> threshold`, held as `persistence`."""

    id: Slug
    text: Text = Field(description="the seed's wording")
    group: Group
    source: Source
    comparison: Comparison
    threshold: float
    unit: Text
    persistence: Persistence

    @property
    def needs_peak(self) -> bool:
        """Whether the persistence rule speaks of the peak window."""
        persistence = self.persistence
        return isinstance(persistence, PeakWeek) or (
            isinstance(persistence, ConsecutiveDays) and persistence.window == "peak"
        )

    @model_validator(mode="after")
    def _consistent(self) -> Condition:
        problems: Problems = []
        if isinstance(self.source, ManualSource) and not isinstance(self.persistence, Instant):
            problems.append(("persistence", "a manual value has no history: use rule instant"))
        if self.needs_peak and not (
            isinstance(self.source, PromQLSource) and self.source.window == "peak"
        ):
            problems.append(("source", "the persistence is about peak time: use a promql "
                             "source with window: peak"))
        _raise_problems(problems)
        return self


class Quorum(_Model):
    """How many conditions must be met. `counts: groups` counts numbered groups, and a group
    counts as met when any condition in it is met."""

    min_met: PositiveInt
    counts: Literal["bullets", "groups"] = "bullets"


# ---------------------------------------------------------------- watch, checklist, approvals

class Bound(_Model):
    """An interval on a measured value; every given bound must hold."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def interval(self) -> tuple[float, bool, float, bool]:
        """(low, low inclusive, high, high inclusive) with infinities for missing ends."""
        low, low_in = (self.ge, True) if self.ge is not None else (self.gt, False)
        high, high_in = (self.le, True) if self.le is not None else (self.lt, False)
        return (float("-inf") if low is None else low, low_in,
                float("inf") if high is None else high, high_in)

    def holds(self, value: float) -> bool:
        """Whether `value` lies inside the bound."""
        low, low_in, high, high_in = self.interval()
        above = value >= low if low_in else value > low
        below = value <= high if high_in else value < high
        return above and below

    @model_validator(mode="after")
    def _sane(self) -> Bound:
        problems: Problems = []
        if all(v is None for v in (self.gt, self.ge, self.lt, self.le)):
            problems.append(("", "give at least one of gt, ge, lt, le"))
        for a, b in (("gt", "ge"), ("lt", "le")):
            if getattr(self, a) is not None and getattr(self, b) is not None:
                problems.append((b, f"give {a} or {b}, not both"))
        if not problems and _empty(self.interval()):
            problems.append(("", "no value can satisfy this bound"))
        _raise_problems(problems)
        return self


def _empty(interval: tuple[float, bool, float, bool]) -> bool:
    low, low_in, high, high_in = interval
    return low > high or (low == high and not (low_in and high_in))


def _overlap(a: Bound, b: Bound) -> bool:
    (al, ali, ah, ahi), (bl, bli, bh, bhi) = a.interval(), b.interval()
    low, low_in = max((al, ali), (bl, bli), key=lambda p: (p[0], not p[1]))
    high, high_in = min((ah, ahi), (bh, bhi), key=lambda p: (p[0], p[1]))
    return not _empty((low, low_in, high, high_in))


class WatchMetric(_Model):
    """A metric watched after the change. Like Argo Rollouts: inside `success` is Successful,
    inside `failure` is Failed, anything else Inconclusive; without `failure`, a value outside
    `success` is Failed. A query error or no data is an Error, never a success."""

    name: Slug
    query: PromQL
    unit: Text
    success: Bound
    failure: Bound | None = None

    @model_validator(mode="after")
    def _disjoint(self) -> WatchMetric:
        if self.failure is not None and _overlap(self.success, self.failure):
            _raise_problems([("failure", "overlaps success: a value would be both")])
        return self


class Watch(_Model):
    """Measure every `interval` for `duration` after the change; limits count per metric."""

    duration: Duration
    interval: Duration
    failure_limit: NonNegativeInt = 0
    consecutive_error_limit: NonNegativeInt = 4
    inconclusive_limit: NonNegativeInt = 0
    # Each query's range windows are cut to the time since the watch began (never below this),
    # so the switch's outage and the load test's tail are not judged as the new phase.
    min_window: Duration = timedelta(minutes=1)
    metrics: Annotated[list[WatchMetric], Field(min_length=1)]

    @property
    def measurements(self) -> int:
        """How many measurements per metric the watch takes."""
        return int(self.duration / self.interval)

    @model_validator(mode="after")
    def _consistent(self) -> Watch:
        problems: Problems = []
        if self.interval > self.duration:
            problems.append(("interval", f"{format_duration(self.interval)} is longer than "
                             f"the watch ({format_duration(self.duration)})"))
        problems += _duplicates([m.name for m in self.metrics], "metrics", "name")
        _raise_problems(problems)
        return self


StageName = Literal["D-7", "D-3", "D-1", "D-Day", "D+1..7"]
_STAGE_ORDER: tuple[str, ...] = get_args(StageName)


class ChecklistItem(_Model):
    """One checklist line; `at` (local time) only on D-Day."""

    text: Text
    owner: Text | None = None
    cost_usd: float | None = Field(default=None, ge=0)
    at: ClockTime | None = None


class ChecklistStage(_Model):
    """The checklist items of one day relative to the change (D-7 ... D+1..7)."""

    stage: StageName
    title: Text
    items: Annotated[list[ChecklistItem], Field(min_length=1)]

    @model_validator(mode="after")
    def _times(self) -> ChecklistStage:
        problems: Problems = []
        times = [(i, item.at) for i, item in enumerate(self.items) if item.at is not None]
        if times and self.stage != "D-Day":
            problems.append((f"items[{times[0][0]}].at", "times are for D-Day items only"))
        for (_, before), (index, after) in zip(times, times[1:], strict=False):
            if after < before:
                problems.append((f"items[{index}].at", "earlier than the item before it"))
        _raise_problems(problems)
        return self


class Approvals(_Model):
    """Who must approve a transition before it runs, and how long the request stays open."""

    roles: Annotated[list[Text], Field(min_length=1)]
    distinct_people: bool = True
    timeout: Duration

    @model_validator(mode="after")
    def _unique(self) -> Approvals:
        _raise_problems(_duplicates(self.roles, "roles", None))
        return self


def _duplicates(values: list[str], field: str, attr: str | None) -> Problems:
    seen: set[str] = set()
    problems: Problems = []
    for index, value in enumerate(values):
        if value in seen:
            suffix = f".{attr}" if attr else ""
            problems.append((f"{field}[{index}]{suffix}", f"duplicate {value!r}"))
        seen.add(value)
    return problems


# ---------------------------------------------------------------- transitions and the plan

class Transition(_Model):
    """The step from phase N to N+1: when (conditions, quorum), how to watch, checklist."""

    from_phase: PositiveInt
    to_phase: PositiveInt
    quorum: Quorum
    conditions: Annotated[list[Condition], Field(min_length=1)]
    watch: Watch
    checklist: list[ChecklistStage] = []
    # The whole run after the approvals (backup, changes, load test, watch), so a step that
    # hangs cannot hold the lock for ever; passed, the run rolls back.
    time_limit: Duration = timedelta(hours=4)

    @property
    def groups(self) -> list[str]:
        """The condition groups in order of first appearance."""
        return list(dict.fromkeys(c.group for c in self.conditions))

    @model_validator(mode="after")
    def _consistent(self) -> Transition:
        problems: Problems = []
        if self.to_phase != self.from_phase + 1:
            problems.append(("to_phase", f"{self.to_phase} does not follow {self.from_phase}: "
                             f"a transition goes from phase N to N+1, one step at a time"))
        problems += _duplicates([c.id for c in self.conditions], "conditions", "id")
        problems += self._quorum_problems()
        problems += _stage_order_problems([s.stage for s in self.checklist])
        if self.time_limit <= self.watch.duration:
            problems.append(("time_limit", f"{format_duration(self.time_limit)} leaves no "
                             f"time beyond the watch ({format_duration(self.watch.duration)})"))
        _raise_problems(problems)
        return self

    def _quorum_problems(self) -> Problems:
        counted = self.quorum.counts
        available = len(self.conditions) if counted == "bullets" else len(self.groups)
        what = "conditions" if counted == "bullets" else "condition groups"
        if self.quorum.min_met > available:
            return [("quorum.min_met", f"{self.quorum.min_met} is more than the "
                     f"{available} {what} it counts")]
        return []


def _stage_order_problems(stages: list[str]) -> Problems:
    problems = _duplicates(stages, "checklist", "stage")
    if not problems and stages != sorted(stages, key=_STAGE_ORDER.index):
        problems.append(("checklist", f"stages must run in order {', '.join(_STAGE_ORDER)}"))
    return problems


def _structure_problems(numbers: list[int], ends: list[tuple[int, Any, Any]]) -> Problems:
    """Plan-wide checks that need only phase numbers and transition end points.

    They run on the raw document too, so they are reported even when other parts are invalid.
    """
    problems: Problems = []
    expected = list(range(1, len(numbers) + 1))
    if sorted(numbers) != expected:
        missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
        note = f" (missing {', '.join(map(str, missing))})" if missing else ""
        got = ", ".join(map(str, sorted(numbers))) or "none"
        problems.append(("phases", f"phases must be numbered 1..N without gaps; got {got}{note}"))
    seen: dict[tuple[Any, Any], int] = {}
    for index, start, end in ends:
        for field, number in (("from_phase", start), ("to_phase", end)):
            if isinstance(number, int) and number not in numbers:
                problems.append((f"transitions[{index}].{field}", f"no phase {number} in the plan"))
        if (start, end) in seen:
            problems.append((f"transitions[{index}]", f"duplicate transition {start} -> {end} "
                             f"(also transitions[{seen[start, end]}])"))
        seen.setdefault((start, end), index)
    return problems


class Business(_Model):
    """Business figures read from the app database, as the plan's SQL conditions are: the
    product knows no table of it. Each query returns one row with one number."""

    monthly_revenue_sql: ScalarSQL | None = Field(
        default=None, description="revenue of the last 30 days in USD (seed D-1 financial "
                                  "check: revenue >= 3 x next month's cost); none: unknown")


class Plan(_Model):
    """The whole phase plan. Phases are keyed by number (1..N); transitions go N -> N+1."""

    version: int = Field(description="plan file format version")
    plan_revision: Text
    peak_window: PeakWindow
    approvals: Approvals
    phases: dict[PositiveInt, Phase] = Field(min_length=1)
    transitions: list[Transition]
    business: Business = Business()

    @field_validator("version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value != PLAN_FORMAT_VERSION:
            raise ValueError(f"unsupported plan format version {value}; "
                             f"this phasegate reads version {PLAN_FORMAT_VERSION}")
        return value

    @model_validator(mode="after")
    def _structure(self) -> Plan:
        ends = [(i, t.from_phase, t.to_phase) for i, t in enumerate(self.transitions)]
        problems = _structure_problems(list(self.phases), ends)
        for number in self.phases:
            if number > 1 and number - 1 in self.phases:
                before = self.phases[number - 1].users
                if self.phases[number].users <= before:
                    problems.append((f"phases[{number}].users",
                                     f"must be larger than phase {number - 1}'s ({before})"))
        _raise_problems(problems)
        return self

    def phase(self, number: int) -> Phase:
        """The phase numbered `number`. Raises PlanError if the plan has none."""
        if number not in self.phases:
            raise PlanError([("phases", f"no phase {number} in the plan")])
        return self.phases[number]

    def transition(self, from_phase: int, to_phase: int) -> Transition:
        """The transition from_phase -> to_phase. Raises PlanError if the plan has none."""
        for candidate in self.transitions:
            if (candidate.from_phase, candidate.to_phase) == (from_phase, to_phase):
                return candidate
        raise PlanError([("transitions", f"no transition {from_phase} -> {to_phase}")])


# ---------------------------------------------------------------- loading

# Discriminator values pydantic puts into error locations of tagged unions; not field names.
_TAGS = frozenset(
    get_args(model.model_fields[field].annotation)[0]
    for model, field in (
        (PromQLSource, "kind"), (SQLSource, "kind"), (ManualSource, "kind"),
        (ConsecutiveDays, "rule"), (ConsecutiveWeeks, "rule"), (Weekly, "rule"),
        (PeakWeek, "rule"), (Instant, "rule"), (ConstantVus, "executor"),
        (RampingVus, "executor"), (ConstantArrivalRate, "executor"),
        (RampingArrivalRate, "executor"),
    )
)
_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


_TAGGED_FIELDS = ("source", "persistence", "scenario")
_KEYED_FIELDS = ("thresholds",)  # dicts whose keys are not identifiers


def _loc_path(loc: tuple[int | str, ...]) -> str:
    """('phases', 3, 'vllm', 'replicas') -> 'phases[3].vllm.replicas'."""
    path = ""
    for index, part in enumerate(loc):
        parent = loc[index - 1] if index else None
        if part == "[key]" or (parent in _TAGGED_FIELDS and part in _TAGS):
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif parent in _KEYED_FIELDS:
            path += f'["{part}"]'
        else:
            path += f".{part}" if path else part
    return path


def _validation_problems(exc: ValidationError) -> Problems:
    """Turn pydantic's errors into (path, reason), expanding multi-problem errors."""
    problems: Problems = []
    for error in exc.errors():
        path = _loc_path(error["loc"])
        ctx = error.get("ctx") or {}
        if "problems" in ctx:
            problems += [(_join(path, sub) or "(plan)", reason) for sub, reason in ctx["problems"]]
            continue
        reason = _MESSAGES.get(error["type"], error["msg"].removeprefix("Value error, "))
        if error["type"] == "literal_error":
            reason += f"; got {error['input']!r}"
        problems.append((path or "(plan)", reason))
    return problems


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _raw_structure_problems(data: dict[str, Any]) -> Problems:
    """`_structure_problems` on the raw document, skipping parts too malformed to read."""
    phases = data.get("phases")
    if not isinstance(phases, dict) or not phases:
        return []
    numbers = [n for n in (_as_int(k) for k in phases) if n is not None]
    transitions = data.get("transitions")
    ends = [
        (i, _as_int(t.get("from_phase")), _as_int(t.get("to_phase")))
        for i, t in enumerate(transitions if isinstance(transitions, list) else [])
        if isinstance(t, dict)
    ]
    return _structure_problems(numbers, ends)


def validate_plan_data(data: Any) -> Plan:
    """Validate a plan document (the parsed YAML) and return the Plan.

    Raises PlanError listing every problem found, each as (field path, reason).
    """
    if not isinstance(data, dict):
        raise PlanError([("(plan)", "the plan must be a mapping of keys at the top level")])
    problems = _raw_structure_problems(data)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        problems += _validation_problems(exc)
    if problems:
        raise PlanError(list(dict.fromkeys(problems)))
    return plan


# libyaml's parser when installed (10x faster); the constructor, and so this check, is Python.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that records duplicate keys, which plain YAML silently resolves to the last
    one (the seed's own Knative annotations repeat `metric` and `target` that way)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: Problems = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int):
                continue
            if key in seen:
                line = key_node.start_mark.line + 1
                self.duplicates.append((str(line), f"duplicate key {key!r}"))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Any:
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        reason = getattr(exc, "problem", None) or str(exc)
        raise PlanError([(where, f"YAML syntax error: {reason}")]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise PlanError([(f"{source}:{where}", reason) for where, reason in loader.duplicates])
    return data


def plan_digest(plan: Plan) -> str:
    """sha256 of the validated plan's canonical JSON: what an approval was given for (two
    files that differ only in comments or key order have the same digest)."""
    text = json.dumps(plan.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def load_plan(path: str | Path | None = None) -> Plan:
    """Read and validate a plan file (default: plans/dreamseed.yaml in the repository).

    Raises PlanError when the file cannot be read, is not valid YAML, or is not a valid plan.
    """
    file = Path(path) if path is not None else DEFAULT_PLAN_PATH
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError([(str(file), f"cannot read the plan: {exc.strerror or exc}")]) from None
    return validate_plan_data(_parse_yaml(text, str(file)))
