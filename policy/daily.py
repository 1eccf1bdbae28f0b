"""One value per complete local day, from Prometheus range data or from SQL rows (pure).

Trigger conditions are judged on stored daily values, never on an alert's `for:` (which resets
after a Prometheus outage): this module turns raw data into `DayValue`s, one per complete local
day, oldest first, ending with the last complete day. A day without enough data has value None
and a reason; it is never silently dropped, so a gap stays visible to the streak logic.

Days are local days in the plan's time zone (Asia/Seoul): they start at local midnight, not UTC
midnight. Today is never complete and never included.

Sample convention (PromQL): a range-query sample at time t describes the step that ends at t
(Prometheus evaluates `rate(x[10m])` and `increase(x[1d])` over windows ending at t, and the lab's
history writes slot (t - step, t] at t). So a day's window (start, end] holds the samples with
start < t <= end: the sample at exactly local midnight closes the previous day, and
`increase(x[1d])` read at the day's last step is exactly that day's total.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from phasegate.policy.plan import DailyAggregate, DayWindow, PeakWindow

__all__ = [
    "DayValue",
    "complete_days",
    "daily_values",
    "day_window",
    "normalize_sql_rows",
]

@dataclass(frozen=True)
class DayValue:
    """One local day's value; `value` None means no usable data, and `reason` says why."""

    day: date
    value: float | None
    reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: {"day": "YYYY-MM-DD", "value": float | None, "reason": ...}."""
        return {"day": self.day.isoformat(), "value": self.value, "reason": self.reason}


# ---------------------------------------------------------------- calendar

def _local_today(now: datetime, zone: ZoneInfo) -> date:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(zone).date()


def _at(day: date, clock: time, zone: ZoneInfo) -> float:
    """Epoch seconds of local `clock` on `day` (zoneinfo resolves DST, if the zone has any)."""
    return datetime.combine(day, clock, tzinfo=zone).timestamp()


def day_window(day: date, zone: ZoneInfo, window: DayWindow,
               peak: PeakWindow | None = None) -> tuple[float, float]:
    """(start, end) epoch seconds of `day`'s window: the whole local day, or its peak window.

    A peak window that crosses midnight (e.g. 22:00-02:00) belongs to the day it starts on and
    ends on the next local day. Raises ValueError for `window="peak"` without `peak`.
    """
    if window == "all_day":
        return _at(day, time(0), zone), _at(day + timedelta(days=1), time(0), zone)
    if peak is None:
        raise ValueError("window 'peak' needs the plan's peak window")
    end_day = day if peak.peak_end > peak.peak_start else day + timedelta(days=1)
    return _at(day, peak.peak_start, zone), _at(end_day, peak.peak_end, zone)


def complete_days(now: datetime, days: int, zone: ZoneInfo, window: DayWindow = "all_day",
                  peak: PeakWindow | None = None) -> list[date]:
    """The last `days` complete local days before `now`'s local day, oldest first.

    A day is complete when its local day is over; with a peak window that crosses midnight, also
    when that window is over (yesterday's 22:00-02:00 is not complete at 01:00 today).
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    last = _local_today(now, zone) - timedelta(days=1)
    if day_window(last, zone, window, peak)[1] > now.timestamp():
        last -= timedelta(days=1)
    return [last - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


# ---------------------------------------------------------------- PromQL range data

def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 1]; `values` sorted."""
    rank = q * (len(values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def _aggregate(values: Sequence[float], how: DailyAggregate) -> float:
    """Reduce a day's samples (in time order) to one value."""
    if how == "last":
        return values[-1]
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    if how == "avg":
        return math.fsum(values) / len(values)
    return _percentile(sorted(values), 0.95)


def _clean(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Sorted timestamps and values, without NaN/inf (not measurements) or repeated times."""
    by_time: dict[float, float] = {}
    for stamp, raw in points:
        value = float(raw)
        if math.isfinite(value):
            by_time[float(stamp)] = value
    stamps = sorted(by_time)
    return stamps, [by_time[s] for s in stamps]


def daily_values(points: Sequence[tuple[float, float]], *, now: datetime, days: int, tz: str,
                 window: DayWindow, peak: PeakWindow | None = None, aggregate: DailyAggregate,
                 step_s: float, min_coverage: float = 0.8) -> list[DayValue]:
    """Reduce one Prometheus range series to one value per complete local day.

    points: (epoch seconds, value) samples of a range query at `step_s`; a sample at t belongs
    to the window (start, end] that contains t (see the module docstring). Returns the last
    `days` complete days, oldest first. A day whose window holds fewer than `min_coverage` of
    its expected samples (window length / step) gets value None and reason
    "insufficient data (k of n samples)". NaN and infinite samples are dropped first.
    Raises ValueError for a naive `now`, days < 1, step_s <= 0, a coverage outside (0, 1], or
    a peak window given in another time zone than `tz`.
    """
    if step_s <= 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    if window == "peak" and peak is not None and peak.timezone != tz:
        raise ValueError(f"peak window is in {peak.timezone}, days in {tz}: use one zone")
    zone = ZoneInfo(tz)
    stamps, values = _clean(points)
    out = []
    for day in complete_days(now, days, zone, window, peak):
        start, end = day_window(day, zone, window, peak)
        # (start, end]: the sample at `start` closes the previous window.
        lo, hi = bisect_right(stamps, start), bisect_right(stamps, end)
        out.append(_day_value(day, values[lo:hi], int((end - start) // step_s) or 1,
                              aggregate, min_coverage))
    return out


def _day_value(day: date, samples: Sequence[float], expected: int, aggregate: DailyAggregate,
               min_coverage: float) -> DayValue:
    if not samples or len(samples) < min_coverage * expected:
        return DayValue(day, None, f"insufficient data ({len(samples)} of {expected} samples)")
    return DayValue(day, _aggregate(samples, aggregate))


# ---------------------------------------------------------------- SQL rows

def _row_day(raw: object) -> date:
    # datetime is a date subclass: a timestamp here means the query is not per local day.
    if isinstance(raw, datetime):
        raise ValueError(f"SQL row day {raw!r} is a timestamp; the query must return a date")
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str):
        return date.fromisoformat(raw)
    raise ValueError(f"SQL row day {raw!r} is not a date")


def _row_value(raw: object) -> tuple[float | None, str | None]:
    if raw is None:
        return None, "no value (NULL)"
    if isinstance(raw, bool):
        raise ValueError(f"SQL row value {raw!r} is not a number")
    try:
        value = float(raw)  # type: ignore[arg-type]  # float, int, Decimal, numeric text
    except (TypeError, ValueError):
        raise ValueError(f"SQL row value {raw!r} is not a number") from None
    return (value, None) if math.isfinite(value) else (None, f"no value ({value})")


def normalize_sql_rows(rows: Iterable[Sequence[object]], now: datetime, days: int,
                       tz: str) -> list[DayValue]:
    """Turn a condition query's (day, value) rows into the last `days` complete local days.

    Rows for today (incomplete) or before the range are ignored; a day without a row becomes
    None with reason "no row"; NULL and NaN values become None with their reason.
    Raises ValueError for a repeated day, a row that is not (date, number | None), a naive
    `now`, or days < 1.
    """
    seen: dict[date, tuple[float | None, str | None]] = {}
    for row in rows:
        if len(row) != 2:
            raise ValueError(f"SQL row {tuple(row)!r}: expected (day, value)")
        day = _row_day(row[0])
        if day in seen:
            raise ValueError(f"SQL rows repeat day {day.isoformat()}: one row per local day")
        seen[day] = _row_value(row[1])
    wanted = complete_days(now, days, ZoneInfo(tz))
    return [DayValue(d, *seen.get(d, (None, "no row"))) for d in wanted]
