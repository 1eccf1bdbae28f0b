"""policy.daily: local days in Asia/Seoul, peak windows, coverage, SQL rows. Pure and fast."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from phasegate.policy.daily import (
    DayValue,
    complete_days,
    daily_values,
    day_window,
    normalize_sql_rows,
)
from phasegate.policy.plan import PeakWindow

TZ = "Asia/Seoul"
KST = ZoneInfo(TZ)
PEAK = PeakWindow(timezone=TZ, peak_start=time(19), peak_end=time(23))
NIGHT = PeakWindow(timezone=TZ, peak_start=time(22), peak_end=time(2))
NOW = datetime(2025, 11, 21, 12, 0, tzinfo=KST)    # complete days end on 2025-11-20
STEP = 300.0


def kst(day: date, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime.combine(day, time(hour, minute, second), tzinfo=KST).timestamp()


def grid(day: date, value: Any = 1.0, days: int = 1) -> list[tuple[float, Any]]:
    """Samples every 5 min on (00:00, 24:00] local of `days` days from `day`: a full series."""
    start = kst(day)
    n = int(days * 86400 // STEP)
    return [(start + STEP * (i + 1), value(i) if callable(value) else value) for i in range(n)]


def run(points: list[tuple[float, Any]], **kw: Any) -> list[DayValue]:
    args: dict[str, Any] = dict(now=NOW, days=2, tz=TZ, window="all_day", peak=PEAK,
                                aggregate="last", step_s=STEP)
    return daily_values(points, **(args | kw))


# ---------------------------------------------------------------- calendar

@pytest.mark.parametrize(("now", "last"), [
    # 14:59 UTC is 23:59 KST: the local day is not over, so yesterday is the last complete day
    (datetime(2025, 11, 20, 14, 59, tzinfo=UTC), date(2025, 11, 19)),
    # 15:00 UTC is 00:00 KST of the 21st: the 20th is complete
    (datetime(2025, 11, 20, 15, 0, tzinfo=UTC), date(2025, 11, 20)),
    (datetime(2025, 11, 21, 0, 0, tzinfo=KST), date(2025, 11, 20)),
    (datetime(2025, 11, 20, 23, 59, 59, tzinfo=KST), date(2025, 11, 19)),
    # a UTC date of the 20th can already be the 21st in Seoul
    (datetime(2025, 11, 20, 23, 0, tzinfo=UTC), date(2025, 11, 20)),
])
def test_complete_days_end_yesterday_in_seoul(now: datetime, last: date) -> None:
    got = complete_days(now, 3, KST)
    assert got == [last - timedelta(days=2), last - timedelta(days=1), last]


def test_complete_days_with_a_peak_window_crossing_midnight() -> None:
    today = date(2025, 11, 21)
    before = datetime.combine(today, time(1, 59), tzinfo=KST)
    after = datetime.combine(today, time(2, 0), tzinfo=KST)
    # yesterday's 22:00-02:00 is not over at 01:59 today
    assert complete_days(before, 1, KST, "peak", NIGHT) == [date(2025, 11, 19)]
    assert complete_days(after, 1, KST, "peak", NIGHT) == [date(2025, 11, 20)]
    assert complete_days(before, 1, KST, "peak", PEAK) == [date(2025, 11, 20)]


@pytest.mark.parametrize(("window", "peak", "start", "end"), [
    ("all_day", None, (0, 0), (1, 0)),
    ("peak", PEAK, (0, 19), (0, 23)),
    ("peak", NIGHT, (0, 22), (1, 2)),
])
def test_day_window(window: Any, peak: PeakWindow | None, start: tuple[int, int],
                    end: tuple[int, int]) -> None:
    day = date(2025, 11, 20)
    got = day_window(day, KST, window, peak)
    assert got == (kst(day + timedelta(days=start[0]), start[1]),
                   kst(day + timedelta(days=end[0]), end[1]))


# ---------------------------------------------------------------- day boundaries of samples

@pytest.mark.parametrize(("utc", "day"), [
    (datetime(2025, 11, 19, 14, 59, tzinfo=UTC), date(2025, 11, 19)),       # 23:59 KST
    # 00:00 KST: the sample describes the step ending at midnight, so it closes the 19th
    (datetime(2025, 11, 19, 15, 0, tzinfo=UTC), date(2025, 11, 19)),
    (datetime(2025, 11, 19, 15, 0, 1, tzinfo=UTC), date(2025, 11, 20)),     # 00:00:01 KST
    (datetime(2025, 11, 19, 15, 5, tzinfo=UTC), date(2025, 11, 20)),        # 00:05 KST
    (datetime(2025, 11, 19, 23, 59, tzinfo=UTC), date(2025, 11, 20)),       # UTC still the 19th
    (datetime(2025, 11, 19, 0, 30, tzinfo=UTC), date(2025, 11, 19)),        # 09:30 KST
    (datetime(2025, 11, 20, 15, 0, tzinfo=UTC), date(2025, 11, 20)),        # closes the 20th
    (datetime(2025, 11, 20, 15, 0, 1, tzinfo=UTC), None),                   # today: excluded
    (datetime(2025, 11, 18, 15, 0, tzinfo=UTC), None),                      # before the range
])
def test_a_sample_lands_on_its_local_day(utc: datetime, day: date | None) -> None:
    # one expected sample per day (step = 1 day), so a single sample covers its day
    got = run([(utc.timestamp(), 7.0)], step_s=86400)
    assert [d.day for d in got] == [date(2025, 11, 19), date(2025, 11, 20)]
    assert [d.day for d in got if d.value == 7.0] == ([day] if day else [])


def test_today_is_excluded_even_with_full_data() -> None:
    got = run(grid(date(2025, 11, 19), 5.0, days=3), days=3)
    assert [d.day for d in got] == [date(2025, 11, 18), date(2025, 11, 19), date(2025, 11, 20)]
    assert [d.value for d in got] == [None, 5.0, 5.0]
    assert got[0].reason == "insufficient data (0 of 288 samples)"


# ---------------------------------------------------------------- windows and aggregates

def _evening(i: int) -> float:
    """100 for samples in (19:00, 23:00] local, 0 otherwise (sample i ends at (i+1) x 5 min)."""
    minute = (i + 1) * 5
    return 100.0 if 19 * 60 < minute <= 23 * 60 else 0.0


@pytest.mark.parametrize(("window", "aggregate", "value"), [
    ("peak", "avg", 100.0),
    ("peak", "min", 100.0),
    ("all_day", "avg", 100.0 * 48 / 288),
    ("all_day", "max", 100.0),
    ("all_day", "min", 0.0),
    ("all_day", "last", 0.0),
])
def test_peak_window_aggregation(window: Any, aggregate: Any, value: float) -> None:
    got = run(grid(date(2025, 11, 20), _evening), days=1, window=window, aggregate=aggregate)
    assert got[0].value == pytest.approx(value)


def test_peak_window_crossing_midnight_belongs_to_its_start_day() -> None:
    # 1 in (22:00, 02:00], 0 elsewhere, over the 19th and 20th and up to 02:00 on the 21st
    def night(i: int) -> float:
        minute = ((i + 1) * 5) % 1440
        return 1.0 if minute > 22 * 60 or minute <= 2 * 60 else 0.0

    points = grid(date(2025, 11, 19), night, days=3)
    now = datetime(2025, 11, 21, 2, 0, tzinfo=KST)
    got = run(points, now=now, window="peak", peak=NIGHT, aggregate="min")
    assert [(d.day, d.value) for d in got] == [(date(2025, 11, 19), 1.0),
                                               (date(2025, 11, 20), 1.0)]
    early = run(points, now=now - timedelta(minutes=1), window="peak", peak=NIGHT, days=1)
    assert [d.day for d in early] == [date(2025, 11, 19)]


def test_p95_interpolates_linearly() -> None:
    day = date(2025, 11, 20)
    points = [(kst(day, 19, 0) + 3600 * (i + 1), float(v)) for i, v in enumerate([4, 1, 3, 2])]
    got = run(points, days=1, window="peak", aggregate="p95", step_s=3600)
    assert got[0].value == pytest.approx(3.85)     # rank 0.95 x 3 = 2.85 between 3 and 4


# ---------------------------------------------------------------- coverage and bad samples

@pytest.mark.parametrize(("kept", "coverage", "value"), [
    (48, 0.8, 1.0),
    (39, 0.8, 1.0),              # 39 / 48 = 0.81
    (38, 0.8, None),             # 38 / 48 = 0.79
    (36, 0.75, 1.0),             # exactly at the coverage: enough
    (35, 0.75, None),
    (1, 0.01, 1.0),
    (0, 0.01, None),
])
def test_coverage_threshold(kept: int, coverage: float, value: float | None) -> None:
    day = date(2025, 11, 20)
    points = [(kst(day, 19) + STEP * (i + 1), 1.0) for i in range(kept)]
    got = run(points, days=1, window="peak", min_coverage=coverage)[0]
    assert got.value == value
    assert got.reason == (None if value is not None
                          else f"insufficient data ({kept} of 48 samples)")


def test_nan_and_inf_samples_are_dropped_before_coverage() -> None:
    day = date(2025, 11, 20)
    values = [1.0] * 30 + [math.nan] * 9 + [math.inf, -math.inf] + ["NaN"] * 7
    points = [(kst(day, 19) + STEP * (i + 1), v) for i, v in enumerate(values)]
    got = run(points, days=1, window="peak", aggregate="max")[0]
    assert got == DayValue(day, None, "insufficient data (30 of 48 samples)")
    points += [(kst(day, 18), 5.0)] * 3     # outside the window: no help
    assert run(points, days=1, window="peak", aggregate="max")[0].value is None
    lenient = run(points, days=1, window="peak", aggregate="max", min_coverage=0.6)[0]
    assert lenient.value == 1.0            # infinities never win a max


def test_repeated_timestamps_count_once_and_order_does_not_matter() -> None:
    day = date(2025, 11, 20)
    points = [(kst(day, 19) + STEP * (i + 1), float(i)) for i in range(20)] * 3
    got = run(list(reversed(points)), days=1, window="peak", aggregate="last")[0]
    assert got.value is None and got.reason == "insufficient data (20 of 48 samples)"
    assert run(points, days=1, window="peak", min_coverage=0.4)[0].value == 19.0


@pytest.mark.parametrize(("kw", "message"), [
    ({"step_s": 0}, "step_s"),
    ({"min_coverage": 0}, "min_coverage"),
    ({"min_coverage": 1.5}, "min_coverage"),
    ({"days": 0}, "days"),
    ({"now": datetime(2025, 11, 21, 12)}, "timezone-aware"),
    ({"window": "peak", "peak": None}, "peak window"),
    ({"window": "peak", "tz": "UTC"}, "one zone"),
])
def test_daily_values_refuses_bad_arguments(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run([], **kw)


# ---------------------------------------------------------------- SQL rows

D18, D19, D20, D21 = (date(2025, 11, d) for d in (18, 19, 20, 21))


@pytest.mark.parametrize(("rows", "expected"), [
    ([(D18, 1.0), (D19, 2.0), (D20, 3.0)], [(D18, 1.0, None), (D19, 2.0, None),
                                            (D20, 3.0, None)]),
    ([(D18, 1.0), (D20, 3.0)], [(D18, 1.0, None), (D19, None, "no row"), (D20, 3.0, None)]),
    ([], [(D18, None, "no row"), (D19, None, "no row"), (D20, None, "no row")]),
    # today's row is incomplete, a row before the range irrelevant
    ([(D18 - timedelta(days=1), 9.0), (D18, 1.0), (D19, 2.0), (D20, 3.0), (D21, 4.0)],
     [(D18, 1.0, None), (D19, 2.0, None), (D20, 3.0, None)]),
    ([(D18, None), (D19, math.nan), (D20, Decimal("2.50"))],
     [(D18, None, "no value (NULL)"), (D19, None, "no value (nan)"), (D20, 2.5, None)]),
    ([("2025-11-20", 0), ("2025-11-19", "1.5")],
     [(D18, None, "no row"), (D19, 1.5, None), (D20, 0.0, None)]),
])
def test_normalize_sql_rows(rows: list[tuple[Any, Any]],
                            expected: list[tuple[date, float | None, str | None]]) -> None:
    got = normalize_sql_rows(rows, NOW, 3, TZ)
    assert got == [DayValue(*e) for e in expected]
    assert all(isinstance(d.value, float) for d in got if d.value is not None)


def test_sql_days_follow_seoul_not_utc() -> None:
    rows = [(D19, 1.0), (D20, 2.0)]
    before = normalize_sql_rows(rows, datetime(2025, 11, 20, 14, 59, tzinfo=UTC), 1, TZ)
    after = normalize_sql_rows(rows, datetime(2025, 11, 20, 15, 0, tzinfo=UTC), 1, TZ)
    assert before == [DayValue(D19, 1.0)] and after == [DayValue(D20, 2.0)]


@pytest.mark.parametrize(("rows", "message"), [
    ([(D19, 1.0), (D19, 2.0)], "repeat day 2025-11-19"),
    ([(D21, 1.0), (D21, None)], "repeat day"),
    ([(datetime(2025, 11, 19, tzinfo=KST), 1.0)], "timestamp"),
    ([(19, 1.0)], "not a date"),
    ([(D19, "many")], "not a number"),
    ([(D19, True)], "not a number"),
    ([(D19, [1])], "not a number"),
    ([(D19,)], "expected"),
])
def test_normalize_sql_rows_refuses_bad_rows(rows: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_sql_rows(rows, NOW, 3, TZ)


def test_day_value_json() -> None:
    assert DayValue(D19, None, "no row").to_dict() == {
        "day": "2025-11-19", "value": None, "reason": "no row"}
