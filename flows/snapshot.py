"""The state a transition changes, saved before the first change (the rollback's source).

Containers are stored in policy.containers' form (with `running`), Cloud Run and Redis as the
tasks read them. A run whose process died leaves its snapshot open; the next run from the same
phase, holding the transition lock (so the dead run is really gone), takes it over as "the
state before any change".
"""

from __future__ import annotations

from typing import Any

from phasegate.errors import SafetyStop
from phasegate.flows.run import Run
from phasegate.flows.vllm_switch import live_containers
from phasegate.policy.containers import Container
from phasegate.policy.outcomes import RunOutcome
from phasegate.policy.transition import ChangeSet
from phasegate.tasks import state_store
from phasegate.tasks.cloud_run import read_service_settings
from phasegate.tasks.redis_cache import read_memory_config
from phasegate.tasks.transitions import mark_crashed

__all__ = ["SNAPSHOT_COMPONENTS", "running_containers", "take_snapshot"]

SNAPSHOT_COMPONENTS = ("containers", "cloud_run", "redis")


def take_snapshot(run: Run, changes: ChangeSet, phase: int, to_phase: int) -> dict[str, Any]:
    """Store the live state of everything `changes` touches (or an interrupted run's
    snapshot, taken over) and return it."""
    with run.pg.get_connection(run.pg.state_database) as conn:
        prior = state_store.interrupted_run(conn, phase)
    snap = _take_over(run, prior, to_phase) if prior else _read_live(run, changes)
    with run.pg.get_connection(run.pg.state_database) as conn:
        for component in SNAPSHOT_COMPONENTS:
            state_store.save_snapshot(conn, run.run_id, phase, component,
                                      {"value": snap[component]}, to_phase)
        if prior:
            state_store.close_snapshots(conn, prior.flow_run_id, RunOutcome.RESUMED,
                                        f"resumed by {run.run_id}")
    return snap


def running_containers(snapshot_value: list[dict[str, Any]]) -> list[Container]:
    """The containers a snapshot says were running: what a restore brings back."""
    return [Container.from_dict(c) for c in snapshot_value if c.get("running", True)]


def _read_live(run: Run, changes: ChangeSet) -> dict[str, Any]:
    live = live_containers(run, [*changes.containers_before, *changes.containers_after])
    return {"containers": [lc.to_dict() for lc in live],
            "cloud_run": read_service_settings(run.gcp), "redis": read_memory_config(run.redis)}


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
