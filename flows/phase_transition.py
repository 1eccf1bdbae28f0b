"""`phase-transition`: the seed's D-Day runbook as a flow, with approvals and automatic rollback.

Runbook: guards (one step, one transition at a time, phase read from the state store) ->
approvals (CTO and CFO, two people) -> snapshot of what will change -> verified backup -> GPU
detection on every host -> vLLM redeploy (health + a real completion) -> Redis -> Cloud Run ->
load test -> metric watch -> record the phase and write the postmortem. Any failure after the
first change runs the compensation stack (each change stacks its undo before acting; they run
in policy.transition.ROLLBACK_ORDER: vLLM, Cloud Run, Redis, each restoring the snapshot and
verified), marks the run Failed and writes an incident report. Decisions live in policy/.
Each stage is a Prefect task named after it, so the UI shows the runbook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.states import Completed, State

from phasegate.blocks.systems import (
    GcpConnection,
    GpuHost,
    HttpEndpoint,
    PostgresConnection,
    PrometheusConnection,
    RedisConnection,
    load_block,
)
from phasegate.errors import (
    ApprovalExpired,
    ApprovalRejected,
    PreconditionFailed,
    SafetyStop,
    TransitionLocked,
    VerificationFailed,
)
from phasegate.flows.approvals import request_approvals
from phasegate.flows.sources import current_phase
from phasegate.policy.durations import parse_duration
from phasegate.policy.plan import Plan, Watch, load_plan
from phasegate.policy.postmortem import PostmortemFacts, render_incident, render_postmortem
from phasegate.policy.transition import (
    ROLLBACK_ORDER,
    ChangeSet,
    ContainerSpec,
    check_step,
    financial_check,
    format_redis_bytes,
    plan_changes,
    vllm_containers,
)
from phasegate.policy.watch import (
    WatchState,
    assess_value,
    progress,
    record,
    scoped_query,
    watch_verdict,
)
from phasegate.tasks import state_store
from phasegate.tasks.backup import archive_models, backup_database
from phasegate.tasks.cloud_run import apply_service_settings, read_service_settings
from phasegate.tasks.gpu_hosts import (
    container_matches,
    container_spec,
    detect_gpus,
    remove_container,
    run_argv_from_spec,
    run_container,
    stop_container,
    wait_vllm_ready,
)
from phasegate.tasks.loadtest import run_load_test
from phasegate.tasks.notifications import send_notification
from phasegate.tasks.postgres import monthly_revenue
from phasegate.tasks.prometheus import query_instant
from phasegate.tasks.redis_cache import apply_memory_config, read_memory_config
from phasegate.tasks.transitions import (
    TRANSITION_LIMIT,
    give_back_slot,
    keep_slot,
    mark_crashed,
    take_slot,
)
from phasegate.tasks.vllm import queue_depth, server_errors

__all__ = ["Run", "Target", "connect", "deploy", "one_at_a_time", "phase_transition"]

T = TypeVar("T")

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
    slot_lease_s: float = 120.0       # renewed every 40 s; a dead run's slot is given back
    switch_failures: int | None = None
    resumed_from: str | None = None   # the run that died mid-way and whose snapshot this took
    plan_path: str | None = None      # the plan file (None: the default); the load test reads it
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    timeline: list[dict[str, Any]] = field(default_factory=list)
    actions: list[tuple[str, str, str]] = field(default_factory=list)
    undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    @property
    def vllm_ports(self) -> dict[str, int]:
        """Each GPU host's base vLLM port (replica k is published on it + k)."""
        return {name: host.vllm_port for name, host in self.hosts.items()}

    def planned(self, phase: int) -> list[Target]:
        """The phase's vLLM containers as the plan lays them out on these hosts."""
        return [Target.planned(s) for s in vllm_containers(self.plan, phase, self.vllm_ports)]

    def audit(self, action: str, **detail: Any) -> None:
        """Append to the audit table (and the log)."""
        _logger().info("%s %s", action, detail or "")
        with self.pg.get_connection(self.pg.state_database) as conn:
            state_store.append_audit(conn, "phase-transition", action, detail, self.run_id)

    def step(self, name: str, fn: Callable[[], T]) -> T:
        """One runbook stage run as a task named after it, so the Prefect UI shows the
        runbook's stages with the task runs nested in each; timed and audited like `stage`.

        A task, not a subflow: a subflow costs ~1.6 s of API calls on the lab, a task ~10 ms.
        It takes no parameters (nothing, no Block or secret, is recorded as one), is never
        cached, and is not retried as a whole: the tasks inside retry what is safe to repeat."""
        with self.stage(name):
            return task(name=name, cache_policy=NO_CACHE, log_prints=True)(fn)()

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


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The flow run's logger; the module's outside a run (deploy() called by a bench)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


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
    """A PostgreSQL advisory lock AND a Prefect global concurrency slot: the second transition
    is refused whatever Prefect is configured to do.

    The lock comes first: it lives exactly as long as its holder's session, so while this run
    holds it, a taken slot can only belong to a run whose process died; that slot is given back
    (its lease id was recorded) instead of waiting for its lease to expire."""
    with run.pg.get_connection(run.pg.state_database) as conn, \
            state_store.transition_lock(conn):
        lease = _take_slot(run, conn)
        try:
            with keep_slot(lease, run.slot_lease_s):
                yield
        finally:
            give_back_slot(lease)
            state_store.mark_slot_released(conn, lease, run.run_id)


def _take_slot(run: Run, conn: psycopg.Connection[Any]) -> str:
    """The transition slot's lease id; a dead run's slot (its lease recorded) is given back."""
    lease = take_slot(run.slot_lease_s)
    if lease is None:
        for dead_lease, dead_run in state_store.unreleased_slot_leases(conn):
            give_back_slot(dead_lease)
            state_store.mark_slot_released(conn, dead_lease, run.run_id)
            run.audit("gave back the slot of a run that died", run=dead_run, lease=dead_lease)
        lease = take_slot(run.slot_lease_s)
    if lease is None:
        raise TransitionLocked(f"the '{TRANSITION_LIMIT}' concurrency slot is taken although "
                               "no phase transition holds the lock; check the limit in Prefect")
    state_store.record_slot_lease(conn, lease, run.run_id)
    return lease


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


SNAPSHOT_COMPONENTS = ("containers", "cloud_run", "redis")


def _snapshot(run: Run, changes: ChangeSet, phase: int, to_phase: int) -> dict[str, Any]:
    """The state the transition changes, stored before any change. When a run from this phase
    died mid-way (its snapshot never closed), its snapshot is the state before any change: this
    run takes it over, so its changes converge and a rollback restores the true start."""
    with run.pg.get_connection(run.pg.state_database) as conn:
        prior = state_store.interrupted_run(conn, phase)
    snap = _take_over(run, prior, to_phase) if prior else _read_live(run, changes)
    with run.pg.get_connection(run.pg.state_database) as conn:
        for component in SNAPSHOT_COMPONENTS:
            state_store.save_snapshot(conn, run.run_id, phase, component,
                                      {"value": snap[component]}, to_phase)
        if prior:
            state_store.close_snapshots(conn, prior.flow_run_id, f"resumed by {run.run_id}")
    return snap


def _read_live(run: Run, changes: ChangeSet) -> dict[str, Any]:
    names = {(s.host, s.name) for s in [*changes.vllm_before, *changes.vllm_after]}
    containers = [c for c in (container_spec(run.hosts[h], n) for h, n in sorted(names)) if c]
    return {"containers": containers, "cloud_run": read_service_settings(run.gcp),
            "redis": read_memory_config(run.redis)}


def _take_over(run: Run, prior: state_store.Interrupted, to_phase: int) -> dict[str, Any]:
    """The snapshot of a run that died mid-way, if it was going where this run goes."""
    where = f"run {prior.flow_run_id} (phase {prior.phase} -> {prior.to_phase})"
    if prior.to_phase != to_phase or set(SNAPSHOT_COMPONENTS) - prior.payloads.keys():
        raise SafetyStop(f"{where} ended without an outcome after its snapshot; finish it "
                         f"(phase {prior.phase} -> {prior.to_phase}) or restore its snapshot "
                         "with the rollback deployment first")
    mark_crashed(prior.flow_run_id, f"its process died mid-way; run {run.run_id} resumed "
                 "from its snapshot")
    run.audit("resuming an interrupted run", interrupted_run=prior.flow_run_id,
              snapshot_at=prior.at.isoformat())
    run.resumed_from = prior.flow_run_id
    return {c: prior.payloads[c]["value"] for c in SNAPSHOT_COMPONENTS}


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


def _key(t: Target) -> tuple[str, str]:
    return (t.host, t.name)


def _shares_gpus(t: Target, others: list[Target]) -> bool:
    return any(o.host == t.host and _overlaps(o.gpus, t.gpus) for o in others)


def deploy(run: Run, old: list[Target], new: list[Target]) -> None:
    """Replace the old vLLM containers by the new ones, keeping the service answering wherever
    the GPUs allow it (make before break):

    1. new containers on GPUs no old one holds start first and are awaited;
    2. the API is routed to whatever can serve during the swap (those, old containers the new
       layout does not need, and containers that already run as planned: a resumed run), and
       the containers about to stop are drained;
    3. the rest is replaced (stop, remove, run) and awaited; the API is routed to the new set;
    4. old containers whose GPUs no new one needed are drained and stopped last.
    When nothing can serve during the swap (the new layout needs every GPU) it is stop-start."""
    early = [t for t in new if not _shares_gpus(t, old)]
    for t in early:
        run_container(run.hosts[t.host], t.argv)
    _wait_ready(run, early)
    old_keys, new_keys = {_key(o) for o in old}, {_key(t) for t in new}
    kept = [t for t in new if t not in early and _key(t) in old_keys
            and container_matches(run.hosts[t.host], t.argv)]
    late = [o for o in old if _key(o) not in new_keys and not _shares_gpus(o, new)]
    staying = {_key(t) for t in early + kept} | {_key(o) for o in late}
    replaced = [o for o in old if _key(o) not in staying]
    if replaced and early + kept + late:
        _route(run, early + kept + late)
        _drain(run, replaced)
    for o in replaced:
        stop_container(run.hosts[o.host], o.name)
        remove_container(run.hosts[o.host], o.name)
    rest = [t for t in new if t not in early and t not in kept]
    for t in rest:
        run_container(run.hosts[t.host], t.argv)
    _wait_ready(run, rest + kept)
    _route(run, new)
    _drain(run, late)
    for o in late:
        stop_container(run.hosts[o.host], o.name)
        remove_container(run.hosts[o.host], o.name)


def _url(run: Run, t: Target) -> str:
    return f"http://{run.hosts[t.host].host}:{t.port}"


def _wait_ready(run: Run, targets: list[Target]) -> None:
    for t in targets:
        wait_vllm_ready(_url(run, t), t.model, timeout_s=run.vllm_ready_timeout_s)


def _route(run: Run, targets: list[Target]) -> None:
    """Point the API (its Cloud Run env, a verified rollout) at these vLLM servers only."""
    if run.gcp.vllm_urls_env:  # empty: the API finds vLLM by other means; nothing to route
        urls = [_url(run, t) for t in targets]
        apply_service_settings(run.gcp, {"vllm_urls": urls})
        run.audit("API routed", vllm_urls=urls)


def _drain(run: Run, targets: list[Target], timeout_s: float = 60.0) -> None:
    """Wait (bounded) until these servers hold no request, so stopping them fails none."""
    # An unreadable server is not serving anything: nothing to wait for.
    busy = _wait_quiet([_url(run, t) for t in targets], 0, timeout_s, unreadable_busy=False)
    if busy:
        run.audit("drain timed out; stopping anyway", urls=busy)


def _wait_quiet(urls: list[str], at_most: int, timeout_s: float,
                unreadable_busy: bool) -> list[str]:
    """Poll (bounded) each vLLM server's running + waiting requests until it holds at most
    `at_most`; the URLs still busy when `timeout_s` ran out."""
    deadline = time.monotonic() + timeout_s
    busy = list(urls)
    while busy:
        depths = {u: queue_depth(u) for u in busy}
        busy = [u for u, d in depths.items() if (unreadable_busy if d is None else d > at_most)]
        if not busy or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return busy


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


# ---------------------------------------------------------------- load test and watch


def _load_test(run: Run, to_phase: int, scale: float) -> dict[str, Any]:
    summary = run_load_test(phase=to_phase, target=run.api.url, scale=scale,
                            plan_path=run.plan_path)
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
    urls = [_url(run, Target.planned(s)) for s in changes.vllm_after]
    busy = _wait_quiet(urls, 2, timeout_s, unreadable_busy=True)
    if busy:
        run.audit("settle: backlog still present, watching anyway", urls=busy)


def _watch(run: Run, watch: Watch, changes: ChangeSet) -> WatchState:
    """Let the load test's backlog drain, then measure every interval for the watch duration;
    stop at the first breached limit."""
    _settle(run, changes)
    state = WatchState.empty([m.name for m in watch.metrics])
    artifact = create_progress_artifact(progress=0.0, key="transition-watch",
                                        description="metric watch")
    # The first window holds only samples taken after the watch began; the watch's duration
    # counts from its first measurement.
    time.sleep(watch.min_window.total_seconds())
    started = time.monotonic()
    for _ in range(watch.measurements + 1):  # bounded by the plan, not by the clock alone
        elapsed = time.monotonic() - started
        since_start = watch.min_window + timedelta(seconds=elapsed)
        for metric in watch.metrics:
            m = query_instant(run.prom, scoped_query(metric, watch, since_start))
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
    run.plan_path = plan_path
    # A real model loads in minutes (SkyServe waits 20 min); the lab's in seconds.
    run.vllm_ready_timeout_s = parse_duration(vllm_ready_timeout).total_seconds()
    run.audit("requested", current=current, target=target_phase, direction=direction,
              dry_run=dry_run)
    changes = plan_changes(plan, current, target_phase, run.vllm_ports)
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
    snap = run.step("snapshot", lambda: _snapshot(run, changes, current, target))
    try:
        run.step("backup", lambda: _backup(run, reports / "backups"))
        run.step("gpu detection", lambda: _check_gpus(run, target))
    except Exception as exc:
        _close(run, f"stopped before any change: {exc}")
        raise
    try:
        _change_and_verify(run, changes, snap, target, watch, scale)
    except Exception as exc:
        problems = _rollback(run, str(exc))
        _close(run, f"rollback incomplete: {problems}" if problems else "rolled back")
        _report(run, current, target, watch, before, reports, failure=str(exc),
                problems=problems)
        send_notification(run.notifications, f"phase {current} -> {target} rolled back",
                          f"reason: {exc}" + (f"\nrollback problems: {problems}"
                                              if problems else ""))
        raise
    with run.pg.get_connection(run.pg.state_database) as conn:
        state_store.set_phase(conn, target, f"phase-transition {run.run_id}")
    _close(run, "succeeded")
    md = _report(run, current, target, watch, before, reports, failure=None, problems=[])
    send_notification(run.notifications, f"phase {current} -> {target} done",
                      md.splitlines()[0])
    return {"outcome": "success", "phase": target, "actions": run.actions,
            "resumed_from": run.resumed_from}


def _change_and_verify(run: Run, changes: ChangeSet, snap: dict[str, Any], target: int,
                       watch: Watch, scale: float) -> None:
    """The changes, each stacking its undo first, then the load test and the watch."""
    run.step("vLLM redeploy", lambda: _redeploy_vllm(run, changes, snap))
    run.step("Redis", lambda: _apply_redis(run, changes, snap))
    run.step("Cloud Run", lambda: _apply_cloud_run(run, changes, snap))
    run.step("load test", lambda: _load_test(run, target, scale))
    run.step("metric watch", lambda: _watch(run, watch, changes))


def _close(run: Run, outcome: str) -> None:
    """Mark this run's snapshot as ended, so no later run resumes from it."""
    with run.pg.get_connection(run.pg.state_database) as conn:
        state_store.close_snapshots(conn, run.run_id, outcome)


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
    after = _key_metrics(run, watch, watch.min_window + watch.duration)  # the watch's span
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
