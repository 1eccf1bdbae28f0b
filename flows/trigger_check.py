"""`trigger-check`: is the next phase due? Measured, with evidence, every 15 minutes.

Runbook: read the current phase from the state store -> fetch each condition of the next
transition (PromQL range queries, SQL on the app database, manual entries) -> decide (policy:
daily values, streaks, quorum) -> store the evaluation -> alert only on a change -> create a
phase-transition run when due and allowed (it then waits for approvals).
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from phasegate.blocks.systems import PostgresConnection, PrometheusConnection, load_block
from phasegate.flows.sources import current_phase, fetch_days
from phasegate.policy.plan import Condition, Plan, load_plan
from phasegate.policy.trigger_inputs import history_days
from phasegate.policy.triggers import (
    Alert,
    ConditionResult,
    TriggerReport,
    TriggerState,
    alert_decision,
    evaluate_condition,
    evaluate_transition,
    report_to_json,
    should_create_transition,
    unknown_result,
)
from phasegate.tasks.notifications import send_notification
from phasegate.tasks.state_store import last_trigger_state, save_trigger_evaluation
from phasegate.tasks.transitions import create_transition_run, open_transition_runs

__all__ = ["trigger_check"]


def _evaluate(cond: Condition, plan: Plan, prom: PrometheusConnection, pg: PostgresConnection,
              now: datetime, days: int, manual: dict[str, float]) -> ConditionResult:
    if cond.source.kind == "manual":
        return evaluate_condition(cond, [], manual_value=manual.get(cond.id))
    fetched = fetch_days(cond, plan, prom, pg, now, days)
    if isinstance(fetched, str):
        return unknown_result(cond, fetched)
    return evaluate_condition(cond, fetched)


def _evaluate_all(conditions: list[Condition], plan: Plan, prom: PrometheusConnection,
                  pg: PostgresConnection, now: datetime, days: int,
                  manual: dict[str, float]) -> list[ConditionResult]:
    """Every condition's result, in the plan's order, fetched side by side: each fetch waits
    on Prometheus or PostgreSQL (measured: 0.8 s of a 2 s run for four range queries one
    after the other). Each call runs in its own copy of this run's context, so its task runs
    belong to this flow run and reach the same API."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="condition") as pool:
        futures = [pool.submit(contextvars.copy_context().run, _evaluate, cond, plan, prom, pg,
                               now, days, manual) for cond in conditions]
        return [future.result() for future in futures]


def _publish(report: TriggerReport) -> None:
    rows = [{"condition": r.name, "category": r.category,
             "threshold": f"{r.comparison} {r.threshold:g} {r.unit}",
             "latest": "-" if r.latest_value is None else f"{r.latest_value:.4g}",
             "streak": f"{r.streak}/{r.required_streak} {r.streak_unit}",
             "verdict": r.verdict} for r in report.conditions]
    create_table_artifact(key=f"trigger-check-{report.from_phase}-{report.to_phase}",
                          table=rows, description=report.summary)
    lines = [f"# Trigger check: phase {report.from_phase} -> {report.to_phase}", "",
             f"**{'DUE' if report.due else 'not due'}**: {report.summary}", ""]
    lines += [f"- `{r.name}` **{r.verdict}**: {r.reason}" for r in report.conditions]
    create_markdown_artifact(key="trigger-check-summary", markdown="\n".join(lines))


def _send(alerts: list[Alert], notifications: str) -> bool:
    """Send every alert; False if any could not be sent (then the state is not advanced, so
    the next run alerts again rather than losing the message)."""
    logger = get_run_logger()
    for alert in alerts:
        try:
            send_notification(notifications, alert.title, alert.text)
        except Exception as exc:  # noqa: BLE001 - any failure: keep the old alert state
            logger.warning("alert %r not sent: %s", alert.title, exc)
            return False
    return True


@flow(name="trigger-check", log_prints=True)
def trigger_check(plan_path: str | None = None, prefix: str = "lab",
                  notifications: str = "custom-webhook/lab-slack",
                  manual_values: dict[str, float] | None = None,
                  auto_create: bool = False,
                  prometheus_block: str | None = None) -> dict[str, Any]:
    """Evaluate the next transition's trigger conditions; returns the report as JSON."""
    plan = load_plan(plan_path)
    pg = load_block(PostgresConnection, f"{prefix}-postgres")
    prom = load_block(PrometheusConnection, prometheus_block or f"{prefix}-prometheus")
    phase = current_phase(pg)
    if phase >= max(plan.phases):
        return {"due": False, "conditions": [], "quorum": None,
                "summary": f"phase {phase} is the last phase of the plan"}
    transition = plan.transition(phase, phase + 1)
    now = datetime.now(UTC)
    days = history_days(list(transition.conditions))
    results = _evaluate_all(list(transition.conditions), plan, prom, pg, now, days,
                            manual_values or {})
    report = evaluate_transition(transition, results)
    _record_and_alert(pg, report, notifications)
    _publish(report)
    out = report_to_json(report)
    out["transition_run"] = _maybe_create(report, auto_create)
    return out


def _record_and_alert(pg: PostgresConnection, report: TriggerReport, notifications: str) -> None:
    with pg.get_connection(pg.state_database) as conn:
        saved = last_trigger_state(conn, report.to_phase)
        previous = TriggerState.from_dict(saved) if saved else None
        alerts, state = alert_decision(previous, report)
        if not _send(alerts, notifications):
            state = previous or TriggerState(report.key, False, ())
        save_trigger_evaluation(conn, report.from_phase, report.to_phase, report.due,
                                report_to_json(report), state.to_dict(),
                                flow_run_id=str(flow_run.get_id() or "") or None)


def _maybe_create(report: TriggerReport, auto_create: bool) -> dict[str, Any] | None:
    """Create a phase-transition run when due and allowed, never a second one."""
    if not (report.due and auto_create):
        return None
    open_runs = open_transition_runs()
    if not should_create_transition(report, bool(open_runs), auto_create):
        return {"created": None, "open": open_runs}
    created = create_transition_run(report.to_phase, report.key)
    if created is None:
        return {"created": None, "error": "no phase-transition deployment to run"}
    return {"created": created}
