"""Trigger decisions: conditions -> verdicts, verdicts -> quorum, reports -> alerts (pure).

Decide here, act in the flow. Everything takes plain data (the plan's `Condition` and
`Transition`, `DayValue`s from policy.daily, the previous `TriggerState`) and returns plain,
JSON-ready data; no clock, no I/O.

Verdicts are three-valued, as Argo Rollouts keeps Successful, Failed and Inconclusive apart:
"unknown" is never "met". Rules:

- A rule asks for the last N periods (complete days, or 7-day weeks ending at the last complete
  day) to each meet `value <comparison> threshold`. If any of them is known to fail, the
  verdict is not_met (a known failure beats an unknown); otherwise, if any lacks data, or the
  history is shorter than N periods, it is unknown; otherwise met.
- The streak counts met periods backwards from the last complete one, over all the history
  given; a period without data ends it. A gap before the last N periods does not matter.
- consecutive_days N, peak_week (= the last 7 days) and instant (= the last day) judge days;
  consecutive_weeks N and weekly (= the last week) judge weeks, whose value is `aggregate` of
  their days ("last": the SQL already returns a trailing-week value per day, so only the week's
  last day is needed; other aggregates need all 7 days).
- A quorum is never reached through unknowns; `due_possible` says whether they could reach it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from phasegate.policy.daily import DayValue
from phasegate.policy.plan import (
    Condition,
    ConsecutiveDays,
    ConsecutiveWeeks,
    Instant,
    ManualSource,
    PeakWeek,
    PromQLSource,
    SQLSource,
    Transition,
    Weekly,
)

__all__ = [
    "Alert",
    "ConditionResult",
    "GroupResult",
    "Period",
    "QuorumResult",
    "TriggerReport",
    "TriggerState",
    "Verdict",
    "alert_decision",
    "compare",
    "evaluate_condition",
    "evaluate_transition",
    "report_to_json",
    "should_create_transition",
    "unknown_result",
]

Verdict = Literal["met", "not_met", "unknown"]
StreakUnit = Literal["days", "weeks"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def compare(value: float, comparison: str, threshold: float) -> bool:
    """`value <comparison> threshold`, strictly as written: 85 is not > 85."""
    return _OPS[comparison](value, threshold)


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class Period:
    """A judged day or week. `met` is None when the period has no usable value."""

    label: str              # "day 2025-11-19" or "week ending 2025-11-19"
    start: date
    end: date               # inclusive; equal to start for a day
    value: float | None
    met: bool | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; days carry `day`, weeks `start` and `end`."""
        when = ({"day": self.start.isoformat()} if self.start == self.end
                else {"start": self.start.isoformat(), "end": self.end.isoformat()})
        return {**when, "value": self.value, "met": self.met, "reason": self.reason}


@dataclass(frozen=True)
class ConditionResult:
    """One condition's verdict with its evidence: values, streak and the query behind them."""

    name: str
    text: str
    category: str
    source: str             # promql | sql | manual
    query: str              # the PromQL or SQL text, or the manual prompt
    comparison: str
    threshold: float
    unit: str
    rule: str
    verdict: Verdict
    streak: int
    required_streak: int
    streak_unit: StreakUnit
    latest_value: float | None
    reason: str
    daily: tuple[Period, ...] = ()
    weeks: tuple[Period, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the issue's keys first, then the evidence)."""
        return {
            "name": self.name, "category": self.category, "source": self.source,
            "verdict": self.verdict, "streak": self.streak,
            "required_streak": self.required_streak, "latest_value": self.latest_value,
            "threshold": self.threshold, "comparison": self.comparison, "unit": self.unit,
            "text": self.text, "rule": self.rule, "streak_unit": self.streak_unit,
            "reason": self.reason, "query": self.query,
            "daily": [p.to_dict() for p in self.daily],
            "weeks": [p.to_dict() for p in self.weeks],
        }


# ---------------------------------------------------------------- formatting

def _number(value: float) -> str:
    if value != 0 and abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _amount(value: float, unit: str) -> str:
    return f"{_number(value)} {unit}"


def _claim(value: float, cond: Condition, met: bool) -> str:
    """'4.84 % not > 5 %' or '87.7 % > 85 %'."""
    op = cond.comparison if met else f"not {cond.comparison}"
    return f"{_amount(value, cond.unit)} {op} {_amount(cond.threshold, cond.unit)}"


# ---------------------------------------------------------------- periods

def _clean_value(day: DayValue) -> tuple[float | None, str | None]:
    """NaN and infinities are missing data, not values."""
    if day.value is None:
        return None, day.reason or "no data"
    if not math.isfinite(day.value):
        return None, f"no value ({day.value})"
    return float(day.value), None


def _day_periods(days: Sequence[DayValue], cond: Condition) -> list[Period]:
    out = []
    for index, day in enumerate(days):
        if index and day.day - days[index - 1].day != timedelta(days=1):
            raise ValueError(f"days must be consecutive and ascending: {days[index - 1].day} "
                             f"then {day.day}")
        value, reason = _clean_value(day)
        met = None if value is None else compare(value, cond.comparison, cond.threshold)
        out.append(Period(f"day {day.day.isoformat()}", day.day, day.day, value, met, reason))
    return out


_WEEK_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "last": lambda v: v[-1], "avg": lambda v: math.fsum(v) / len(v),
    "sum": math.fsum, "max": max, "min": min,
}


def _week_period(block: Sequence[Period], aggregate: str, cond: Condition) -> Period:
    """One 7-day block as a week; "last" needs only its last day, the others all seven."""
    label = f"week ending {block[-1].end.isoformat()}"
    needed = block[-1:] if aggregate == "last" else block
    missing = [p for p in needed if p.value is None]
    if missing:
        reason = "; ".join(f"{p.label}: {p.reason}" for p in missing)
        return Period(label, block[0].start, block[-1].end, None, None, reason)
    value = _WEEK_AGGREGATES[aggregate]([p.value for p in needed if p.value is not None])
    met = compare(value, cond.comparison, cond.threshold)
    return Period(label, block[0].start, block[-1].end, value, met)


def _week_periods(days: Sequence[Period], aggregate: str, cond: Condition) -> list[Period]:
    """Whole 7-day blocks ending at the last complete day, oldest first."""
    ends = range(len(days), 6, -7)
    return [_week_period(days[end - 7:end], aggregate, cond) for end in reversed(ends)]


# ---------------------------------------------------------------- judging

def _streak(periods: Sequence[Period]) -> int:
    count = 0
    for period in reversed(periods):
        if period.met is not True:
            break
        count += 1
    return count


def _verdict(periods: Sequence[Period], required: int) -> Verdict:
    window = periods[-required:]
    if any(p.met is False for p in window):
        return "not_met"
    if len(window) < required or any(p.met is None for p in window):
        return "unknown"
    return "met"


def _latest(unit: StreakUnit) -> str:
    return "latest week" if unit == "weeks" else "latest"


def _met_reason(periods: Sequence[Period], required: int, unit: StreakUnit, cond: Condition) -> str:
    latest = periods[-1]
    assert latest.value is not None  # a met period has a value
    claim = _claim(latest.value, cond, True)
    if required == 1:
        return f"{_latest(unit)} {claim}"
    return f"{required} of {required} {unit} met ({_latest(unit)} {claim})"


def _not_met_reason(periods: Sequence[Period], required: int, unit: StreakUnit,
                    cond: Condition) -> str:
    failed = [p for p in periods[-required:] if p.met is False][-1]
    assert failed.value is not None  # a failed period has a value
    where = _latest(unit) if failed is periods[-1] else f"{failed.label}:"
    text = f"{where} {_claim(failed.value, cond, False)}"
    return text if required == 1 else f"{text}; streak {_streak(periods)} of {required} {unit}"


def _unknown_reason(periods: Sequence[Period], required: int, unit: str) -> str:
    if len(periods) < required:
        return f"only {len(periods)} complete {unit} of history, {required} needed: unknown"
    missing = [p for p in periods[-required:] if p.met is None]
    if len(missing) == 1:
        return f"{missing[0].label} has no data ({missing[0].reason}): unknown"
    details = "; ".join(f"{p.label}: {p.reason}" for p in missing)
    return f"{len(missing)} of the last {required} {unit} have no data ({details}): unknown"


def _reason(verdict: Verdict, periods: Sequence[Period], required: int, unit: StreakUnit,
            cond: Condition) -> str:
    if verdict == "met":
        return _met_reason(periods, required, unit, cond)
    if verdict == "not_met":
        return _not_met_reason(periods, required, unit, cond)
    return _unknown_reason(periods, required, unit)


def _rule(cond: Condition) -> tuple[StreakUnit, int, str | None]:
    """(what is judged, how many of them, the week aggregate) for the persistence rule."""
    rule = cond.persistence
    if isinstance(rule, ConsecutiveDays):
        return "days", rule.count, None
    if isinstance(rule, PeakWeek):
        return "days", 7, None      # the plan: every one of the last 7 days, at peak
    if isinstance(rule, ConsecutiveWeeks):
        return "weeks", rule.count, rule.aggregate
    if isinstance(rule, Weekly):
        return "weeks", 1, rule.aggregate
    assert isinstance(rule, Instant)
    return "days", 1, None


def _query(cond: Condition) -> str:
    source = cond.source
    if isinstance(source, PromQLSource | SQLSource):
        return source.query
    return source.prompt


def _result(cond: Condition, **fields: Any) -> ConditionResult:
    """A ConditionResult with the condition's own fields filled in."""
    return ConditionResult(
        name=cond.id, text=cond.text, category=cond.group, source=cond.source.kind,
        query=_query(cond), comparison=cond.comparison, threshold=cond.threshold,
        unit=cond.unit, rule=cond.persistence.rule, **fields)


def _manual(cond: Condition, value: float | None) -> ConditionResult:
    """A person's entry decides; no entry (or not a number) is unknown."""
    if value is None or not math.isfinite(value):
        what = "no value entered" if value is None else f"entered value {value} is not a number"
        return _result(cond, verdict="unknown", streak=0, required_streak=1,
                       streak_unit="days", latest_value=None,
                       reason=f"{what}: unknown ({_query(cond)})")
    met = compare(value, cond.comparison, cond.threshold)
    return _result(cond, verdict="met" if met else "not_met", streak=int(met),
                   required_streak=1, streak_unit="days", latest_value=float(value),
                   reason=f"entered {_claim(value, cond, met)}")


def evaluate_condition(cond: Condition, days: Sequence[DayValue], *,
                       manual_value: float | None = None) -> ConditionResult:
    """Judge one condition on its daily values (consecutive, oldest first, ending with the last
    complete day) under its persistence rule; see the module docstring for the rules.

    Manual conditions ignore `days` and use `manual_value` (None: unknown).
    Raises ValueError if the days are not consecutive, or a manual value is given for a
    measured condition.
    """
    if isinstance(cond.source, ManualSource):
        return _manual(cond, manual_value)
    if manual_value is not None:
        raise ValueError(f"{cond.id} is measured ({cond.source.kind}), not entered by hand")
    unit, required, aggregate = _rule(cond)
    daily = _day_periods(days, cond)
    weeks = _week_periods(daily, aggregate, cond) if aggregate is not None else []
    periods = weeks if unit == "weeks" else daily
    verdict = _verdict(periods, required)
    return _result(cond, verdict=verdict, streak=_streak(periods), required_streak=required,
                   streak_unit=unit, latest_value=periods[-1].value if periods else None,
                   reason=_reason(verdict, periods, required, unit, cond),
                   daily=tuple(daily), weeks=tuple(weeks))


def unknown_result(cond: Condition, reason: str) -> ConditionResult:
    """An unknown verdict for a condition whose data could not be read (a failed query):
    the flow reports it instead of raising, so one broken source never hides the others."""
    unit, required, _ = _rule(cond)
    return _result(cond, verdict="unknown", streak=0, required_streak=required,
                   streak_unit=unit, latest_value=None, reason=f"{reason}: unknown")


# ---------------------------------------------------------------- quorum

@dataclass(frozen=True)
class GroupResult:
    """A condition group: met if any bullet is met, else unknown if any is unknown."""

    name: str
    verdict: Verdict
    met: int
    not_met: int
    unknown: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "verdict": self.verdict, "met": self.met,
                "not_met": self.not_met, "unknown": self.unknown}


@dataclass(frozen=True)
class QuorumResult:
    """The quorum count: what is counted (bullets or groups) and how many are met/unknown."""

    min_met: int
    counts: Literal["bullets", "groups"]
    met_count: int
    not_met_count: int
    unknown_count: int
    total: int
    groups: tuple[GroupResult, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"min_met": self.min_met, "counts": self.counts, "met_count": self.met_count,
                "not_met_count": self.not_met_count, "unknown_count": self.unknown_count,
                "total": self.total, "groups": [g.to_dict() for g in self.groups]}


@dataclass(frozen=True)
class TriggerReport:
    """Every condition of one transition, the quorum, and whether the transition is due."""

    from_phase: int
    to_phase: int
    conditions: tuple[ConditionResult, ...]
    quorum: QuorumResult
    due: bool
    due_possible: bool
    summary: str

    @property
    def key(self) -> str:
        """'1->2': identifies the transition in stored state and alert fingerprints."""
        return f"{self.from_phase}->{self.to_phase}"

    def names(self, verdict: Verdict) -> list[str]:
        """Names of the conditions with this verdict, in plan order."""
        return [c.name for c in self.conditions if c.verdict == verdict]


def _count(verdicts: Sequence[Verdict]) -> tuple[int, int, int]:
    return (verdicts.count("met"), verdicts.count("not_met"), verdicts.count("unknown"))


def _group(name: str, results: Sequence[ConditionResult]) -> GroupResult:
    met, not_met, unknown = _count([r.verdict for r in results])
    verdict: Verdict = "met" if met else "unknown" if unknown else "not_met"
    return GroupResult(name, verdict, met, not_met, unknown)


def _ordered(transition: Transition, results: Sequence[ConditionResult]
             ) -> list[ConditionResult]:
    """The results in plan order; exactly one per condition of the transition."""
    by_name = {r.name: r for r in results}
    wanted = [c.id for c in transition.conditions]
    problems = []
    if len(by_name) != len(results):
        problems.append("a condition has more than one result")
    if missing := [n for n in wanted if n not in by_name]:
        problems.append(f"no result for {', '.join(missing)}")
    if extra := sorted(set(by_name) - set(wanted)):
        problems.append(f"results for conditions not in the transition: {', '.join(extra)}")
    if problems:
        raise ValueError("; ".join(problems))
    return [by_name[n] for n in wanted]


def _summary(transition: Transition, quorum: QuorumResult, due: bool, possible: bool) -> str:
    what = "conditions" if quorum.counts == "bullets" else "condition groups"
    text = (f"phase {transition.from_phase} -> {transition.to_phase}: {quorum.met_count} of "
            f"{quorum.total} {what} met ({quorum.min_met} needed), "
            f"{quorum.unknown_count} unknown: ")
    if due:
        return text + "due"
    return text + ("not due; the unknown could still make it due" if possible else "not due")


def evaluate_transition(transition: Transition,
                        results: Sequence[ConditionResult]) -> TriggerReport:
    """Apply the transition's quorum to its condition results.

    Counts bullets, or groups (a group is met when any of its bullets is met). Due only on met
    ones; `due_possible` is True when not due but the unknown ones could still make it due.
    Raises ValueError unless there is exactly one result per condition of the transition.
    """
    ordered = _ordered(transition, results)
    groups = tuple(_group(g, [r for r in ordered if r.category == g])
                   for g in transition.groups)
    counted = [r.verdict for r in ordered] if transition.quorum.counts == "bullets" else [
        g.verdict for g in groups]
    met, not_met, unknown = _count(counted)
    quorum = QuorumResult(transition.quorum.min_met, transition.quorum.counts, met, not_met,
                          unknown, len(counted), groups)
    due = met >= quorum.min_met
    possible = not due and met + unknown >= quorum.min_met
    return TriggerReport(transition.from_phase, transition.to_phase, tuple(ordered), quorum,
                         due, possible, _summary(transition, quorum, due, possible))


def report_to_json(report: TriggerReport) -> dict[str, Any]:
    """The trigger JSON: `conditions` (name, category, source, verdict, streak,
    required_streak, latest_value, threshold and the evidence), `quorum`, `due`, and more."""
    return {
        "from_phase": report.from_phase, "to_phase": report.to_phase,
        "conditions": [c.to_dict() for c in report.conditions],
        "quorum": report.quorum.to_dict(), "due": report.due,
        "due_possible": report.due_possible, "summary": report.summary,
    }


# ---------------------------------------------------------------- alerts

AlertKind = Literal["due", "all_clear", "data_gap", "data_restored"]


@dataclass(frozen=True)
class Alert:
    """One notification. `fingerprint` identifies the change it announces."""

    kind: AlertKind
    severity: Literal["warning", "info"]
    title: str
    text: str
    fingerprint: str
    evidence: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "severity": self.severity, "title": self.title,
                "text": self.text, "fingerprint": self.fingerprint,
                "evidence": list(self.evidence)}


@dataclass(frozen=True)
class TriggerState:
    """What the flow stores between scheduled runs so that alerts fire only on a change."""

    transition: str                         # "1->2"; state of another transition is ignored
    due: bool = False
    unknown: tuple[str, ...] = ()           # conditions without data at the last run
    fingerprints: tuple[str, ...] = ()      # of the last alerts sent

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"transition": self.transition, "due": self.due, "unknown": list(self.unknown),
                "fingerprints": list(self.fingerprints)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TriggerState:
        """Read what `to_dict` wrote. Raises KeyError/TypeError on a malformed document."""
        return cls(str(data["transition"]), bool(data["due"]),
                   tuple(str(n) for n in data["unknown"]),
                   tuple(str(f) for f in data.get("fingerprints", ())))


def _evidence(result: ConditionResult) -> dict[str, Any]:
    return {"name": result.name, "text": result.text, "verdict": result.verdict,
            "latest_value": result.latest_value, "unit": result.unit,
            "comparison": result.comparison, "threshold": result.threshold,
            "streak": result.streak, "required_streak": result.required_streak,
            "reason": result.reason}


def _lines(results: Sequence[ConditionResult]) -> str:
    return "\n".join(f"- {r.name}: {r.reason}" for r in results)


def _due_alert(report: TriggerReport) -> Alert:
    met = [c for c in report.conditions if c.verdict == "met"]
    title = f"phase {report.from_phase} -> {report.to_phase} is due"
    return Alert("due", "warning", title, f"{report.summary}\n{_lines(met)}",
                 f"due:{report.key}", tuple(_evidence(c) for c in met))


def _all_clear(report: TriggerReport) -> Alert:
    title = f"phase {report.from_phase} -> {report.to_phase} is no longer due"
    unknown = [c for c in report.conditions if c.verdict == "unknown"]
    text = report.summary + (f"\nunknown:\n{_lines(unknown)}" if unknown else "")
    return Alert("all_clear", "info", title, text, f"all_clear:{report.key}",
                 tuple(_evidence(c) for c in report.conditions if c.verdict == "met"))


def _gap_alert(report: TriggerReport, names: list[str], restored: bool) -> Alert:
    results = [c for c in report.conditions if c.name in names]
    if restored:
        title = f"data restored: {', '.join(names)}"
        kind: AlertKind = "data_restored"
    elif len(results) == 1:
        title = f"data gap: {results[0].name} ({results[0].reason})"
        kind = "data_gap"
    else:
        title, kind = f"data gap: {', '.join(names)}", "data_gap"
    return Alert(kind, "info" if restored else "warning", title,
                 f"phase {report.key}\n{_lines(results)}",
                 f"{kind}:{report.key}:{','.join(names)}", tuple(_evidence(c) for c in results))


def alert_decision(previous: TriggerState | None,
                   report: TriggerReport) -> tuple[list[Alert], TriggerState]:
    """Alerts for what changed since the previous run, and the state to store for the next.

    not due -> due: "phase X -> Y is due" with the met conditions; due -> not due: an all-clear
    (info); a condition becoming unknown: "data gap" (warning) once, however long it lasts; its
    data coming back: "data restored" (info). Nothing else alerts. Without a previous state
    (first run, or a state stored for another transition) everything counts as new.
    """
    if previous is None or previous.transition != report.key:
        previous = TriggerState(report.key)
    unknown = report.names("unknown")
    alerts = []
    if report.due != previous.due:
        alerts.append(_due_alert(report) if report.due else _all_clear(report))
    if gaps := [n for n in unknown if n not in previous.unknown]:
        alerts.append(_gap_alert(report, gaps, restored=False))
    present = {c.name for c in report.conditions}
    if restored := [n for n in previous.unknown if n not in unknown and n in present]:
        alerts.append(_gap_alert(report, restored, restored=True))
    fingerprints = tuple(a.fingerprint for a in alerts) or previous.fingerprints
    return alerts, TriggerState(report.key, report.due, tuple(unknown), fingerprints)


def should_create_transition(report: TriggerReport, open_transition_exists: bool,
                             auto_create: bool) -> bool:
    """Whether to start a `phase-transition` run: due, allowed by the plan/deployment, and no
    run for a transition already open (it waits for approvals; a second would duplicate it)."""
    return report.due and auto_create and not open_transition_exists
