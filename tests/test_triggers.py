"""policy.triggers: verdicts, streaks, weekly rules, quorum, alerts and the JSON shape. Pure."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from phasegate.lab.world import TZ, World
from phasegate.policy.daily import DayValue, daily_values
from phasegate.policy.plan import Condition, Transition, load_plan
from phasegate.policy.triggers import (
    ConditionResult,
    TriggerReport,
    TriggerState,
    Verdict,
    alert_decision,
    evaluate_condition,
    evaluate_transition,
    report_to_json,
    should_create_transition,
    unknown_result,
)

PLAN = load_plan()
T12 = PLAN.transition(1, 2)
LAST = date(2026, 11, 20)           # the last complete day in the synthetic series
SQL = "SELECT day, value FROM t WHERE day >= %(start)s AND day < %(end)s"
M, F, X = 20.0, 1.0, None           # met, failing (against "> 10") and missing day values


def cond(persistence: dict[str, Any], comparison: str = ">", threshold: float = 10,
         source: dict[str, Any] | None = None, unit: str = "%", cid: str = "c",
         group: str = "users") -> Condition:
    return Condition.model_validate({
        "id": cid, "text": f"condition {cid}", "group": group,
        "source": source or {"kind": "sql", "query": SQL}, "comparison": comparison,
        "threshold": threshold, "unit": unit, "persistence": persistence})


def days(*values: float | None, last: date = LAST) -> list[DayValue]:
    """Consecutive days ending at `last`, oldest first; None is a day without data."""
    first = last - timedelta(days=len(values) - 1)
    return [DayValue(first + timedelta(days=i), v, None if v is not None else "no row")
            for i, v in enumerate(values)]


def consecutive(n: int) -> dict[str, Any]:
    return {"rule": "consecutive_days", "count": n}


# ---------------------------------------------------------------- consecutive days

@pytest.mark.parametrize(("values", "count", "verdict", "streak"), [
    ((M,) * 7, 7, "met", 7),
    ((M,) * 10, 3, "met", 10),                    # the streak runs past the requirement
    ((X, M, M, M), 3, "met", 3),                  # a gap before the window is irrelevant
    ((F, M, M, M), 3, "met", 3),                  # so is an older failure
    ((M, X, M, M), 3, "unknown", 2),              # a gap inside the window
    ((M, M, M, X), 3, "unknown", 0),              # the last day has no data
    ((M, F, X, M), 3, "not_met", 1),              # a known failure beats an unknown
    ((X, X, F), 3, "not_met", 0),
    ((M, M, F), 3, "not_met", 0),
    ((M, F, M), 3, "not_met", 1),
    ((M, M), 3, "unknown", 2),                    # fewer days of history than required
    ((F, M), 3, "not_met", 1),                    # ... but a known failure decides
    ((), 3, "unknown", 0),
    ((M, math.nan, M), 3, "unknown", 1),          # NaN is missing, never a value
    ((M, math.inf, M), 3, "unknown", 1),
    ((M, M, -math.inf), 1, "unknown", 0),
])
def test_consecutive_days(values: tuple[float | None, ...], count: int, verdict: Verdict,
                          streak: int) -> None:
    result = evaluate_condition(cond(consecutive(count)), days(*values))
    assert (result.verdict, result.streak, result.required_streak) == (verdict, streak, count)
    assert result.streak_unit == "days"
    assert len(result.daily) == len(values)


@pytest.mark.parametrize(("comparison", "value", "met"), [
    (">", 10.0, False), (">", 10.000001, True), (">", 9.99, False),
    (">=", 10.0, True), (">=", 9.999999, False), (">=", 11.0, True),
    ("<", 10.0, False), ("<", 9.999999, True), ("<", 11.0, False),
    ("<=", 10.0, True), ("<=", 10.000001, False), ("<=", 9.0, True),
])
def test_exactly_at_threshold_follows_the_comparison(comparison: str, value: float,
                                                     met: bool) -> None:
    result = evaluate_condition(cond(consecutive(2), comparison), days(value, value))
    assert result.verdict == ("met" if met else "not_met")
    assert [d.met for d in result.daily] == [met, met]


def test_reasons_are_sentences() -> None:
    c = cond(consecutive(7), threshold=1000, comparison=">=", unit="users")
    met = evaluate_condition(c, days(*[1000.0 + i for i in range(7)]))
    assert met.reason == "7 of 7 days met (latest 1,006 users >= 1,000 users)"
    gap = evaluate_condition(c, days(*[1000.0] * 6, None))
    assert gap.reason == "day 2026-11-20 has no data (no row): unknown"
    gaps = evaluate_condition(c, days(None, *[1000.0] * 5, None))
    assert gaps.reason.startswith("2 of the last 7 days have no data (day 2026-11-14: no row")
    short = evaluate_condition(c, days(1000.0, 1000.0))
    assert short.reason == "only 2 complete days of history, 7 needed: unknown"
    old = evaluate_condition(c, days(*[1000.0] * 5, 990.0, 1001.0))
    assert old.reason == "day 2026-11-19: 990 users not >= 1,000 users; streak 1 of 7 days"
    instant = cond({"rule": "instant"}, threshold=5)
    assert evaluate_condition(instant, days(4.8387)).reason == "latest 4.84 % not > 5 %"
    assert evaluate_condition(instant, days(0.004)).reason == "latest 0.004 % not > 5 %"


def test_latest_value_and_daily_evidence() -> None:
    result = evaluate_condition(cond(consecutive(2)), days(M, F, X))
    assert result.latest_value is None
    assert [(p.start, p.value, p.met, p.reason) for p in result.daily] == [
        (LAST - timedelta(days=2), M, True, None), (LAST - timedelta(days=1), F, False, None),
        (LAST, None, None, "no row")]
    assert evaluate_condition(cond(consecutive(2)), days(F, M)).latest_value == M


def test_days_must_be_consecutive() -> None:
    broken = [DayValue(LAST - timedelta(days=2), 1.0), DayValue(LAST, 1.0)]
    with pytest.raises(ValueError, match="consecutive"):
        evaluate_condition(cond(consecutive(2)), broken)
    with pytest.raises(ValueError, match="consecutive"):
        evaluate_condition(cond(consecutive(2)), list(reversed(days(M, M))))


# ---------------------------------------------------------------- peak_week and instant

PEAK_SOURCE = {"kind": "promql", "query": "avg(DCGM_FI_DEV_GPU_UTIL)",
               "daily_aggregate": "avg", "window": "peak"}


@pytest.mark.parametrize(("values", "verdict", "streak"), [
    ((M,) * 7, "met", 7),
    ((F,) + (M,) * 7, "met", 7),
    ((M,) * 6, "unknown", 6),
    ((M,) * 3 + (X,) + (M,) * 3, "unknown", 3),
    ((M,) * 3 + (F,) + (M,) * 3, "not_met", 3),
    ((X,) + (M,) * 5 + (F,), "not_met", 0),
])
def test_peak_week_is_every_one_of_the_last_7_days(values: tuple[float | None, ...],
                                                   verdict: Verdict, streak: int) -> None:
    result = evaluate_condition(cond({"rule": "peak_week"}, source=PEAK_SOURCE), days(*values))
    assert (result.verdict, result.streak, result.required_streak) == (verdict, streak, 7)
    assert result.source == "promql" and result.query == "avg(DCGM_FI_DEV_GPU_UTIL)"


@pytest.mark.parametrize(("values", "verdict", "streak", "latest"), [
    ((M,), "met", 1, M),
    ((M, M, M), "met", 3, M),
    ((F, X, M), "met", 1, M),           # only the latest complete day counts
    ((M, M, F), "not_met", 0, F),
    ((F, M, X), "unknown", 0, None),    # an older failure does not decide an instant rule
    ((), "unknown", 0, None),
])
def test_instant(values: tuple[float | None, ...], verdict: Verdict, streak: int,
                 latest: float | None) -> None:
    result = evaluate_condition(cond({"rule": "instant"}), days(*values))
    assert (result.verdict, result.streak, result.latest_value) == (verdict, streak, latest)
    assert result.required_streak == 1


# ---------------------------------------------------------------- weekly rules

def weeks(*week_values: float | None, filler: float | None = 0.0) -> list[DayValue]:
    """7 days per week; with aggregate "last" only the week's last day matters."""
    values: list[float | None] = []
    for v in week_values:
        values += [filler] * 6 + [v]
    return days(*values)


@pytest.mark.parametrize(("series", "count", "verdict", "streak", "latest"), [
    (weeks(M, M, M), 3, "met", 3, M),
    (weeks(F, M, M, M), 3, "met", 3, M),
    (weeks(X, M, M, M), 3, "met", 3, M),             # a gap before the 3 weeks: irrelevant
    (weeks(M, F, M), 3, "not_met", 1, M),
    (weeks(M, X, M), 3, "unknown", 1, M),            # a week whose last day is missing
    (weeks(M, X, F), 3, "not_met", 0, F),
    (weeks(M, M, M, filler=None), 3, "met", 3, M),   # "last" needs only each week's last day
    (weeks(M, M), 3, "unknown", 2, M),               # two weeks of history
    (days(*[M] * 20), 3, "unknown", 2, M),           # 20 days: the oldest partial week is out
    (days(F, *[M] * 20), 3, "met", 3, M),            # 21 days: exactly three weeks
])
def test_consecutive_weeks_last(series: list[DayValue], count: int, verdict: Verdict,
                                streak: int, latest: float | None) -> None:
    c = cond({"rule": "consecutive_weeks", "count": count, "aggregate": "last"}, ">=", 15)
    result = evaluate_condition(c, series)
    assert (result.verdict, result.streak, result.latest_value) == (verdict, streak, latest)
    assert (result.required_streak, result.streak_unit) == (count, "weeks")
    assert all(w.end - w.start == timedelta(days=6) for w in result.weeks)
    assert result.weeks[-1].end == LAST


def test_week_blocks_end_at_the_last_complete_day() -> None:
    c = cond({"rule": "consecutive_weeks", "count": 2, "aggregate": "last"})
    result = evaluate_condition(c, days(*range(1, 16)))      # 15 days: 1 leftover + 2 weeks
    assert [(w.start, w.end, w.value) for w in result.weeks] == [
        (LAST - timedelta(days=13), LAST - timedelta(days=7), 8.0),
        (LAST - timedelta(days=6), LAST, 15.0)]
    assert result.weeks[-1].label == "week ending 2026-11-20"


@pytest.mark.parametrize(("aggregate", "values", "verdict", "value"), [
    ("avg", [10.0] * 6 + [17.0], "met", 11.0),
    ("avg", [10.0] * 7, "not_met", 10.0),
    ("sum", [2.0] * 7, "met", 14.0),
    ("max", [1.0] * 6 + [11.0], "met", 11.0),
    ("min", [11.0] * 6 + [1.0], "not_met", 1.0),
    ("last", [1.0] * 6 + [11.0], "met", 11.0),
    ("avg", [20.0] * 6 + [None], "unknown", None),   # every day is needed for an average
    ("max", [None] + [20.0] * 6, "unknown", None),
    ("last", [None] * 6 + [11.0], "met", 11.0),
    ("last", [11.0] * 6 + [math.nan], "unknown", None),
])
def test_weekly(aggregate: str, values: list[float | None], verdict: Verdict,
                value: float | None) -> None:
    result = evaluate_condition(cond({"rule": "weekly", "aggregate": aggregate}), days(*values))
    assert (result.verdict, result.latest_value, result.required_streak) == (verdict, value, 1)
    assert result.streak == int(verdict == "met")


def test_weekly_reasons() -> None:
    c = cond({"rule": "consecutive_weeks", "count": 3, "aggregate": "last"}, ">=", 15)
    assert evaluate_condition(c, weeks(16.0, 15.4, 15.0)).reason == (
        "3 of 3 weeks met (latest week 15 % >= 15 %)")
    assert evaluate_condition(c, weeks(15.0, 15.4, 13.9)).reason == (
        "latest week 13.9 % not >= 15 %; streak 0 of 3 weeks")
    assert evaluate_condition(c, weeks(15.0, X, 16.0)).reason == (
        "week ending 2026-11-13 has no data (day 2026-11-13: no row): unknown")
    avg = cond({"rule": "weekly", "aggregate": "avg"})
    assert evaluate_condition(avg, days(*[M] * 7)).reason == "latest week 20 % > 10 %"


# ---------------------------------------------------------------- manual and failed sources

MANUAL = {"kind": "manual", "prompt": "Market share rank?"}


@pytest.mark.parametrize(("value", "verdict", "latest"), [
    (3.0, "met", 3.0), (5.0, "met", 5.0), (6.0, "not_met", 6.0),
    (None, "unknown", None), (math.nan, "unknown", None),
])
def test_manual_conditions(value: float | None, verdict: Verdict,
                           latest: float | None) -> None:
    c = cond({"rule": "instant"}, "<=", 5, source=MANUAL, unit="rank")
    result = evaluate_condition(c, [], manual_value=value)
    assert (result.verdict, result.latest_value, result.source) == (verdict, latest, "manual")
    assert result.query == "Market share rank?" and result.daily == ()
    if value is None:
        assert result.reason == "no value entered: unknown (Market share rank?)"


def test_manual_value_for_a_measured_condition_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="measured"):
        evaluate_condition(cond({"rule": "instant"}), days(M), manual_value=1.0)


def test_unknown_result_for_a_failed_query() -> None:
    result = unknown_result(cond(consecutive(3)), "query failed: connection refused")
    assert (result.verdict, result.streak, result.required_streak) == ("unknown", 0, 3)
    assert result.reason == "query failed: connection refused: unknown"


# ---------------------------------------------------------------- quorum

def result(name: str, verdict: Verdict, group: str = "users") -> ConditionResult:
    base = unknown_result(cond(consecutive(1), cid=name, group=group), "x")
    return replace(base, verdict=verdict)


def transition(groups: list[str], min_met: int, counts: str = "bullets") -> Transition:
    conditions = [cond(consecutive(1), cid=f"c{i}", group=g) for i, g in enumerate(groups)]
    return Transition.model_validate({
        "from_phase": 1, "to_phase": 2, "quorum": {"min_met": min_met, "counts": counts},
        "conditions": conditions, "watch": T12.watch})


def results(t: Transition, verdicts: str) -> list[ConditionResult]:
    """'m', 'n', 'u' per condition: met, not met, unknown."""
    names = {"m": "met", "n": "not_met", "u": "unknown"}
    return [result(c.id, names[v], c.group)  # type: ignore[arg-type]
            for c, v in zip(t.conditions, verdicts, strict=True)]


BULLETS = ["users"] * 3 + ["performance"] * 3


@pytest.mark.parametrize(("verdicts", "min_met", "due", "possible", "counts"), [
    ("mmmnnn", 3, True, False, (3, 3, 0)),
    ("mmmmmm", 3, True, False, (6, 0, 0)),
    ("mmnnnn", 3, False, False, (2, 4, 0)),
    ("mmunnn", 3, False, True, (2, 3, 1)),        # one unknown could still make it due
    ("uuuuuu", 3, False, True, (0, 0, 6)),        # never due on unknowns
    ("mmmuuu", 3, True, False, (3, 0, 3)),
    ("muunnn", 4, False, False, (1, 3, 2)),       # even both unknowns would not suffice
])
def test_quorum_by_bullets(verdicts: str, min_met: int, due: bool, possible: bool,
                           counts: tuple[int, int, int]) -> None:
    t = transition(BULLETS, min_met)
    report = evaluate_transition(t, results(t, verdicts))
    q = report.quorum
    assert (report.due, report.due_possible) == (due, possible)
    assert (q.met_count, q.not_met_count, q.unknown_count, q.total) == (*counts, 6)


GROUPS = ["users", "users", "performance", "performance", "business", "feedback"]


@pytest.mark.parametrize(("verdicts", "min_met", "group_verdicts", "due", "possible"), [
    # a group is met when any bullet in it is met
    ("mnmnmn", 3, ["met", "met", "met", "not_met"], True, False),
    ("mmmmnn", 3, ["met", "met", "not_met", "not_met"], False, False),
    # unknown when none is met and any is unknown
    ("mnunmn", 3, ["met", "unknown", "met", "not_met"], False, True),
    ("nuuunu", 1, ["unknown", "unknown", "not_met", "unknown"], False, True),
    ("mununu", 2, ["met", "unknown", "not_met", "unknown"], False, True),
    ("mmmmmm", 4, ["met", "met", "met", "met"], True, False),
])
def test_quorum_by_groups(verdicts: str, min_met: int, group_verdicts: list[str], due: bool,
                          possible: bool) -> None:
    t = transition(GROUPS, min_met, "groups")
    report = evaluate_transition(t, results(t, verdicts))
    assert [g.verdict for g in report.quorum.groups] == group_verdicts
    assert [g.name for g in report.quorum.groups] == ["users", "performance", "business",
                                                      "feedback"]
    assert (report.due, report.due_possible, report.quorum.total) == (due, possible, 4)
    assert report.quorum.met_count == group_verdicts.count("met")


def test_transition_needs_exactly_one_result_per_condition() -> None:
    t = transition(BULLETS, 3)
    rs = results(t, "mmmnnn")
    with pytest.raises(ValueError, match="no result for c5"):
        evaluate_transition(t, rs[:-1])
    with pytest.raises(ValueError, match="more than one"):
        evaluate_transition(t, [*rs, rs[0]])
    with pytest.raises(ValueError, match="not in the transition: zz"):
        evaluate_transition(t, [*rs, result("zz", "met")])
    report = evaluate_transition(t, list(reversed(rs)))
    assert [c.name for c in report.conditions] == [f"c{i}" for i in range(6)]   # plan order


# ---------------------------------------------------------------- the real plan's 1 -> 2

def _real_days(c: Condition, value: float | None, n: int = 28) -> list[DayValue]:
    return days(*[value] * n)


def _good_value(c: Condition) -> float:
    return c.threshold + 1 if c.comparison.startswith(">") else c.threshold - 1


def _bad_value(c: Condition) -> float:
    return c.threshold if c.comparison in (">", "<") else (
        c.threshold - 1 if c.comparison == ">=" else c.threshold + 1)


def test_real_plan_transition_1_to_2() -> None:
    met = {"gpu-util-85-peak", "churn-10", "slow-complaints-10pct"}
    gap = {"registered-users-1k", "dau-300"}
    rs = [evaluate_condition(c, _real_days(c, None if c.id in gap else (
        _good_value(c) if c.id in met else _bad_value(c)))) for c in T12.conditions]
    report = evaluate_transition(T12, rs)
    assert set(report.names("met")) == met and set(report.names("unknown")) == gap
    assert (report.due, report.quorum.min_met, report.quorum.total) == (True, 3, 14)
    assert report.summary == "phase 1 -> 2: 3 of 14 conditions met (3 needed), 2 unknown: due"
    weekly = next(r for r in rs if r.name == "weekly-growth-15")
    assert (weekly.required_streak, weekly.streak_unit, len(weekly.weeks)) == (3, "weeks", 4)
    churn = next(c for c in T12.conditions if c.id == "churn-10")
    rs[T12.conditions.index(churn)] = unknown_result(churn, "down")
    later = evaluate_transition(T12, rs)
    assert (later.due, later.due_possible, later.quorum.unknown_count) == (False, True, 3)


# ---------------------------------------------------------------- alerts

def report_of(verdicts: str, min_met: int = 3) -> TriggerReport:
    t = transition(BULLETS, min_met)
    return evaluate_transition(t, results(t, verdicts))


def test_alert_deduplication_over_a_sequence_of_runs() -> None:
    runs = [
        ("mmnnnn", []),                              # not due
        ("mmnnnn", []),                              # not due again: nothing
        ("mmmnnn", ["due"]),                         # due
        ("mmmnnn", []),                              # still due: nothing
        ("mmmunn", ["data_gap"]),                    # c3 loses its data, still due
        ("mmmunn", []),                              # the gap persists: nothing
        ("mmmnnn", ["data_restored"]),               # data back
        ("mmnnnn", ["all_clear"]),                   # no longer due
        ("mmnnnn", []),
    ]
    state: TriggerState | None = None
    for index, (verdicts, kinds) in enumerate(runs):
        alerts, state = alert_decision(state, report_of(verdicts))
        assert [a.kind for a in alerts] == kinds, f"run {index}: {verdicts}"
        # the flow stores the state as JSON between runs
        state = TriggerState.from_dict(json.loads(json.dumps(state.to_dict())))


def test_alert_contents() -> None:
    alerts, state = alert_decision(None, report_of("mmmnnn"))
    (due,) = alerts
    assert (due.title, due.severity, due.fingerprint) == ("phase 1 -> 2 is due", "warning",
                                                          "due:1->2")
    assert [e["name"] for e in due.evidence] == ["c0", "c1", "c2"]
    assert due.text.startswith("phase 1 -> 2: 3 of 6 conditions met (3 needed)")
    assert state == TriggerState("1->2", True, (), ("due:1->2",))
    gap_alerts, state = alert_decision(state, report_of("mmmunn"))
    assert [(a.title, a.severity) for a in gap_alerts] == [("data gap: c3 (x: unknown)",
                                                            "warning")]
    assert state.unknown == ("c3",) and state.fingerprints == ("data_gap:1->2:c3",)
    restored, state = alert_decision(state, report_of("mmmnnn"))
    assert [(a.title, a.severity) for a in restored] == [("data restored: c3", "info")]
    clear, state = alert_decision(state, report_of("mnnnnn"))
    assert [(a.kind, a.severity) for a in clear] == [("all_clear", "info")]
    assert json.dumps([a.to_dict() for a in alerts + gap_alerts + restored + clear])


def test_gap_that_drops_the_quorum_gives_all_clear_and_gap() -> None:
    _, state = alert_decision(None, report_of("mmmnnn"))
    alerts, state = alert_decision(state, report_of("mmuunn"))
    assert [a.kind for a in alerts] == ["all_clear", "data_gap"]
    assert alerts[1].title == "data gap: c2, c3"
    assert "unknown:" in alerts[0].text and not state.due


def test_first_run_and_a_state_of_another_transition() -> None:
    assert alert_decision(None, report_of("mmnnnn"))[0] == []
    alerts, _ = alert_decision(None, report_of("mmnnnu"))
    assert [a.kind for a in alerts] == ["data_gap"]     # a gap is news on the first run too
    stale = TriggerState("2->3", due=True, unknown=("c5",))
    assert [a.kind for a in alert_decision(stale, report_of("mmnnnu"))[0]] == ["data_gap"]


@pytest.mark.parametrize(("due", "open_run", "auto", "create"), [
    (True, False, True, True),
    (True, True, True, False),       # never a second one while one is open
    (True, False, False, False),     # the plan does not allow it
    (False, False, True, False),
])
def test_should_create_transition(due: bool, open_run: bool, auto: bool, create: bool) -> None:
    report = report_of("mmmnnn" if due else "mmnnnn")
    assert should_create_transition(report, open_run, auto) is create


# ---------------------------------------------------------------- JSON

def test_report_json_shape() -> None:
    rs = [evaluate_condition(c, days(*[_good_value(c)] * 21)) if c.source.kind != "manual"
          else evaluate_condition(c, []) for c in T12.conditions]
    data = json.loads(json.dumps(report_to_json(evaluate_transition(T12, rs)), allow_nan=False))
    assert {"conditions", "quorum", "due"} <= set(data)
    assert data["due"] is True and data["quorum"]["met_count"] == 14
    for condition in data["conditions"]:
        assert {"name", "category", "source", "verdict", "streak", "required_streak",
                "latest_value", "threshold"} <= set(condition)
        assert condition["verdict"] in ("met", "not_met", "unknown")
        assert condition["source"] in ("promql", "sql", "manual")
    first = data["conditions"][0]
    assert first["name"] == "registered-users-1k" and first["category"] == "users"
    assert first["daily"][-1] == {"day": "2026-11-20", "value": 1001.0, "met": True,
                                  "reason": None}
    assert {"min_met", "counts", "met_count", "unknown_count", "total"} <= set(data["quorum"])
    growth = next(c for c in data["conditions"] if c["name"] == "weekly-growth-15")
    assert growth["weeks"][-1] == {"start": "2026-11-14", "end": "2026-11-20", "value": 16.0,
                                   "met": True, "reason": None}


# ---------------------------------------------------------------- cross-check with lab.world

WORLD_NOW = datetime(2025, 11, 20, 15, 0, tzinfo=TZ)


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(WORLD_NOW)


def _column(world: World, name: str, scale: float = 1.0) -> list[DayValue]:
    d = world.daily[world.daily["complete"]]
    return [DayValue(day, float(v) * scale) for day, v in zip(d["day"], d[name], strict=True)]


def _peak(world: World, column: str) -> list[DayValue]:
    # the world's slot i covers (ts - 300, ts]: the samples Prometheus would return at ts
    points = list(zip(world.slots["ts"].astype(float), world.slots[column], strict=True))
    return daily_values(points, now=WORLD_NOW, days=88, tz="Asia/Seoul", window="peak",
                        peak=PLAN.peak_window, aggregate="avg", step_s=300)


def _growth(world: World) -> list[DayValue]:
    d = world.daily[world.daily["complete"]]
    users, day = d["users_total"].to_numpy(dtype=float), list(d["day"])
    return [DayValue(day[i], 100 * (users[i] / users[i - 7] - 1)) for i in range(7, len(day))]


def test_streak_rules_agree_with_the_lab_world(world: World) -> None:
    """The evaluator on the lab's data shape gives lab.world's designed verdicts."""
    expected = {c.key: c for c in world.phase1_conditions()}
    conditions = {c.id: c for c in T12.conditions}
    series = {
        "registered-users-1k": ("users_1000_7d", _column(world, "users_total"), 1),
        "dau-300": ("dau_300_5d", _column(world, "dau"), 1),
        "weekly-growth-15": ("growth_15_3w", _growth(world), 100),
        "gpu-util-85-peak": ("gpu_85_peak_3d", _peak(world, "gpu_util"), 1),
        "api-p95-500": ("api_p95_500_2d", _peak(world, "api_p95_ms"), 1),
        "llm-queue-10s-peak": ("queue_10s_peak_7d", _peak(world, "queue_p95_s"), 1),
        "cache-miss-30": ("cache_miss_30_3d", _column(world, "cache_miss_rate", 100), 100),
    }
    for cid, (key, values, scale) in series.items():
        got, want = evaluate_condition(conditions[cid], values), expected[key]
        assert got.verdict == ("met" if want.met else "not_met"), cid
        assert got.latest_value == pytest.approx(want.value * scale), cid
        if cid != "weekly-growth-15":     # the world counts growth weeks from its first week
            assert got.streak == want.streak, cid


def test_window_rules_agree_with_the_lab_world(world: World) -> None:
    """The plan's comparisons and thresholds give the world's verdicts on its latest values."""
    expected = {c.key: c for c in world.phase1_conditions()}
    mapping = {"revenue-3x-cost": ("revenue_300", 1 / 100), "paid-conversion-5": (
        "conversion_5", 100), "churn-10": ("churn_10", 100), "nps-40": ("nps_40", 1),
        "slow-complaints-10pct": ("slow_10_weekly", 100),
        "peak-connection-failures": ("peak_connection_failures", 1),
        "ai-wait-complaints-rising": ("ai_wait_rising", 1)}
    for c in T12.conditions:
        if c.id in mapping:
            key, scale = mapping[c.id]
            got = evaluate_condition(c, days(*[expected[key].value * scale] * 7))
            assert got.verdict == ("met" if expected[key].met else "not_met"), c.id
