"""`capacity-forecast`: when will the next phase be needed? Daily, forecast-only.

Runbook: read the phase -> build daily series (app database and Prometheus, the same sources as
the trigger conditions) -> backtest models per series and forecast (policy.forecast) -> date
each threshold with a range -> alert when a date is closer than the D-7 purchase lead time ->
store and publish (ETA table, backtest scores, plot). It never scales anything.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_image_artifact, create_table_artifact

from phasegate.blocks.systems import PostgresConnection, PrometheusConnection, load_block
from phasegate.flows.sources import current_phase, fetch_days
from phasegate.policy.forecast import (
    SeriesForecast,
    alerts_to_send,
    checklist_lead_days,
    forecast_series,
    lead_time_alerts,
)
from phasegate.policy.plan import load_plan
from phasegate.policy.trigger_inputs import ForecastTarget, forecast_targets, last_complete_day
from phasegate.tasks.notifications import send_notification
from phasegate.tasks.reports import forecast_png, png_data_uri
from phasegate.tasks.state_store import last_forecast, save_forecast

__all__ = ["capacity_forecast"]


def _history(target: ForecastTarget, plan: Any, prom: PrometheusConnection,
             pg: PostgresConnection, now: datetime, days: int) -> dict[date, float | None]:
    """The target's daily values {day: value} (an unknown day's value is None)."""
    fetched = fetch_days(target.condition, plan, prom, pg, now, days)
    if isinstance(fetched, str):
        get_run_logger().warning("%s: no history: %s", target.name, fetched)
        return {}
    return {d.day: d.value for d in fetched}


def _publish(forecasts: list[tuple[SeriesForecast, dict[date, float | None]]], today: Any) -> None:
    etas = [{"series": fc.name, "threshold": e.label, "model": e.model,
             "eta": e.eta.isoformat() if e.eta else "not within a year",
             "range": f"{e.eta_early or '-'} .. {e.eta_late or '-'}",
             "crossed": e.already_crossed} for fc, _ in forecasts for e in fc.etas]
    create_table_artifact(key="capacity-forecast-etas", table=etas,
                          description="When each threshold of the coming phases is crossed")
    scores = [{"series": fc.name, "model": name, "chosen": name == fc.model,
               "mape_7d": s.to_dict().get("mape", {}).get("7"),
               "mape_14d": s.to_dict().get("mape", {}).get("14")}
              for fc, _ in forecasts for name, s in fc.backtest.items()]
    create_table_artifact(key="capacity-forecast-backtest", table=scores,
                          description="Rolling-origin backtest MAPE (%) per model")
    png = forecast_png([f for f in forecasts if f[0].model], today)
    create_image_artifact(image_url=png_data_uri(png), key="capacity-forecast-plot",
                          description="History, forecast, interval and thresholds")


@flow(name="capacity-forecast", log_prints=True)
def capacity_forecast(plan_path: str | None = None, prefix: str = "lab",
                      notifications: str = "custom-webhook/lab-slack",
                      history_days: int = 90) -> dict[str, Any]:
    """Forecast users, DAU, peak GPU utilisation and peak API p95; returns the JSON result."""
    plan = load_plan(plan_path)
    pg = load_block(PostgresConnection, f"{prefix}-postgres")
    prom = load_block(PrometheusConnection, f"{prefix}-prometheus")
    phase, now = current_phase(pg), datetime.now(UTC)
    # "today" is the local day in progress: the forecast drops it as incomplete.
    today = last_complete_day(now, plan.peak_window.timezone) + timedelta(days=1)
    forecasts = []
    for target in forecast_targets(plan, phase):
        history = _history(target, plan, prom, pg, now, history_days)
        fc = forecast_series(target.name, history, target.thresholds, today, target.bounds)
        forecasts.append((fc, history))
    transition = next((t for t in plan.transitions if t.from_phase == phase), None)
    lead = checklist_lead_days(s.stage for s in transition.checklist) if transition else 7
    alerts = lead_time_alerts([f for f, _ in forecasts], today, lead)
    with pg.get_connection(pg.state_database) as conn:
        previous = last_forecast(conn) or {}
    # Daily runs repeat an alert only when it is new, escalates, moves earlier, or weekly.
    send, notices = alerts_to_send(alerts, previous.get("alerts", []), today)
    for alert, why in send:
        send_notification(notifications, f"capacity ({why}): {alert.series}", alert.message)
    _publish(forecasts, today)
    result = {"phase": phase, "today": today.isoformat(), "lead_days": lead,
              "series": [f.to_dict() for f, _ in forecasts], "alerts": notices,
              "notified": [f"{a.series}: {a.eta.label} ({why})" for a, why in send]}
    with pg.get_connection(pg.state_database) as conn:
        save_forecast(conn, result)
    return result
