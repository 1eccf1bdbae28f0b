"""One transition run's working set: its systems (Blocks), its stages as Prefect tasks, its
audit trail, and the guard that lets one transition run at a time. Shared by the
`phase-transition` and `rollback` flows."""

from __future__ import annotations

import logging
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
from phasegate.errors import PlanError, SafetyStop, TransitionLocked
from phasegate.policy.containers import Container
from phasegate.policy.outcomes import RunOutcome
from phasegate.policy.plan import Plan
from phasegate.policy.transition import vllm_containers
from phasegate.tasks import state_store
from phasegate.tasks.transitions import TRANSITION_LIMIT, give_back_slot, keep_slot, take_slot

__all__ = ["REFUSALS", "Run", "connect", "logger", "one_at_a_time", "refused", "refusal_reason"]

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
        resumes from it) and the audit table says so."""
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
