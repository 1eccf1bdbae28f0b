"""Shared steps of the measuring flows: the current phase, and one condition's daily values."""

from __future__ import annotations

from datetime import datetime

from prefect import task

from phasegate.blocks.systems import PostgresConnection, PrometheusConnection
from phasegate.errors import SourceUnavailable
from phasegate.policy.daily import DayValue, daily_values, normalize_sql_rows
from phasegate.policy.plan import Condition, Plan, PromQLSource, SQLSource
from phasegate.policy.trigger_inputs import fetch_range
from phasegate.tasks.postgres import sql_day_rows
from phasegate.tasks.prometheus import query_range
from phasegate.tasks.state_store import read_current_phase

__all__ = ["current_phase", "fetch_days"]


@task
def current_phase(pg: PostgresConnection) -> int:
    """The phase recorded in the state store (never assumed)."""
    with pg.get_connection(pg.state_database) as conn:
        return read_current_phase(conn)


def fetch_days(cond: Condition, plan: Plan, prom: PrometheusConnection, pg: PostgresConnection,
             now: datetime, days: int) -> list[DayValue] | str:
    """The condition's complete local days of values (SQL rows or PromQL range data reduced by
    the plan's daily aggregate), or a sentence saying why they could not be fetched."""
    tz = plan.peak_window.timezone
    start, end = fetch_range(now, days, tz)
    source = cond.source
    if isinstance(source, PromQLSource):
        m = query_range(prom, source.query, start, end, source.step)
        if m.error:
            return f"Prometheus: {m.error}"
        return daily_values(m.points, now=now, days=days, tz=tz, window=source.window,
                            peak=plan.peak_window, aggregate=source.daily_aggregate,
                            step_s=source.step.total_seconds())
    assert isinstance(source, SQLSource)
    try:
        rows = sql_day_rows(pg, source.query, start, end, tz)
    except SourceUnavailable as exc:
        return f"app database: {exc}"
    return normalize_sql_rows(rows, now, days, tz)
