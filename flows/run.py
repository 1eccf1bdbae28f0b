"""One transition run's working set: its systems (Blocks), its stages as Prefect tasks, its
audit trail, and the guard that lets one transition run at a time. Shared by the
`phase-transition` and `rollback` flows."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.states import Failed, State

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
    LockLost,
    PlanError,
    SafetyStop,
    TimeLimitExceeded,
    TransitionLocked,
)
from phasegate.policy.containers import Container
from phasegate.policy.outcomes import RunOutcome
from phasegate.policy.plan import Plan
from phasegate.policy.transition import vllm_containers
from phasegate.tasks import state_store
from phasegate.tasks.transitions import (
    TRANSITION_LIMIT,
    flow_run_ended,
    give_back_slot,
    keep_slot,
    take_slot,
)

__all__ = ["REFUSALS", "Run", "connect", "logger", "one_at_a_time", "refused", "refusal_reason",
           "shielded"]

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
    actor: str = "phase-transition"
    vllm_ready_timeout_s: float = 600.0
    # Prefect's shortest lease, renewed every 20 s: a dead run's slot comes back within about
    # 75 s (the lease plus the server's 15 s repossessor loop) even without our give-back.
    slot_lease_s: float = 60.0
    switch_failures: int | None = None
    resumed_from: str | None = None   # the run that died mid-way and whose snapshot this took
    plan_path: str | None = None      # the plan file (None: the default); the load test reads it
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    timeline: list[dict[str, Any]] = field(default_factory=list)
    actions: list[tuple[str, str, str]] = field(default_factory=list)
    undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    preflight: Any = None             # the preflight's Verdict (shown with the approval)
    approved: tuple[str, str] = ("", "")  # (plan sha256, change set sha256) approved
    lock_conn: psycopg.Connection[Any] | None = None  # the session holding the lock
    deadline: float | None = None     # time.monotonic() by which the run must be done

    def guard(self, before: str) -> None:
        """Before a change: the lock is still this run's and the time limit not passed.
        Raises LockLost or TimeLimitExceeded (both roll back what was done so far)."""
        if self.lock_conn is not None and not state_store.lock_held(self.lock_conn):
            raise LockLost(f"the transition lock's PostgreSQL session is gone (before "
                           f"{before}): another run could take the lock; stopping")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeLimitExceeded(f"the run passed its time limit before {before}")

    @property
    def vllm_ports(self) -> dict[str, int]:
        """Each GPU host's base vLLM port (replica k is published on it + k)."""
        return {name: host.vllm_port for name, host in self.hosts.items()}

    def planned(self, phase: int) -> list[Container]:
        """The phase's vLLM containers as the plan lays them out on these hosts."""
        return vllm_containers(self.plan, phase, self.vllm_ports)

    def url(self, container: Container) -> str:
        """The base URL of a vLLM container (its host's address, its published port)."""
        return f"http://{self.hosts[container.host].host}:{container.host_port}"

    def audit(self, action: str, **detail: Any) -> None:
        """Append to the audit table (and the log)."""
        logger().info("%s %s", action, detail or "")
        with self.pg.get_connection(self.pg.state_database) as conn:
            state_store.append_audit(conn, self.actor, action, detail, self.run_id)

    def ended(self, outcome: RunOutcome, detail: str = "") -> None:
        """Record how the run ended: its snapshot, if it took one, is closed (no later run
        resumes from it) unless a restore failed, and the audit table says so."""
        if outcome is not RunOutcome.ROLLBACK_INCOMPLETE:  # else: still the truth of before
            with self.pg.get_connection(self.pg.state_database) as conn:
                state_store.close_snapshots(conn, self.run_id, outcome, detail)
        self.audit("outcome", outcome=outcome.value, detail=detail)

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


def logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The flow run's logger; the module's outside a run (a bench calling deploy())."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("phasegate.flows")


def connect(plan: Plan, prefix: str, notifications: str, phases: list[int],
            prometheus_block: str | None = None, actor: str = "phase-transition") -> Run:
    """A Run with the Blocks `<prefix>-*` of every system the phases use."""
    hosts = {h.name for p in phases for h in plan.phase(p).gpu_hosts}
    return Run(plan=plan, pg=load_block(PostgresConnection, f"{prefix}-postgres"),
               prom=load_block(PrometheusConnection, prometheus_block or f"{prefix}-prometheus"),
               redis=load_block(RedisConnection, f"{prefix}-redis"),
               gcp=load_block(GcpConnection, f"{prefix}-gcp"),
               api=load_block(HttpEndpoint, f"{prefix}-api"),
               hosts={h: load_block(GpuHost, f"{prefix}-{h}") for h in sorted(hosts)},
               notifications=notifications, run_id=str(flow_run.get_id() or "local"),
               actor=actor)


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
        run.lock_conn = conn
        try:
            with keep_slot(lease, run.slot_lease_s):
                yield
        finally:
            run.lock_conn = None
            give_back_slot(lease)
            _mark_released(run, lease)


def _take_slot(run: Run, conn: psycopg.Connection[Any]) -> str:
    """The transition slot's lease id; a dead run's slot (its lease recorded) is given back."""
    lease = take_slot(run.slot_lease_s)
    if lease is None:
        holders = []
        for dead_lease, holder in state_store.unreleased_slot_leases(conn):
            if not flow_run_ended(holder):  # the lock alone is no proof: it can be lost
                holders.append(holder)
                continue
            give_back_slot(dead_lease)
            state_store.mark_slot_released(conn, dead_lease, run.run_id)
            run.audit("gave back the slot of a run that died", run=holder, lease=dead_lease)
        lease = take_slot(run.slot_lease_s)
    if lease is None:
        who = (f"by run(s) {', '.join(holders)}, which Prefect says have not ended (if its "
               f"process is gone, its lease expires within {run.slot_lease_s:.0f} s)"
               if holders else "although no phase transition holds the lock; check the "
               "limit in Prefect")
        raise TransitionLocked(f"the '{TRANSITION_LIMIT}' concurrency slot is taken {who}")
    state_store.record_slot_lease(conn, lease, run.run_id)
    return lease


def _mark_released(run: Run, lease: str) -> None:
    """Record the slot given back, on a fresh session: the lock's may be the one that died."""
    try:
        with run.pg.get_connection(run.pg.state_database) as conn:
            state_store.mark_slot_released(conn, lease, run.run_id)
    except psycopg.Error as exc:  # the lease is released in Prefect; only the record is late
        logger().warning("could not record the released slot %s: %s", lease, exc)


@contextmanager
def shielded(why: str) -> Iterator[list[int]]:
    """While the block runs, SIGTERM and SIGINT are recorded (the yielded list), not acted on:
    a cancel or a worker's stop cannot interrupt the rollback half-way. Only SIGKILL can; the
    run's snapshot then stays open and the rollback deployment (or a rerun) finishes it.
    Outside the main thread signals cannot be handled, and the block just runs."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def note(signum: int, _frame: object) -> None:
        seen.append(signum)
        logger().warning("signal %s received during %s: finishing it first",
                         signal.Signals(signum).name, why)

    before = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield seen
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


# What a guard raises before anything changed: a SafetyStop (a skipped phase, another
# transition holding the lock, ...) or an invalid plan. An approver's "no" is not here: the
# flow ends that one Completed ("Rejected").
REFUSALS = (PlanError, SafetyStop)


def refusal_reason(exc: PlanError | SafetyStop) -> str:
    """The reason in one line (an invalid plan lists its problems separated by '; ')."""
    if isinstance(exc, PlanError):
        problems = "; ".join(f"{field}: {reason}" for field, reason in exc.problems)
        return f"invalid phase plan ({len(exc.problems)} problem(s)): {problems}"
    return " ".join(str(exc).split())


def refused(exc: PlanError | SafetyStop) -> State:
    """The end of a refused run: Failed, named "Refused", the reason as its one-line message.

    Returned, not raised: a raised exception is logged by Prefect's engine with its traceback
    (on the console and in the UI) as if something broke, for a request that was only
    refused. Returning a Failed state keeps the run Failed (hooks, automations, exit code)."""
    return Failed(name="Refused", message=refusal_reason(exc))
