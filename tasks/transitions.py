"""Phase-transition runs in Prefect: is one open, create one (which then waits for
approvals; the trigger check uses this, the transition flow itself guards again), mark a run
whose process died as Crashed (a rerun that takes over its snapshot does this), and hold the
"phase-transition" global concurrency slot.

The slot is held with Prefect's lease API directly rather than `prefect.concurrency.sync.
concurrency`, because that hides its lease id: a run whose process died would keep the slot
until its lease expired. Knowing the id, the next run (which holds the transition lock, so it
knows the holder is dead) gives the slot back at once."""

from __future__ import annotations

import _thread
import contextvars
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import httpx
from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Crashed, Running

from phasegate.errors import PreconditionFailed, RemoteTimeout
from phasegate.tasks.retrying import retried

__all__ = ["TRANSITION_DEPLOYMENT", "TRANSITION_LIMIT", "CancelWatch", "cancel_requested",
           "create_transition_run",
           "describe_limit", "flow_run_ended", "give_back_slot", "keep_slot", "mark_crashed",
           "open_transition_runs", "resume_for_rollback", "take_slot", "waiting_for_approval"]

log = logging.getLogger(__name__)

TRANSITION_DEPLOYMENT = "phase-transition/phase-transition"
# The global concurrency limit that lets one phase transition run at a time.
TRANSITION_LIMIT = "phase-transition"
_OPEN = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED,
         StateType.CANCELLING]


@task(timeout_seconds=120)
def open_transition_runs() -> list[str]:
    """IDs of phase-transition flow runs that have not ended."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["phase-transition"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_OPEN))))
    return [str(r.id) for r in runs]


@task(timeout_seconds=120)
def create_transition_run(to_phase: int, reason: str) -> str | None:
    """Start the phase-transition deployment for `to_phase` without waiting; its id, or None
    when no such deployment exists (reported by the caller, never silently skipped)."""
    try:
        run = run_deployment(TRANSITION_DEPLOYMENT, timeout=0,
                             parameters={"target_phase": to_phase},
                             tags=["created-by-trigger-check"], job_variables=None,
                             idempotency_key=f"trigger-{to_phase}-{reason}"[:200])
    except ObjectNotFound:
        return None
    return str(run.id)  # type: ignore[union-attr]


@retried
def mark_crashed(flow_run_id: str, message: str) -> str | None:
    """Set a flow run that has not ended to Crashed (its process is gone: the transition lock
    it held was released with its session), so the UI and `open_transition_runs` stop
    counting it. Returns the state it had, or None when it had ended or does not exist."""
    try:
        with get_client(sync_client=True) as client:
            try:
                run = client.read_flow_run(UUID(flow_run_id))
            except (ObjectNotFound, ValueError):
                return None  # ValueError: e.g. "local", a run outside Prefect
            if run.state is None or run.state.is_final():
                return None
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    except httpx.TransportError as exc:  # it reads before it sets: safe to repeat
        raise RemoteTimeout(f"Prefect API: {exc}") from exc
    return run.state.name


def take_slot(lease_s: float) -> str | None:
    """One attempt at the "phase-transition" slot under a lease of `lease_s` (Prefect's minimum
    is 60 s); the lease id, or None when the slot is taken. Raises PreconditionFailed when the
    limit does not exist, RemoteTimeout when Prefect cannot be reached."""
    try:
        with get_client(sync_client=True) as client:
            reply = client.increment_concurrency_slots_with_lease(
                names=[TRANSITION_LIMIT], slots=1, mode="concurrency", lease_duration=lease_s)
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 423:  # Locked: every slot is taken
            return None
        raise
    except httpx.TransportError as exc:
        raise RemoteTimeout(f"Prefect API: {exc}") from exc
    body = reply.json()
    if not body.get("limits"):
        give_back_slot(body["lease_id"])
        raise PreconditionFailed(f"no global concurrency limit '{TRANSITION_LIMIT}' in Prefect "
                                 "(create it with limit 1; `phasegate lab up` does)")
    return str(body["lease_id"])


def give_back_slot(lease_id: str) -> bool:
    """Release the slot held under `lease_id`; False when the lease was gone already."""
    try:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease_id=UUID(lease_id))
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 404:
            return False
        raise
    return True


@contextmanager
def keep_slot(lease_id: str, lease_s: float) -> Iterator[None]:
    """Renew the lease every third of its duration while the block runs. A failed renewal is
    logged, not raised: a Prefect hiccup must not stop a transition half-way (the PostgreSQL
    transition lock still keeps a second run out)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                with get_client(sync_client=True) as client:
                    client.renew_concurrency_lease(UUID(lease_id), lease_s)
            except Exception as exc:  # noqa: BLE001 - logged; the lock still guards
                log.warning("could not renew the transition slot's lease: %s", exc)

    # In a copy of this context: Prefect's settings (which API) live in context variables,
    # and a bare thread would talk to the default API instead of the run's.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(renew,),
                              name="transition-slot-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def describe_limit() -> str:
    """The preflight's check of the global concurrency limit that lets one transition run at
    a time; raises PreconditionFailed when it is missing or does not allow exactly one."""
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(TRANSITION_LIMIT)
        except ObjectNotFound as exc:
            raise PreconditionFailed(f"no global concurrency limit '{TRANSITION_LIMIT}': create "
                                     f"it with `prefect gcl create {TRANSITION_LIMIT} "
                                     "--limit 1`") from exc
    if limit.limit != 1 or not limit.active:
        raise PreconditionFailed(f"'{TRANSITION_LIMIT}' allows {limit.limit} at a time "
                                 f"(active: {limit.active}); it must allow exactly 1")
    return f"'{TRANSITION_LIMIT}' allows 1 at a time; {limit.active_slots} in use"


def flow_run_ended(flow_run_id: str) -> bool:
    """Whether Prefect says the flow run has ended (a final state), or knows no such run: the
    only proof that a recorded slot lease belongs to nobody (the transition lock alone is not:
    a live run can lose its session silently)."""
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
    except (ObjectNotFound, ValueError):
        return True
    return run.state is not None and run.state.is_final()


def waiting_for_approval(exclude: str) -> list[str]:
    """IDs of other phase-transition runs paused for their approvals."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["phase-transition"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return [str(r.id) for r in runs if str(r.id) != exclude]


def resume_for_rollback(flow_run_id: str, reason: str) -> None:
    """Put a Cancelling run back to Running ("Rolling back"): Prefect refuses to start tasks
    in a flow run that is not Running, and the compensation is made of tasks."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(flow_run_id),
                                  Running(name="Rolling back", message=reason), force=True)


class CancelWatch:
    """Watch a flow run while it changes things, and stop it the way a worker would (SIGTERM
    to the main thread) when someone cancels it through the Prefect API (the UI's Cancel) or
    when it passes its time limit (`deadline`, a time.monotonic() value).

    A run started in this process (`phasegate transition`) has no worker to act on
    "Cancelling"; without this it would stay Cancelling while it went on changing things. A
    stage that hangs past the time limit is interrupted the same way, so the rollback runs.
    `reason` says what was seen (a cancel), `timed_out` that the limit passed. Poll errors
    are logged and retried at the next poll."""

    def __init__(self, flow_run_id: str, poll_s: float = 2.0,
                 deadline: float | None = None) -> None:
        self.flow_run_id, self.poll_s, self.deadline = flow_run_id, poll_s, deadline
        self.reason: str | None = None
        self.timed_out = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CancelWatch:
        # A copy of this context: the Prefect settings (which API) live in context variables.
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._watch,), name="cancel-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def stop_watching(self) -> None:
        """No more interrupts from here on (the rollback must not be interrupted by us)."""
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.timed_out = True
            else:
                self.reason = cancel_requested(self.flow_run_id)
            if (self.timed_out or self.reason) and not self._stop.is_set():
                _thread.interrupt_main(signal.SIGTERM)  # no-op unless a handler is set
                return


def cancel_requested(flow_run_id: str) -> str | None:
    """How the run was cancelled through the Prefect API, or None when it was not (or its
    state cannot be read now: logged)."""
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
    except Exception as exc:  # noqa: BLE001 - the watch polls again; a reader says "unknown"
        log.warning("cannot read flow run %s: %s", flow_run_id, exc)
        return None
    if state is None or state.type not in (StateType.CANCELLING, StateType.CANCELLED):
        return None
    when = state.timestamp.isoformat(timespec="seconds") if state.timestamp else "?"
    said = f": {state.message}" if state.message else ""
    return f"cancelled through the Prefect API (state {state.name} at {when}{said})"
