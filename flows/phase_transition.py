"""`phase-transition`: the seed's D-Day runbook as a flow, with approvals and automatic rollback.

Runbook: guards (one step, one transition at a time, phase read from the state store) ->
preflight (flows.doctor: every system this step needs answers, its queries return data, the
target phase's GPUs are there) -> approvals (CTO and CFO, two people) -> snapshot of what will
change -> verified backup -> GPU detection on every host -> vLLM redeploy (make before break,
policy.swap; health + a real completion) -> Redis -> Cloud Run -> load test -> metric watch ->
record the phase and write the postmortem. Any failure after the first change runs the
compensation stack (each change stacks its undo before acting; they run in
policy.transition.ROLLBACK_ORDER: vLLM, Cloud Run, Redis, each restoring the snapshot and
verified), marks the run Failed and writes an incident report. Every run ends with one
policy.outcomes.RunOutcome. Decisions live in policy/; each
stage is a Prefect task named after it, so the UI shows the runbook.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled, Completed, State

from phasegate.blocks.systems import GpuHost, PostgresConnection, ReportStore, load_block
from phasegate.errors import (
    ApprovalExpired,
    ApprovalRejected,
    ConfigError,
    PreconditionFailed,
    PreflightFailed,
    SafetyStop,
    TimeLimitExceeded,
    TransitionLocked,
)
from phasegate.flows.approvals import request_approvals
from phasegate.flows.doctor import Scope, preflight
from phasegate.flows.options import TransitionOptions
from phasegate.flows.run import REFUSALS, Run, connect, one_at_a_time, refused, shielded
from phasegate.flows.snapshot import running_containers, take_snapshot
from phasegate.flows.sources import current_phase
from phasegate.flows.verify import key_metrics, load_test, watch
from phasegate.flows.vllm_switch import deploy
from phasegate.policy.doctor import Verdict, render_table
from phasegate.policy.durations import parse_duration
from phasegate.policy.outcomes import RunOutcome
from phasegate.policy.plan import Plan, Watch, load_plan, plan_digest
from phasegate.policy.postmortem import PostmortemFacts, render_incident, render_postmortem
from phasegate.policy.transition import (
    ROLLBACK_ORDER,
    ChangeSet,
    check_step,
    financial_check,
    format_redis_bytes,
    next_phase,
    plan_changes,
)
from phasegate.tasks import state_store
from phasegate.tasks.backup import archive_models, backup_database
from phasegate.tasks.cloud_run import apply_service_settings
from phasegate.tasks.gpu_hosts import detect_gpus
from phasegate.tasks.notifications import send_notification
from phasegate.tasks.postgres import monthly_revenue
from phasegate.tasks.redis_cache import apply_memory_config
from phasegate.tasks.transitions import (
    CancelWatch,
    cancel_requested,
    resume_for_rollback,
    waiting_for_approval,
)
from phasegate.tasks.vllm import server_errors

__all__ = ["phase_transition"]


# ---------------------------------------------------------------- approval


def _evidence(run: Run, changes: ChangeSet, opts: TransitionOptions, checks: Verdict) -> str:
    lines = [f"# Phase {changes.from_phase} -> {changes.to_phase}: approval", "",
             "## What will change"]
    lines += [f"- {line}" for line in changes.describe()]
    with run.pg.get_connection(run.pg.state_database) as conn:
        report = state_store.last_trigger_report(conn, changes.to_phase)
    summary = report["summary"] if report else "no trigger evaluation recorded"
    lines += ["", "## Triggers", f"- {summary}"]
    revenue = monthly_revenue(run.pg, run.plan.business.monthly_revenue_sql)
    check = financial_check(revenue, changes.cost_after_usd, opts.cash_usd,
                            opts.monthly_burn_usd)
    lines += ["", "## Financial check (seed D-1)"]
    lines += [f"- {item.name}: **{item.status}** ({item.detail})" for item in check.items]
    lines += ["", f"## Preflight: {checks.summary}"]
    return "\n".join(lines)


def _record_answer(run: Run) -> Callable[[Any, Any], None]:
    def record_(answer: Any, decision: Any) -> None:
        with run.pg.get_connection(run.pg.state_database) as conn:
            if answer is None:
                state_store.record_approval(conn, run.run_id, ",".join(decision.missing_roles),
                                            "(nobody)", False, "expired")
            else:
                state_store.record_approval(conn, run.run_id, answer.role, answer.name,
                                            answer.approved, answer.comment)
        run.audit("approval", status=decision.status, message=decision.message,
                  name=getattr(answer, "name", None), role=getattr(answer, "role", None))
    return record_


def _approve(run: Run, changes: ChangeSet, opts: TransitionOptions, checks: Verdict) -> None:
    """Pause for the plan's approvals. Raises ApprovalRejected or ApprovalExpired."""
    timeout = opts.duration("approval_timeout") or run.plan.approvals.timeout
    poll = parse_duration(opts.approval_poll)
    with run.stage("approval"):
        request_approvals(run.plan.approvals, _evidence(run, changes, opts, checks),
                          int(timeout.total_seconds()), max(1, int(poll.total_seconds())),
                          _record_answer(run))


# ---------------------------------------------------------------- before any change


def _preflight(run: Run, changes: ChangeSet, opts: TransitionOptions) -> Verdict:
    """The doctor's checks for this step (its hosts, its queries, the target phase's GPUs),
    before anyone is asked to approve it: nobody approves a run that cannot work."""
    current, target = changes.from_phase, changes.to_phase
    scope = Scope(phases=(current, target), transitions=((min(current, target),
                                                          max(current, target)),),
                  current_phase=current,
                  gpus_needed=tuple((h.name, h.gpus) for h in run.plan.phase(target).gpu_hosts))
    verdict = preflight(run.plan, opts.prefix, opts.notifications, scope,
                        prometheus_block=opts.prometheus_block)
    create_markdown_artifact(key="transition-preflight", description=verdict.summary,
                             markdown=f"# Preflight: {verdict.summary}\n\n"
                                      f"{render_table(verdict.checks, markdown=True)}\n")
    run.audit("preflight", ok=verdict.ok, summary=verdict.summary)
    return verdict


def _backup(run: Run, backups: Path) -> None:
    db = backup_database(run.pg, backups)
    run.audit("backup database", path=str(db.path), sha256=db.sha256, rows=db.row_counts)
    for name, host in run.hosts.items():
        archive = archive_models(host, host.models_dir, f"{host.models_dir}/../backup")
        run.audit("backup models", host=name, path=archive.path, sha256=archive.sha256)


def _check_gpus(run: Run, to_phase: int) -> None:
    """Every host of the target phase has at least the GPUs the plan gives it."""
    for planned in run.plan.phase(to_phase).gpu_hosts:
        found = len(detect_gpus(run.hosts[planned.name]))
        if found < planned.gpus:
            raise PreconditionFailed(f"phase {to_phase} needs {planned.gpus} GPUs; "
                                     f"{planned.name} has {found}")


# ---------------------------------------------------------------- changes and their undo


def _redeploy_vllm(run: Run, changes: ChangeSet, snap: dict[str, Any]) -> None:
    old = running_containers(snap["containers"])
    new = list(changes.containers_after)
    run.undo.append(("vLLM", lambda: deploy(run, new, old)))
    errors_before = server_errors(run.api.url)
    deploy(run, old, new)
    errors_after = server_errors(run.api.url)
    if errors_before is not None and errors_after is not None:
        run.switch_failures = int(errors_after - errors_before)
        run.audit("failed requests during the vLLM switch", count=run.switch_failures)
    run.actions.append(("vLLM", changes.vllm_summary(before=True),
                        changes.vllm_summary(before=False)))


def _apply_redis(run: Run, changes: ChangeSet, snap: dict[str, Any]) -> None:
    # The undo restores the snapshot (not what this call found: after a resumed run that is
    # already the new value), and is stacked first so a half-applied call is undone too.
    before, after = snap["redis"], changes.redis_after
    run.undo.append(("Redis", lambda: apply_memory_config(
        run.redis, before["maxmemory"], before["maxmemory_policy"])))
    apply_memory_config(run.redis, after["maxmemory"], after["maxmemory_policy"])
    run.actions.append(("Redis", f"{format_redis_bytes(before['maxmemory'])} "
                        f"{before['maxmemory_policy']}",
                        f"{format_redis_bytes(after['maxmemory'])} {after['maxmemory_policy']}"))


def _apply_cloud_run(run: Run, changes: ChangeSet, snap: dict[str, Any]) -> None:
    before = snap["cloud_run"]
    run.undo.append(("Cloud Run", lambda: apply_service_settings(run.gcp, before)))
    apply_service_settings(run.gcp, changes.cloud_run_after)
    run.actions.append(("Cloud Run", _fmt_run(before), _fmt_run(changes.cloud_run_after)))


def _fmt_run(s: dict[str, Any]) -> str:
    return f"min={s['min_instances']} max={s['max_instances']} {s['memory']}/{s['cpu']} CPU"


def _rollback(run: Run, reason: str) -> list[str]:
    """Undo every applied change in the plan's rollback order (vLLM, Cloud Run, Redis). Each
    undo restores the snapshot and verifies itself; one failing does not stop the rest."""
    problems = []
    for name, undo in sorted(run.undo, key=lambda u: ROLLBACK_ORDER.index(u[0])):
        try:
            run.step(f"rollback {name}", undo)
        except Exception as exc:  # noqa: BLE001 - keep restoring the rest, report all
            problems.append(f"{name}: {exc}")
    run.audit("rollback done", reason=reason, problems=problems)
    return problems


# ---------------------------------------------------------------- the flow


@flow(name="phase-transition", log_prints=True)
def phase_transition(target_phase: int | None = None, plan_path: str | None = None,
                     options: TransitionOptions = TransitionOptions()  # noqa: B008 - frozen
                     ) -> dict[str, Any] | State:
    """Move the system one phase up or one planned step down, after approvals; roll back on
    any failure after the first change.

    Args:
        target_phase: The phase to move to; empty: the next one (a step down is named).
        plan_path: The plan file; empty: plans/dreamseed.yaml.
        options: Where the systems are and the run's knobs; the defaults are production's.
    """
    try:
        return _transition(target_phase, plan_path, options)
    except REFUSALS as exc:  # a guard said no before anything changed: not a crash
        return refused(exc)


def _transition(target_phase: int | None, plan_path: str | None, opts: TransitionOptions
                ) -> dict[str, Any] | State:
    plan = load_plan(plan_path)
    reports, backups = _report_dirs(opts)
    pg = load_block(PostgresConnection, f"{opts.prefix}-postgres")
    current = current_phase(pg)
    target = target_phase if target_phase is not None else next_phase(current, plan.phases)
    direction = check_step(current, target, plan.phases)
    run = connect(plan, opts.prefix, opts.notifications, [current, target],
                  opts.prometheus_block)
    run.plan_path = plan_path
    # A real model loads in minutes (SkyServe waits 20 min); the lab's in seconds.
    run.vllm_ready_timeout_s = parse_duration(opts.vllm_ready_timeout).total_seconds()
    run.audit("requested", current=current, target=target, direction=direction,
              dry_run=opts.dry_run)
    changes = plan_changes(plan, current, target, run.vllm_ports)
    _before_approval(run, changes, opts)
    ended = _ask(run, changes, opts)
    if ended is not None:
        return ended
    if opts.dry_run:
        run.ended(RunOutcome.DRY_RUN)
        return {"outcome": RunOutcome.DRY_RUN.value, "changes": changes.describe()}
    # The lock only now: a pending approval (up to a day) must not keep the rollback
    # deployment out during an incident.
    with one_at_a_time(run):
        _still_as_approved(run, changes, opts)
        limit = opts.duration("time_limit") or plan.transition(
            min(current, target), max(current, target)).time_limit
        run.deadline = time.monotonic() + limit.total_seconds()
        return _execute(run, changes, _watch_config(plan, current, target, opts),
                        opts.load_test_scale, reports, backups)


def _before_approval(run: Run, changes: ChangeSet, opts: TransitionOptions) -> None:
    """The preflight, and no second run asking for approval at the same time. Raises a
    SafetyStop (a refusal: one line, no traceback) before anyone is asked."""
    # The checks are a task that completes; a failing one refuses the run here, outside the
    # task, as a refusal.
    checks = run.step("preflight", lambda: _preflight(run, changes, opts))
    run.preflight = checks
    if not checks.ok:
        reason = f"preflight: {checks.explained}"
        run.ended(RunOutcome.STOPPED, reason)
        raise PreflightFailed(reason)
    others = waiting_for_approval(exclude=run.run_id)
    if others:
        raise TransitionLocked(f"another phase transition ({', '.join(others)}) is waiting "
                               "for its approvals: answer or cancel it first")


def _ask(run: Run, changes: ChangeSet, opts: TransitionOptions) -> State | None:
    """The approvals; None when given, else how the run ends (Rejected; Expired raises)."""
    current, target = changes.from_phase, changes.to_phase
    try:
        _approve(run, changes, opts, run.preflight)
    except ApprovalExpired:
        run.ended(RunOutcome.EXPIRED)
        raise  # Prefect ends a timed-out pause Failed whatever we return
    except ApprovalRejected as exc:
        run.ended(RunOutcome.REJECTED, str(exc))
        send_notification(opts.notifications, f"phase {current} -> {target} rejected",
                          str(exc))
        # A "no" is a clean end, not a failure: nothing was changed.
        return Completed(name="Rejected", message=str(exc))
    run.approved = (plan_digest(run.plan), changes.digest())
    run.audit("approved for", plan_sha256=run.approved[0], changes_sha256=run.approved[1])
    return None


def _still_as_approved(run: Run, changes: ChangeSet, opts: TransitionOptions) -> None:
    """Under the lock: the phase, the plan file and the change set are the ones approved
    (another run may have moved first; the file or a Block may have changed meanwhile).
    Raises SafetyStop (refused, nothing changed, people told)."""
    current, target = changes.from_phase, changes.to_phase
    now = current_phase(run.pg)
    reread = load_plan(run.plan_path)
    ports = {name: load_block(GpuHost, f"{opts.prefix}-{name}").vllm_port
             for name in run.hosts}
    problems = []
    if now != current:
        problems.append(f"the phase is {now} now, not {current}")
    if plan_digest(reread) != run.approved[0]:
        problems.append("the plan file changed after the approval")
    elif plan_changes(reread, current, target, ports).digest() != run.approved[1]:
        problems.append("the change set differs from the approved one (a Block changed)")
    if problems:
        reason = "; ".join(problems) + ": run again and ask for approval again"
        run.ended(RunOutcome.STOPPED, reason)
        send_notification(run.notifications, f"phase {current} -> {target} refused", reason)
        raise SafetyStop(reason)


def _report_dirs(opts: TransitionOptions) -> tuple[Path, Path]:
    """(reports, backups): the option's directory, else the `<prefix>-reports` Block's."""
    if opts.reports_dir:
        return Path(opts.reports_dir), Path(opts.reports_dir) / "backups"
    try:
        store = load_block(ReportStore, f"{opts.prefix}-reports")
    except ValueError as exc:
        raise ConfigError(f"no ReportStore Block '{opts.prefix}-reports': save one with the "
                          "directories for reports and database backups (never the code's "
                          "checkout), or set options.reports_dir") from exc
    return Path(store.reports_dir), Path(store.backups_dir)


def _watch_config(plan: Plan, current: int, target: int, opts: TransitionOptions) -> Watch:
    """The plan's watch for this step, with the run's (time-compressed) overrides."""
    base = plan.transition(min(current, target), max(current, target)).watch
    given = {key: opts.duration(f"watch_{key}") for key in ("duration", "interval",
                                                             "min_window")}
    return base.model_copy(update={k: v for k, v in given.items() if v is not None})


def _execute(run: Run, changes: ChangeSet, plan_watch: Watch, scale: float, reports: Path,
             backups: Path) -> dict[str, Any] | State:
    current, target = changes.from_phase, changes.to_phase
    before = key_metrics(run, plan_watch)
    with CancelWatch(run.run_id, deadline=run.deadline) as cancel:
        snap = run.step("snapshot", lambda: take_snapshot(run, changes, current, target))
        try:
            run.guard("the backup")
            run.step("backup", lambda: _backup(run, backups))
            run.step("gpu detection", lambda: _check_gpus(run, target))
        except BaseException as caught:
            exc = _as_failure(caught, cancel)
            return _stopped_before_change(run, changes, exc, _cancel_cause(run, exc, cancel))
        try:
            _change_and_verify(run, changes, snap, plan_watch, scale)
            cancel.stop_watching()  # inside the try: a last-moment interrupt still rolls back
        except BaseException as caught:
            exc = _as_failure(caught, cancel)
            cause = _cancel_cause(run, exc, cancel)
            if cause is None and not isinstance(exc, Exception):
                raise  # SystemExit and the like: not ours to handle
            cancel.stop_watching()  # the rollback is not interrupted by our own watch
            outcome = _after_failure(run, changes, plan_watch, before, reports, exc, cause)
            if cause is None and exc is caught:
                raise
            if cause is None:
                raise exc from caught
            done = (outcome.label if outcome is RunOutcome.ROLLBACK_INCOMPLETE else
                    "every change rolled back and verified")
            return Cancelled(message=f"{cause}; {done}")
    run.guard("recording the new phase")
    with run.pg.get_connection(run.pg.state_database) as conn:
        state_store.set_phase(conn, target, f"phase-transition {run.run_id}")
    run.ended(RunOutcome.SUCCEEDED)
    md = _report(run, changes, plan_watch, before, reports, RunOutcome.SUCCEEDED)
    send_notification(run.notifications, f"phase {current} -> {target} done",
                      md.splitlines()[0] if md else f"now in phase {target}")
    return {"outcome": RunOutcome.SUCCEEDED.value, "phase": target, "actions": run.actions,
            "resumed_from": run.resumed_from}


def _as_failure(exc: BaseException, cancel: CancelWatch) -> BaseException:
    """The SIGTERM our own watch sent at the time limit is a failure (TimeLimitExceeded, which
    rolls back and ends Failed), not a cancel by someone."""
    if cancel.timed_out and isinstance(exc, TerminationSignal):
        return TimeLimitExceeded("the run passed its time limit (the plan's transition "
                                 "time_limit, or the run's option) and was interrupted")
    return exc


def _cancel_cause(run: Run, exc: BaseException, cancel: CancelWatch) -> str | None:
    """Who stopped the run, when `exc` is a cancel (Ctrl-C, SIGTERM from a worker acting on
    the UI's Cancel, or our own watch); None for an ordinary failure."""
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled with Ctrl-C (SIGINT) in the terminal that ran it"
    if not isinstance(exc, TerminationSignal):
        return None
    return (cancel.reason or cancel_requested(run.run_id)
            or "stopped by SIGTERM (not a Prefect cancel: e.g. a worker shutting down)")


def _stopped_before_change(run: Run, changes: ChangeSet, exc: BaseException,
                           cause: str | None) -> State:
    """Nothing was changed yet: record STOPPED (or CANCELLED) and end; raise a failure."""
    if cause is None:
        run.ended(RunOutcome.STOPPED, f"stopped before any change: {exc}")
        raise exc
    run.ended(RunOutcome.CANCELLED, f"{cause}; before any change")
    send_notification(run.notifications, f"phase {changes.from_phase} -> {changes.to_phase} "
                      "cancelled", f"{cause}; nothing had been changed")
    return Cancelled(message=f"{cause}; nothing had been changed")


def _change_and_verify(run: Run, changes: ChangeSet, snap: dict[str, Any], plan_watch: Watch,
                       scale: float) -> None:
    """The changes, each stacking its undo first, then the load test and the watch; before
    each, the lock and the time limit are checked (Run.guard)."""
    stages: list[tuple[str, Callable[[], object]]] = [
        ("vLLM redeploy", lambda: _redeploy_vllm(run, changes, snap)),
        ("Redis", lambda: _apply_redis(run, changes, snap)),
        ("Cloud Run", lambda: _apply_cloud_run(run, changes, snap)),
        ("load test", lambda: load_test(run, changes.to_phase, scale)),
        ("metric watch", lambda: watch(run, plan_watch, changes)),
    ]
    for name, stage in stages:
        run.guard(name)
        run.step(name, stage)


def _after_failure(run: Run, changes: ChangeSet, plan_watch: Watch,
                   before: dict[str, tuple[float | None, str]], reports: Path,
                   exc: BaseException, cause: str | None) -> RunOutcome:
    """Roll back (shielded from a cancel or a second signal), record the outcome, write the
    incident report and tell people. `cause`: who cancelled, when it was a cancel."""
    failure = cause or str(exc) or type(exc).__name__
    with shielded("the rollback"):
        if cause is not None:  # Prefect starts no task in a Cancelling run: Running again
            resume_for_rollback(run.run_id, f"{cause}; rolling back")
        problems = _rollback(run, failure)
        outcome = (RunOutcome.ROLLBACK_INCOMPLETE if problems else
                   RunOutcome.CANCELLED if cause else RunOutcome.ROLLED_BACK)
        run.ended(outcome, "; ".join([*([cause] if cause else []), *problems]))
        _report(run, changes, plan_watch, before, reports, outcome, failure=failure,
                problems=problems)
        send_notification(run.notifications,
                          f"phase {changes.from_phase} -> {changes.to_phase} {outcome.label}",
                          f"reason: {failure}" +
                          (f"\nrollback problems: {problems}" if problems else ""))
    return outcome


def _report(run: Run, changes: ChangeSet, plan_watch: Watch,
            before: dict[str, tuple[float | None, str]], reports: Path, outcome: RunOutcome,
            failure: str | None = None, problems: list[str] | None = None) -> str | None:
    """Render, publish and store the postmortem (or the incident report); its markdown, or
    None when that failed: the run's outcome is already recorded, and a report that cannot
    be written must not hide why the run ended (the audit table says what went wrong)."""
    try:
        return _write_report(run, changes, plan_watch, before, reports, outcome, failure,
                             problems or [])
    except Exception as exc:  # noqa: BLE001 - recorded; the run's own outcome stands
        run.audit("report failed", error=f"{type(exc).__name__}: {exc}")
        return None


def _write_report(run: Run, changes: ChangeSet, plan_watch: Watch,
                  before: dict[str, tuple[float | None, str]], reports: Path,
                  outcome: RunOutcome, failure: str | None, problems: list[str]) -> str:
    facts = _facts(run, changes, plan_watch, before, outcome, failure, problems)
    md = render_incident(facts) if failure else render_postmortem(facts)
    kind = "incident" if failure else "postmortem"
    create_markdown_artifact(key=f"transition-{kind}", markdown=md)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{kind}-{changes.from_phase}-to-{changes.to_phase}-{run.run_id}.md"
     ).write_text(md)
    with run.pg.get_connection(run.pg.state_database) as conn:
        state_store.save_postmortem(conn, run.run_id, changes.from_phase, changes.to_phase,
                                    outcome, md, facts.to_dict())
    return md


def _facts(run: Run, changes: ChangeSet, plan_watch: Watch,
           before: dict[str, tuple[float | None, str]], outcome: RunOutcome,
           failure: str | None, problems: list[str]) -> PostmortemFacts:
    after = key_metrics(run, plan_watch, plan_watch.min_window + plan_watch.duration)
    with run.pg.get_connection(run.pg.state_database) as conn:
        approvals = state_store.list_approvals(conn, run.run_id)
        report = state_store.last_trigger_report(conn, changes.to_phase)
    triggered = [f"{c['text']} (latest {c['latest_value']})" for c in
                 (report["conditions"] if report else []) if c["verdict"] == "met"]
    if run.switch_failures is not None:
        problems = [*problems, f"failed requests during the vLLM switch: {run.switch_failures}"]
    return PostmortemFacts(
        from_phase=changes.from_phase, to_phase=changes.to_phase, started=run.started,
        ended=datetime.now(UTC), owner="phase-transition", triggered_conditions=triggered,
        actions=run.actions,
        metrics={k: (before[k][0], after[k][0], unit) for k, (_, unit) in before.items()},
        cost_expected=run.plan.phase(changes.to_phase).monthly_cost_usd, cost_actual=None,
        approvals=approvals, timeline=run.timeline, problems=problems,
        rollback_reason=failure, outcome=outcome)
