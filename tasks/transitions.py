"""Phase-transition runs in Prefect: is one open, and create one (which then waits for
approvals). Only the trigger check uses this; the transition flow itself guards again."""

from __future__ import annotations

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
from prefect.exceptions import ObjectNotFound

__all__ = ["TRANSITION_DEPLOYMENT", "TRANSITION_LIMIT", "create_transition_run",
           "open_transition_runs"]

TRANSITION_DEPLOYMENT = "phase-transition/phase-transition"
# The global concurrency limit that lets one phase transition run at a time.
TRANSITION_LIMIT = "phase-transition"
_OPEN = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED,
         StateType.CANCELLING]


@task
def open_transition_runs() -> list[str]:
    """IDs of phase-transition flow runs that have not ended."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["phase-transition"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_OPEN))))
    return [str(r.id) for r in runs]


@task
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
