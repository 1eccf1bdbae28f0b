"""k6 scenarios: the four executors as validated models, and their schedules.

Models take k6's names and defaults (`startVUs` 1, `timeUnit` 1s, `gracefulStop` 30s,
`gracefulRampDown` 30s, `maxVUs` = `preAllocatedVUs`, `startTime` 0s, `startRate` 0) in either
spelling, snake_case or k6's camelCase. Durations are strings as k6 and Prometheus write them
("30s", "5m", "1h30m"; `policy.durations.parse_duration`).

Schedules are pure functions of the scenario and a time `t_s` in seconds since the scenario's
own start (its `start_time` is not included):
- `vus_at`: VUs of a VU executor, as k6 plans them (a ramp up adds VU n at the moment the
  linear target reaches n; a ramp down removes it when the target falls below n, i.e. floor of
  the linear target going up and ceil going down; a 0s stage jumps at its end);
- `rate_at`: iterations per second of an arrival-rate executor (piecewise linear);
- `arrival_offsets`: when each iteration is meant to start. constant-arrival-rate starts the
  first at 0 and then every time_unit / rate; ramping-arrival-rate, as k6's `cal`, starts
  iteration i (i = 1, 2, ...) when the integral of the rate reaches i, which for a linear ramp
  is the root of a quadratic (computed in the conjugate form, stable when the ramp is flat).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
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
from phasegate.policy.durations import format_duration, positive_duration, to_duration
from phasegate.policy.loadtest.thresholds import Threshold, ThresholdsSpec, parse_thresholds

__all__ = [
    "EXECUTORS",
    "ArrivalRateScenario",
    "ConstantArrivalRate",
    "ConstantVus",
    "Options",
    "RampingArrivalRate",
    "RampingVus",
    "Scenario",
    "Stage",
    "VuScenario",
    "arrival_offsets",
    "duration_s",
    "parse_options",
    "raise_problems",
    "rate_at",
    "run_duration_s",
    "scaled",
    "validation_problems",
    "vus_at",
]

Problems = list[tuple[str, str]]
EXECUTORS = ("constant-vus", "ramping-vus", "constant-arrival-rate", "ramping-arrival-rate")


def raise_problems(problems: Problems) -> None:
    """Raise one pydantic error carrying several (sub-path, reason) problems, if any.

    A model validator cannot choose the location of its error: the sub-paths ride in `ctx`
    (the same convention as policy.plan, whose loader appends them to the model's path).
    """
    if problems:
        summary = "; ".join(f"{path}: {reason}" if path else reason for path, reason in problems)
        raise PydanticCustomError("plan_problems", "{summary}",
                                  {"summary": summary, "problems": problems})


# ---------------------------------------------------------------- field types

def _tag_value(value: object) -> object:
    # k6 turns tag values into strings; YAML reads `phase: 1` as a number.
    return str(value).lower() if isinstance(value, bool) else (
        str(value) if isinstance(value, int | float) else value)


_AsString = PlainSerializer(format_duration, return_type=str)
Duration = Annotated[timedelta, BeforeValidator(to_duration), AfterValidator(positive_duration),
                     _AsString]
Delay = Annotated[timedelta, BeforeValidator(to_duration), _AsString]  # 0s allowed
TagValue = Annotated[str, BeforeValidator(_tag_value)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


def _alias(name: str, k6_name: str, default: Any = ..., **kwargs: Any) -> Any:
    """A field read as `name` or as k6's `k6_name`."""
    return Field(default, validation_alias=AliasChoices(name, k6_name), **kwargs)


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as `maxVU` must not silently keep a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(_Model):
    """One stage: move linearly to `target` (VUs, or iterations per time_unit) over
    `duration` (0s: jump at once)."""

    duration: Delay
    target: NonNegativeInt


class _Common(_Model):
    """Options every k6 executor has."""

    start_time: Delay = _alias("start_time", "startTime", timedelta(0))
    graceful_stop: Delay = _alias("graceful_stop", "gracefulStop", timedelta(seconds=30))
    tags: dict[str, TagValue] = {}
    exec: Literal["journey", "llm", "request"] = Field(
        "journey", description="journey: the seed's user journey; llm: OpenAI-compatible; "
        "request: one request per iteration (env METHOD, PATH, BODY, NAME)")
    env: dict[str, str] = {}


def _stage_problems(stages: list[Stage], start: int, what: str) -> Problems:
    problems: Problems = []
    if stages and sum((s.duration for s in stages), timedelta()) <= timedelta(0):
        problems.append(("stages", "the stages last 0s in total"))
    if stages and max([start] + [s.target for s in stages]) == 0:
        problems.append(("stages", f"either {what} or one stage's target must be above 0"))
    return problems


class ConstantVus(_Common):
    """k6 `constant-vus`: `vus` VUs loop over the journey for `duration`."""

    executor: Literal["constant-vus"]
    vus: PositiveInt = 1
    duration: Duration

    @property
    def max_vus(self) -> int:
        """The most VUs the scenario runs at once."""
        return self.vus

    @property
    def total_duration(self) -> timedelta:
        """How long iterations start (graceful stop not included)."""
        return self.duration


class RampingVus(_Common):
    """k6 `ramping-vus`: the VU count follows `stages` from `start_vus`."""

    executor: Literal["ramping-vus"]
    start_vus: NonNegativeInt = _alias("start_vus", "startVUs", 1)
    stages: Annotated[list[Stage], Field(min_length=1)]
    graceful_ramp_down: Delay = _alias("graceful_ramp_down", "gracefulRampDown",
                                       timedelta(seconds=30))

    @property
    def max_vus(self) -> int:
        """The most VUs the scenario runs at once."""
        return max([self.start_vus] + [s.target for s in self.stages])

    @property
    def total_duration(self) -> timedelta:
        """How long iterations start (graceful stop not included)."""
        return sum((s.duration for s in self.stages), timedelta())

    @model_validator(mode="after")
    def _some_load(self) -> RampingVus:
        raise_problems(_stage_problems(self.stages, self.start_vus, "start_vus"))
        return self


class _ArrivalRate(_Common):
    """Options both arrival-rate executors have."""

    time_unit: Duration = _alias("time_unit", "timeUnit", timedelta(seconds=1))
    pre_allocated_vus: NonNegativeInt = _alias("pre_allocated_vus", "preAllocatedVUs")
    max_vus: PositiveInt = _alias("max_vus", "maxVUs")

    @model_validator(mode="before")
    @classmethod
    def _max_vus_default(cls, data: Any) -> Any:
        # k6: maxVUs defaults to preAllocatedVUs.
        if isinstance(data, dict) and "max_vus" not in data and "maxVUs" not in data:
            pre = data.get("pre_allocated_vus", data.get("preAllocatedVUs"))
            if pre is not None:
                data = {**data, "max_vus": pre}
        return data

    @model_validator(mode="after")
    def _vu_bounds(self) -> _ArrivalRate:
        if self.max_vus < self.pre_allocated_vus:
            raise_problems([("max_vus", f"{self.max_vus} is less than pre_allocated_vus "
                             f"({self.pre_allocated_vus})")])
        return self


class ConstantArrivalRate(_ArrivalRate):
    """k6 `constant-arrival-rate`: `rate` iterations per `time_unit` for `duration`."""

    executor: Literal["constant-arrival-rate"]
    rate: PositiveInt
    duration: Duration

    @property
    def total_duration(self) -> timedelta:
        """How long iterations start (graceful stop not included)."""
        return self.duration


class RampingArrivalRate(_ArrivalRate):
    """k6 `ramping-arrival-rate`: the rate (per `time_unit`) follows `stages` from
    `start_rate`."""

    executor: Literal["ramping-arrival-rate"]
    start_rate: NonNegativeInt = _alias("start_rate", "startRate", 0)
    stages: Annotated[list[Stage], Field(min_length=1)]

    @property
    def total_duration(self) -> timedelta:
        """How long iterations start (graceful stop not included)."""
        return sum((s.duration for s in self.stages), timedelta())

    @model_validator(mode="after")
    def _some_load(self) -> RampingArrivalRate:
        raise_problems(_stage_problems(self.stages, self.start_rate, "start_rate"))
        return self


Scenario = Annotated[ConstantVus | RampingVus | ConstantArrivalRate | RampingArrivalRate,
                     Field(discriminator="executor")]
VuScenario = ConstantVus | RampingVus
ArrivalRateScenario = ConstantArrivalRate | RampingArrivalRate
AnyScenario = VuScenario | ArrivalRateScenario
_SCENARIO_NAME = re.compile(r"[0-9A-Za-z_-]+")


def _scenario_name(name: str) -> str:
    if not _SCENARIO_NAME.fullmatch(name):
        raise ValueError("a scenario name has only letters, digits, '_' and '-'")
    return name


ScenarioName = Annotated[str, AfterValidator(_scenario_name)]


class Options(_Model):
    """k6's `options`, the parts we run: scenarios by name and thresholds."""

    scenarios: dict[ScenarioName, Scenario] = Field(min_length=1)
    thresholds: ThresholdsSpec = {}

    # Read the raw input ("before"), so bad thresholds are reported with the other problems.
    @field_validator("thresholds", mode="before")
    @classmethod
    def _expressions(cls, thresholds: Any) -> Any:
        if isinstance(thresholds, dict):
            try:
                parse_thresholds(thresholds)
            except PlanError as exc:
                raise_problems([(path.removeprefix("thresholds"), reason)
                                for path, reason in exc.problems])
        return thresholds

    def parsed_thresholds(self) -> list[Threshold]:
        """The thresholds, parsed (they were validated with the built-in metric kinds)."""
        return parse_thresholds(self.thresholds)


# ---------------------------------------------------------------- validation errors

_MESSAGES = {"extra_forbidden": "unknown key", "missing": "required key is missing"}


def _path(loc: tuple[int | str, ...]) -> str:
    """('scenarios', 'p2', 'ramping-vus', 'stages', 0, 'target') -> 'scenarios.p2.stages[0]
    .target'; thresholds keys (not identifiers) in brackets."""
    path = ""
    for index, part in enumerate(loc):
        parent = loc[index - 1] if index else None
        if part == "[key]" or (part in EXECUTORS and index >= 2
                               and loc[index - 2] == "scenarios"):
            continue  # pydantic's marks (a dict key, the union member's tag), not fields
        if isinstance(part, int):
            path += f"[{part}]"
        elif parent == "thresholds" and index == 1:
            path += f'["{part}"]'
        else:
            path += f".{part}" if path else str(part)
    return path


def _reason(error: Any) -> str:
    if error["type"] == "union_tag_invalid":
        return f"unknown executor {error['input'].get('executor')!r}; k6 executors: " + \
            ", ".join(EXECUTORS)
    if error["type"] == "union_tag_not_found":
        return "required key executor is missing (one of " + ", ".join(EXECUTORS) + ")"
    reason = _MESSAGES.get(error["type"], error["msg"].removeprefix("Value error, "))
    if error["type"] == "literal_error":
        reason += f"; got {error['input']!r}"
    return str(reason)


def _join(prefix: str, sub: str) -> str:
    if not prefix or not sub or sub.startswith(("[", ".")):
        return prefix + sub
    return f"{prefix}.{sub}"


def validation_problems(exc: ValidationError) -> Problems:
    """pydantic's errors as (field path, reason), multi-problem errors expanded."""
    problems: Problems = []
    for error in exc.errors():
        path = _path(error["loc"])
        ctx = error.get("ctx") or {}
        if "problems" in ctx:
            problems += [(_join(path, sub) or "(options)", reason)
                         for sub, reason in ctx["problems"]]
        else:
            problems.append((path or "(options)", _reason(error)))
    return problems


def parse_options(data: Any) -> Options:
    """Validate k6-style options ({scenarios: {...}, thresholds: {...}}).

    Raises PlanError naming every bad field, e.g. ('scenarios.phase2.stages', 'Field required').
    """
    if not isinstance(data, dict):
        raise PlanError([("(options)", "options must be a mapping with scenarios/thresholds")])
    try:
        return Options.model_validate(data)
    except ValidationError as exc:
        raise PlanError(list(dict.fromkeys(validation_problems(exc)))) from exc


# ---------------------------------------------------------------- schedules

def _seconds(value: timedelta) -> float:
    return value.total_seconds()


def _stages_s(stages: list[Stage]) -> list[tuple[float, float]]:
    """(start, end) of every stage in seconds."""
    out, start = [], 0.0
    for stage in stages:
        end = start + _seconds(stage.duration)
        out.append((start, end))
        start = end
    return out


def vus_at(scenario: AnyScenario, t_s: float) -> int:
    """The VUs a VU executor plans at `t_s` (0 before its start and from its end on).

    Raises TypeError for arrival-rate executors: their VU count follows the response times.
    """
    if isinstance(scenario, ConstantVus):
        return scenario.vus if 0 <= t_s < _seconds(scenario.duration) else 0
    if not isinstance(scenario, RampingVus):
        raise TypeError(f"vus_at applies to VU executors, not {scenario.executor}")
    if t_s < 0:
        return 0
    vus = scenario.start_vus
    for stage, (start, end) in zip(scenario.stages, _stages_s(scenario.stages), strict=True):
        if t_s >= end:  # also every 0s stage: t_s >= start == end, a jump
            vus = stage.target
            continue
        # k6 adds VU n when the linear ramp reaches n and drops it when the ramp goes below
        # n: floor going up, ceil going down (1e-9 absorbs float error at exact steps).
        moved = abs(stage.target - vus) * (t_s - start) / (end - start)
        step = math.floor(moved + 1e-9)
        return vus + step if stage.target > vus else vus - step
    return 0


def _per_s(scenario: ArrivalRateScenario, rate: float) -> float:
    return rate / _seconds(scenario.time_unit)


def rate_at(scenario: AnyScenario, t_s: float) -> float:
    """Iterations per second an arrival-rate executor starts at `t_s` (0 outside its run).

    Raises TypeError for VU executors: their rate follows the response times.
    """
    if isinstance(scenario, ConstantArrivalRate):
        inside = 0 <= t_s < _seconds(scenario.duration)
        return _per_s(scenario, scenario.rate) if inside else 0.0
    if not isinstance(scenario, RampingArrivalRate):
        raise TypeError(f"rate_at applies to arrival-rate executors, not {scenario.executor}")
    if t_s < 0:
        return 0.0
    rate = float(scenario.start_rate)
    for stage, (start, end) in zip(scenario.stages, _stages_s(scenario.stages), strict=True):
        if t_s < end:
            share = (t_s - start) / (end - start)
            return _per_s(scenario, rate + (stage.target - rate) * share)
        rate = stage.target
    return 0.0


def _ramp_offsets(first: int, start_rate: float, end_rate: float, length: float,
                  done: float) -> Iterator[float]:
    """Offsets (from the stage start) of iterations first, first + 1, ... whose cumulative
    count (`done` before the stage) is reached within the stage."""
    total = done + length * (start_rate + end_rate) / 2
    slope = (end_rate - start_rate) / length
    i = first
    while i <= total * (1 + 1e-12):  # k6 includes an iteration due exactly at the stage end
        m = i - done
        # a x + slope x^2 / 2 = m, conjugate root: no cancellation when slope is near 0
        root = math.sqrt(max(start_rate * start_rate + 2 * slope * m, 0.0))
        yield min(2 * m / (start_rate + root), length)
        i += 1


def arrival_offsets(scenario: AnyScenario) -> Iterator[float]:
    """The intended start of every iteration, seconds since the scenario's start, in order.

    As k6 1.1 schedules them (measured against it): constant-arrival-rate starts one at 0 and
    one every period up to and including the duration's end (10/s for 1 s is 11 iterations),
    ramping-arrival-rate one each time the rate's integral reaches a whole number, up to and
    including the end. Lazy: a long ramp at a high rate yields millions. Raises TypeError for
    VU executors.
    """
    if isinstance(scenario, ConstantArrivalRate):
        period = _seconds(scenario.time_unit) / scenario.rate
        count = math.floor(_seconds(scenario.duration) / period + 1e-9) + 1
        return (i * period for i in range(count))
    if isinstance(scenario, RampingArrivalRate):
        return _ramping_offsets(scenario)
    raise TypeError(f"arrival_offsets applies to arrival-rate executors, not {scenario.executor}")


def _ramping_offsets(scenario: RampingArrivalRate) -> Iterator[float]:
    rate, done, next_i = _per_s(scenario, scenario.start_rate), 0.0, 1
    for stage, (start, end) in zip(scenario.stages, _stages_s(scenario.stages), strict=True):
        target = _per_s(scenario, stage.target)
        if end > start:
            for offset in _ramp_offsets(next_i, rate, target, end - start, done):
                next_i += 1
                yield start + offset
            done += (end - start) * (rate + target) / 2
        rate = target


def duration_s(scenario: AnyScenario, *, graceful: bool = True) -> float:
    """How long the scenario can run, in seconds from its own start (start_time excluded).

    As k6 counts its maximum duration: the time iterations start (duration, or the sum of the
    stages) plus graceful_stop, in which running iterations may finish before they are cut.
    ramping-vus's graceful_ramp_down lies inside the stages and adds nothing. `graceful=False`:
    the time iterations start only.
    """
    planned = _seconds(scenario.total_duration)
    return planned + (_seconds(scenario.graceful_stop) if graceful else 0.0)


def run_duration_s(options: Options, *, graceful: bool = True) -> float:
    """How long a run of all of `options`' scenarios can last: the latest start_time +
    duration_s over the scenarios."""
    return max(_seconds(s.start_time) + duration_s(s, graceful=graceful)
               for s in options.scenarios.values())


def _scale(value: timedelta, factor: float) -> timedelta:
    return timedelta(seconds=value.total_seconds() * factor)


def scaled(scenario: AnyScenario, factor: float) -> AnyScenario:
    """The scenario with its schedule (duration, stages, start_time) times `factor`; VU
    counts, rates, time_unit, graceful_stop and graceful_ramp_down unchanged.

    The graceful periods are not scaled because an iteration is not: think time keeps its real
    length, so a 3-second journey still needs its 30 s gracefulStop to finish, as under k6
    (scaling it cut the iterations k6 lets finish, and the counts differed). Raises ValueError
    unless factor > 0.
    """
    if not factor > 0:
        raise ValueError(f"scale factor must be above 0, got {factor}")
    update: dict[str, Any] = {
        name: _scale(getattr(scenario, name), factor)
        for name in ("start_time", "duration") if name in type(scenario).model_fields
    }
    if isinstance(scenario, RampingVus | RampingArrivalRate):
        update["stages"] = [Stage(duration=_scale(s.duration, factor), target=s.target)
                            for s in scenario.stages]
    return scenario.model_copy(update=update)
