"""What a trigger check must fetch, and what the capacity forecast must forecast (pure).

Both read the plan only: how many days of history each condition needs, and which of the
next transitions' conditions define the forecast series and their thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from phasegate.policy.forecast import Bounds, Threshold
from phasegate.policy.plan import (
    Condition,
    ConsecutiveDays,
    ConsecutiveWeeks,
    PeakWeek,
    Plan,
    PromQLSource,
    SQLSource,
    Weekly,
)

__all__ = ["ForecastTarget", "condition_days", "fetch_range", "forecast_targets",
           "history_days", "last_complete_day"]

# Extra complete days fetched beyond the rule's minimum, so that the streak shown can run
# past the requirement and a short gap before the window is visible as evidence.
_SLACK_DAYS = 7


def condition_days(cond: Condition) -> int:
    """Complete local days of data the condition's persistence rule needs."""
    rule = cond.persistence
    if isinstance(rule, ConsecutiveDays):
        need = rule.count
    elif isinstance(rule, PeakWeek):
        need = 7
    elif isinstance(rule, ConsecutiveWeeks):
        need = 7 * rule.count
    elif isinstance(rule, Weekly):
        need = 7
    else:
        need = 1
    return need + _SLACK_DAYS


def history_days(conditions: list[Condition]) -> int:
    """Days of history one trigger check fetches: the most any condition needs."""
    return max(condition_days(c) for c in conditions)


def fetch_range(now: datetime, days: int, tz: str) -> tuple[datetime, datetime]:
    """[local midnight `days` days before today, local midnight today): complete days only."""
    zone = ZoneInfo(tz)
    today = now.astimezone(zone).date()
    end = datetime.combine(today, time(0), zone)
    return end - timedelta(days=days), end


@dataclass(frozen=True)
class ForecastTarget:
    """One series to forecast: where its daily values come from and which thresholds matter."""

    name: str
    condition: Condition            # the source (SQL or PromQL + daily aggregate) to reuse
    thresholds: tuple[Threshold, ...]   # (label, value, comparison)
    bounds: Bounds


# series name -> (condition id prefix, bounds, all later transitions or only the next one)
_SERIES: dict[str, tuple[str, Bounds, bool]] = {
    "users_total": ("registered-users-", Bounds(cumulative=True), True),
    "dau": ("dau-", Bounds(), True),
    "gpu_util_peak": ("gpu-util-85", Bounds(lower=0.0, upper=100.0), False),
    "api_p95_peak_ms": ("api-p95-", Bounds(), False),
}


def forecast_targets(plan: Plan, current_phase: int) -> list[ForecastTarget]:
    """The seed's dashboard question for the phases ahead: users (1K/10K/100K...), DAU, GPU 85 %
    and API p95, each with the thresholds of the coming transitions (the next one only for
    performance series, whose thresholds change meaning after each scale-up)."""
    ahead = [t for t in plan.transitions if t.from_phase >= current_phase]
    targets = []
    for name, (prefix, bounds, all_ahead) in _SERIES.items():
        found = [(t, c) for t in (ahead if all_ahead else ahead[:1])
                 for c in t.conditions if c.id.startswith(prefix)]
        if not found or not isinstance(found[0][1].source, PromQLSource | SQLSource):
            continue
        thresholds = tuple((f"{c.comparison} {c.threshold:,g} {c.unit} "
                            f"(phase {t.from_phase}->{t.to_phase})", c.threshold, c.comparison)
                           for t, c in found)
        targets.append(ForecastTarget(name, found[0][1], thresholds, bounds))
    return targets


def last_complete_day(now: datetime, tz: str) -> date:
    """Yesterday in the plan's timezone: the last day whose data is complete."""
    return now.astimezone(ZoneInfo(tz)).date() - timedelta(days=1)
