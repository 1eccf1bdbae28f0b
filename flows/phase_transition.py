"""`phase-transition`: the seed's D-Day runbook as a flow, with approvals and automatic rollback.

Runbook: guards (one step, one transition at a time, phase read from the state store) ->
approvals (CTO and CFO, two people) -> snapshot of what will change -> verified backup -> GPU
detection on every host -> vLLM redeploy (health + a real completion) -> Redis -> Cloud Run ->
load test -> metric watch -> record the phase and write the postmortem. Any failure after the
first change runs the compensation stack in reverse (vLLM, Cloud Run, Redis are restored and
verified), marks the run Failed and writes an incident report. Decisions live in policy/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run
from prefect.states import Completed, State

from blocks.systems import (
    GcpConnection,
    GpuHost,
    HttpEndpoint,
    PostgresConnection,
    PrometheusConnection,
    RedisConnection,
    load_block,
)
from flows.approvals import request_approvals
from flows.sources import current_phase
from phasegate.errors import (
    ApprovalExpired,
    ApprovalRejected,
    PhasegateError,
    PreconditionFailed,
    RemoteTimeout,
    SafetyStop,
    TransitionLocked,
    VerificationFailed,
)
from policy.durations import parse_duration
from policy.plan import Plan, Watch, load_plan
from policy.postmortem import PostmortemFacts, render_incident, render_postmortem
from policy.transition import (
    ChangeSet,
    ContainerSpec,
    check_step,
    financial_check,
    format_redis_bytes,
    plan_changes,
)
from policy.watch import (
    WatchState,
    assess_value,
    progress,
    record,
    scoped_query,
    watch_verdict,
)
from tasks import state_store
from tasks.backup import archive_models, backup_database
from tasks.cloud_run import apply_service_settings, read_service_settings
from tasks.gpu_hosts import (
    container_spec,
    detect_gpus,
    remove_container,
    run_argv_from_spec,
    run_container,
    stop_container,
    wait_vllm_ready,
)
from tasks.loadtest import run_load_test
from tasks.notifications import send_notification
from tasks.postgres import monthly_revenue
from tasks.prometheus import query_instant
from tasks.redis_cache import apply_memory_config, read_memory_config
from tasks.transitions import TRANSITION_LIMIT
from tasks.vllm import queue_depth, server_errors

__all__ = ["Run", "Target", "connect", "deploy", "one_at_a_time", "phase_transition"]

@dataclass
class Run:
    """What one transition run works with, and what it has done so far."""

    plan: Plan
    pg: PostgresConnection
    prom: PrometheusConnection
    redis: RedisConnection
    gcp: GcpConnection
    api: HttpEndpoint
    hosts: dict[str, GpuHost]
    notifications: str
    run_id: str
    vllm_ready_timeout_s: float = 600.0
    switch_failures: int | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    timeline: list[dict[str, Any]] = field(default_factory=list)
    actions: list[tuple[str, str, str]] = field(default_factory=list)
    undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def audit(self, action: str, **detail: Any) -> None:
        """Append to the audit table (and the log)."""
        get_run_logger().info("%s %s", action, detail or "")
        with self.pg.get_connection(self.pg.state_database) as conn:
            state_store.append_audit(conn, "phase-transition", action, detail, self.run_id)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage into the timeline and the audit log; failures are recorded too."""
        start = datetime.now(UTC)
        self.audit(f"stage {name}: started")
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = f"failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            self.timeline.append({"stage": name, "start": start, "end": datetime.now(UTC),
                                  "outcome": outcome})
            self.audit(f"stage {name}: {outcome}")


def connect(plan: Plan, prefix: str, notifications: str, phases: list[int],
             prometheus_block: str | None = None) -> Run:
    hosts = {h.name for p in phases for h in plan.phase(p).gpu_hosts}
    return Run(plan=plan, pg=load_block(PostgresConnection, f"{prefix}-postgres"),
               prom=load_block(PrometheusConnection, prometheus_block or f"{prefix}-prometheus"),
               redis=load_block(RedisConnection, f"{prefix}-redis"),
               gcp=load_block(GcpConnection, f"{prefix}-gcp"),
               api=load_block(HttpEndpoint, f"{prefix}-api"),
               hosts={h: load_block(GpuHost, f"{prefix}-{h}") for h in sorted(hosts)},
               notifications=notifications, run_id=str(flow_run.get_id() or "local"))


# ---------------------------------------------------------------- guards and approval


@contextmanager
def one_at_a_time(run: Run) -> Iterator[None]:
    """A Prefect global concurrency limit (strict) AND a PostgreSQL advisory lock: the second
    transition is refused whatever Prefect is configured to do."""
    try:
        with concurrency(TRANSITION_LIMIT, occupy=1, timeout_seconds=10, strict=True), \
                run.pg.get_connection(run.pg.state_database) as conn, \
                state_store.transition_lock(conn):
            yield
    except TimeoutError as exc:
        if _slots_taken():
            raise TransitionLocked("another phase transition is running (concurrency limit "
                                   f"'{TRANSITION_LIMIT}' is taken)") from exc
        # The slot was free: the API was too slow to grant it. Safe to retry the run.
        raise RemoteTimeout(f"Prefect did not grant the '{TRANSITION_LIMIT}' slot in "
                            "10 s although it is free; run again") from exc


def _slots_taken() -> bool:
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(TRANSITION_LIMIT)
    return limit.active_slots >= limit.limit


def _evidence(run: Run, changes: ChangeSet, from_phase: int, to_phase: int,
              cash_usd: float | None, burn_usd: float | None) -> str:
    lines = [f"# Phase {from_phase} -> {to_phase}: approval", "", "## What will change"]
    lines += [f"- {line}" for line in changes.describe()]
    with run.pg.get_connection(run.pg.state_database) as conn:
        report = state_store.last_trigger_report(conn, to_phase)
    summary = report["summary"] if report else "no trigger evaluation recorded"
    lines += ["", "## Triggers", f"- {summary}"]
    check = financial_check(monthly_revenue(run.pg), changes.cost_after_usd, cash_usd, burn_usd)
    lines += ["", "## Financial check (seed D-1)"]
    lines += [f"- {item.name}: **{item.status}** ({item.detail})" for item in check.items]
    return "\n".join(lines)


def _record_answer(run: Run) -> Callable[[Any, Any], None]:
    def record_(answer: Any, decision: Any) -> None:
        with run.pg.get_connection(run.pg.state_database) as conn:
            if answer is None:
                state_store.record_approval(conn, run.run_id, ",".join(decision.missing),
                                            "(nobody)", False, "expired")
            else:
                state_store.record_approval(conn, run.run_id, answer.role, answer.name,
                                            answer.approved, answer.comment)
        run.audit("approval", status=decision.status, message=decision.message,
                  name=getattr(answer, "name", None), role=getattr(answer, "role", None))
    return record_


# ---------------------------------------------------------------- snapshot, backup, GPUs


def _snapshot(run: Run, specs: list[ContainerSpec], phase: int) -> dict[str, Any]:
    """The live state the transition changes, stored before any change."""
    names = {(s.host, s.name) for s in specs}
    containers = [c for c in (container_spec(run.hosts[h], n) for h, n in sorted(names)) if c]
    snap = {"containers": containers, "cloud_run": read_service_settings(run.gcp),
            "redis": read_memory_config(run.redis)}
    with run.pg.get_connection(run.pg.state_database) as conn:
        for component in ("containers", "cloud_run", "redis"):
            state_store.save_snapshot(conn, run.run_id, phase, component,
                                      {"value": snap[component]})
    return snap


def _backup(run: Run, backup_dir: Path) -> None:
    db = backup_database(run.pg, backup_dir)
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


@dataclass(frozen=True)
class Target:
    """A vLLM container to have running: where, on which GPUs, how to start it."""

    host: str
    name: str
    gpus: list[int] | str          # device indices, or "all" (as the phase-1 host runs it)
    argv: list[str]
    port: int
    model: str

    @classmethod
    def planned(cls, spec: ContainerSpec) -> Target:
        """From the plan (policy.transition)."""
        return cls(spec.host, spec.name, list(spec.gpus), spec.docker_args(), spec.host_port,
                   spec.served_model_name)

    @classmethod
    def recorded(cls, c: dict[str, Any]) -> Target:
        """From a snapshot (docker inspect): recreated exactly as it ran."""
        args = list(c["args"])
        opts = dict(zip(args[::2], args[1::2], strict=False))
        model = opts.get("--served-model-name") or opts.get("--model", "")
        return cls(c["host"], c["name"], c["gpus"], run_argv_from_spec(c), int(c["host_port"]),
                   model)


def _overlaps(a: list[int] | str, b: list[int] | str) -> bool:
    return isinstance(a, str) or isinstance(b, str) or bool(set(a) & set(b))


def deploy(run: Run, old: list[Target], new: list[Target]) -> None:
    """Replace the old vLLM containers by the new ones. New containers whose GPUs no old one
    holds start first, so the service keeps answering wherever the GPUs allow it."""
    early = [n for n in new if not any(o.host == n.host and _overlaps(o.gpus, n.gpus)
                                       for o in old)]
    for t in early:
        run_container(run.hosts[t.host], t.argv)
    keep = {(t.host, t.name) for t in early}
    for o in old:
        if (o.host, o.name) not in keep:
            stop_container(run.hosts[o.host], o.name)
            remove_container(run.hosts[o.host], o.name)
    for t in new:
        if (t.host, t.name) not in keep:
            run_container(run.hosts[t.host], t.argv)
    for t in new:
        wait_vllm_ready(f"http://{run.hosts[t.host].host}:{t.port}", t.model,
                        timeout_s=run.vllm_ready_timeout_s)


def _redeploy_vllm(run: Run, changes: ChangeSet, snap: dict[str, Any]) -> None:
    old = [Target.recorded(c) for c in snap["containers"]]
    new = [Target.planned(s) for s in changes.vllm_after]
    run.undo.append(("vLLM", lambda: deploy(run, new, old)))
    errors_before = server_errors(run.api.url)
    deploy(run, old, new)
    errors_after = server_errors(run.api.url)
    if errors_before is not None and errors_after is not None:
        run.switch_failures = int(errors_after - errors_before)
        run.audit("failed requests during the vLLM switch", count=run.switch_failures)
    run.actions.append(("vLLM", changes.vllm_summary(before=True),
                        changes.vllm_summary(before=False)))


def _apply_redis(run: Run, changes: ChangeSet) -> None:
    after = changes.redis_after
    result = apply_memory_config(run.redis, after["maxmemory"], after["maxmemory_policy"])
    before = result["before"]
    run.undo.append(("Redis", lambda: apply_memory_config(
        run.redis, before["maxmemory"], before["maxmemory_policy"])))
    run.actions.append(("Redis", f"{format_redis_bytes(before['maxmemory'])} "
                        f"{before['maxmemory_policy']}",
                        f"{format_redis_bytes(after['maxmemory'])} {after['maxmemory_policy']}"))


def _apply_cloud_run(run: Run, changes: ChangeSet) -> None:
    result = apply_service_settings(run.gcp, changes.cloud_run_after)
    before = result["before"]
    run.undo.append(("Cloud Run", lambda: apply_service_settings(run.gcp, before)))
    run.actions.append(("Cloud Run", _fmt_run(before), _fmt_run(changes.cloud_run_after)))


def _fmt_run(s: dict[str, Any]) -> str:
    return f"min={s['min_instances']} max={s['max_instances']} {s['memory']}/{s['cpu']} CPU"


def _rollback(run: Run, reason: str) -> list[str]:
    """Undo every applied change, newest first (vLLM, Cloud Run, Redis in that order since they
    were applied in reverse). Each undo verifies itself; one failing does not stop the rest."""
    problems = []
    for name, undo in reversed(run.undo):
        try:
            with run.stage(f"rollback {name}"):
                undo()
        except Exception as exc:  # noqa: BLE001 - keep restoring the rest, report all
            problems.append(f"{name}: {exc}")
    run.audit("rollback done", reason=reason, problems=problems)
    return problems


# ---------------------------------------------------------------- load test and watch


def _load_test(run: Run, to_phase: int, scale: float) -> dict[str, Any]:
    summary = run_load_test(phase=to_phase, target=run.api.url, scale=scale)
    if summary["exit_code"] != 0:
        failed = [f"{name}: {expr} (observed {v.get('observed')})"
                  for name, stats in summary.get("metrics", {}).items()
                  for expr, v in stats.get("thresholds", {}).items() if not v.get("ok", True)]
        raise VerificationFailed(f"load test failed (exit {summary['exit_code']}): "
                                 f"{'; '.join(failed) or summary.get('abort_reason')}")
    return summary


def _settle(run: Run, changes: ChangeSet, timeout_s: float = 120.0) -> None:
    """Wait (bounded) until the load test's backlog has drained from every vLLM server, so the
    watch measures the service under its own traffic, not the load test's tail."""
    urls = [f"http://{run.hosts[s.host].host}:{s.host_port}" for s in changes.vllm_after]
    deadline = time.monotonic() + timeout_s
    depths: list[int | None] = []
    while time.monotonic() < deadline:
        depths = [queue_depth(u) for u in urls]
        if all(d is not None and d <= 2 for d in depths):
            return
        time.sleep(1.0)
    run.audit("settle: backlog still present, watching anyway", depths=depths)


def _watch(run: Run, watch: Watch) -> WatchState:
    """Measure every interval for the watch duration; stop at the first breached limit."""
    state = WatchState.empty([m.name for m in watch.metrics])
    artifact = create_progress_artifact(progress=0.0, key="transition-watch",
                                        description="metric watch")
    started = time.monotonic()
    time.sleep(watch.min_window.total_seconds())  # the first window: only samples from now on
    for _ in range(watch.measurements + 1):  # bounded by the plan, not by the clock alone
        elapsed = time.monotonic() - started
        for metric in watch.metrics:
            m = query_instant(run.prom, scoped_query(metric, watch, timedelta(seconds=elapsed)))
            state = record(state, metric.name, assess_value(metric, m.value, m.error),
                           m.value, m.error, elapsed)
        decision = watch_verdict(state, watch, elapsed)
        update_progress_artifact(artifact_id=artifact,  # type: ignore[arg-type]
                                 progress=progress(state, watch, elapsed)["percent"])
        if decision.status != "running":
            break
        time.sleep(watch.interval.total_seconds())
    run.audit("watch", verdict=decision.status, reason=decision.reason)
    if decision.status != "successful":
        raise VerificationFailed(f"metric watch {decision.status}: {decision.reason}")
    return state


# ---------------------------------------------------------------- the flow


@flow(name="phase-transition", log_prints=True)
def phase_transition(target_phase: int, plan_path: str | None = None, dry_run: bool = False,
                     watch_duration: str | None = None, watch_interval: str | None = None,
                     watch_min_window: str | None = None,
                     load_test_scale: float = 1.0, approval_timeout: str | None = None,
                     approval_poll: str = "2s", prefix: str = "lab",
                     notifications: str = "custom-webhook/lab-slack",
                     reports_dir: str = "reports",
                     vllm_ready_timeout: str = "10m", cash_usd: float | None = None,
                     monthly_burn_usd: float | None = None,
                     prometheus_block: str | None = None) -> dict[str, Any] | State:
    """Move the system one phase up (or down) after approvals; roll back on any failure."""
    plan = load_plan(plan_path)
    pg = load_block(PostgresConnection, f"{prefix}-postgres")
    current = current_phase(pg)
    direction = check_step(current, target_phase, plan.phases)
    run = connect(plan, prefix, notifications, [current, target_phase], prometheus_block)
    # A real model loads in minutes (SkyServe waits 20 min); the lab's in seconds.
    run.vllm_ready_timeout_s = parse_duration(vllm_ready_timeout).total_seconds()
    run.audit("requested", current=current, target=target_phase, direction=direction,
              dry_run=dry_run)
    changes = plan_changes(plan, current, target_phase,
                           {name: host.vllm_port for name, host in run.hosts.items()})
    with one_at_a_time(run):
        if current_phase(pg) != current:  # re-read under the lock: someone moved first
            raise SafetyStop(f"phase changed to {current_phase(pg)} meanwhile; run again")
        timeout = parse_duration(approval_timeout) if approval_timeout else plan.approvals.timeout
        try:
            with run.stage("approval"):
                request_approvals(plan.approvals, _evidence(run, changes, current,
                                                            target_phase, cash_usd,
                                                            monthly_burn_usd),
                                  int(timeout.total_seconds()),
                                  int(parse_duration(approval_poll).total_seconds()),
                                  _record_answer(run))
        except ApprovalExpired:
            raise  # Prefect ends a timed-out pause Failed whatever we return
        except ApprovalRejected as exc:
            send_notification(notifications, f"phase {current} -> {target_phase} rejected",
                              str(exc))
            # A "no" is a clean end, not a failure: nothing was changed.
            return Completed(name="Rejected", message=str(exc))
        if dry_run:
            return {"outcome": "dry-run", "changes": changes.describe()}
        watch = _watch_config(plan, current, target_phase, watch_duration, watch_interval,
                              watch_min_window)
        return _execute(run, changes, current, target_phase, watch, load_test_scale,
                        Path(reports_dir))


def _watch_config(plan: Plan, current: int, target: int, duration: str | None,
                  interval: str | None, min_window: str | None) -> Watch:
    """The plan's watch for this step, with the run's (time-compressed) overrides."""
    base = plan.transition(min(current, target), max(current, target)).watch
    given = {"duration": duration, "interval": interval, "min_window": min_window}
    return base.model_copy(update={k: parse_duration(v) for k, v in given.items() if v})


def _execute(run: Run, changes: ChangeSet, current: int, target: int, watch: Watch,
             scale: float, reports: Path) -> dict[str, Any]:
    before = _key_metrics(run, watch)
    with run.stage("snapshot"):
        snap = _snapshot(run, [*changes.vllm_before, *changes.vllm_after], current)
    with run.stage("backup"):
        _backup(run, reports / "backups")
    with run.stage("gpu detection"):
        _check_gpus(run, target)
    try:
        with run.stage("vLLM redeploy"):
            _redeploy_vllm(run, changes, snap)
        with run.stage("Redis"):
            _apply_redis(run, changes)
        with run.stage("Cloud Run"):
            _apply_cloud_run(run, changes)
        with run.stage("load test"):
            _load_test(run, target, scale)
        with run.stage("metric watch"):
            _settle(run, changes)
            _watch(run, watch)
    except (PhasegateError, Exception) as exc:
        problems = _rollback(run, str(exc))
        _report(run, current, target, watch, before, reports, failure=str(exc),
                problems=problems)
        send_notification(run.notifications, f"phase {current} -> {target} rolled back",
                          f"reason: {exc}" + (f"\nrollback problems: {problems}"
                                              if problems else ""))
        raise
    with run.pg.get_connection(run.pg.state_database) as conn:
        state_store.set_phase(conn, target, f"phase-transition {run.run_id}")
    md = _report(run, current, target, watch, before, reports, failure=None, problems=[])
    send_notification(run.notifications, f"phase {current} -> {target} done",
                      md.splitlines()[0])
    return {"outcome": "success", "phase": target, "actions": run.actions}


def _key_metrics(run: Run, watch: Watch,
                 window: timedelta | None = None) -> dict[str, tuple[float | None, str]]:
    """The watch's own metrics (API p95, GPU utilisation, error rate, LLM queue) right now, for
    the postmortem's before/after: as the plan writes them, or over the last `window` only."""
    queries = {m.name: scoped_query(m, watch, window) if window else m.query
               for m in watch.metrics}
    return {m.name: (query_instant(run.prom, queries[m.name]).value, m.unit)
            for m in watch.metrics}


def _report(run: Run, current: int, target: int, watch: Watch,
            before: dict[str, tuple[float | None, str]], reports: Path, failure: str | None,
            problems: list[str]) -> str:
    after = _key_metrics(run, watch, watch.duration)  # the watch's span, not the switch
    with run.pg.get_connection(run.pg.state_database) as conn:
        approvals = state_store.list_approvals(conn, run.run_id)
        report = state_store.last_trigger_report(conn, target)
    triggered = [f"{c['text']} (latest {c['latest_value']})" for c in
                 (report["conditions"] if report else []) if c["verdict"] == "met"]
    if run.switch_failures is not None:
        problems = [*problems, f"failed requests during the vLLM switch: {run.switch_failures}"]
    facts = PostmortemFacts(
        from_phase=current, to_phase=target, started=run.started, ended=datetime.now(UTC),
        owner="phase-transition", triggered_conditions=triggered, actions=run.actions,
        metrics={k: (before[k][0], after[k][0], unit) for k, (_, unit) in before.items()},
        cost_expected=run.plan.phase(target).monthly_cost_usd, cost_actual=None,
        approvals=approvals, timeline=run.timeline, problems=problems, rollback_reason=failure)
    md = render_incident(facts) if failure else render_postmortem(facts)
    create_markdown_artifact(key="transition-postmortem" if not failure else "transition-incident",
                             markdown=md)
    reports.mkdir(parents=True, exist_ok=True)
    kind = "incident" if failure else "postmortem"
    (reports / f"{kind}-{current}-to-{target}-{run.run_id}.md").write_text(md)
    with run.pg.get_connection(run.pg.state_database) as conn:
        state_store.save_postmortem(conn, run.run_id, current, target,
                                    "rolled_back" if failure else "success", md, {})
    return md
