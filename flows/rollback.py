"""`rollback`: restore the last snapshot on demand (vLLM containers, Cloud Run, Redis, phase).

For the operator who needs the pre-transition state back after a transition has ended, e.g.
when the D+1..7 follow-up shows the new phase is worse. Same guards as a transition (one at a
time); the vLLM layout is switched back through the same swap plan (policy.swap), and every
restored value is verified by the tasks that apply it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from phasegate.blocks.systems import PostgresConnection, load_block
from phasegate.errors import PreconditionFailed
from phasegate.flows.run import connect, one_at_a_time
from phasegate.flows.snapshot import SNAPSHOT_COMPONENTS, running_containers
from phasegate.flows.sources import current_phase
from phasegate.flows.vllm_switch import deploy, live_containers
from phasegate.policy.outcomes import RunOutcome
from phasegate.policy.plan import load_plan
from phasegate.tasks import state_store
from phasegate.tasks.cloud_run import apply_service_settings
from phasegate.tasks.notifications import send_notification
from phasegate.tasks.redis_cache import apply_memory_config

__all__ = ["rollback"]


def _snapshots(pg: PostgresConnection, flow_run_id: str | None
               ) -> dict[str, state_store.Snapshot]:
    with pg.get_connection(pg.state_database) as conn:
        snaps = {c: state_store.latest_snapshot(conn, c, flow_run_id)
                 for c in SNAPSHOT_COMPONENTS}
    missing = [c for c, snap in snaps.items() if snap is None]
    if missing:
        raise PreconditionFailed(f"no snapshot of {', '.join(missing)} to restore")
    return {c: s for c, s in snaps.items() if s is not None}


@flow(name="rollback", log_prints=True)
def rollback(flow_run_id: str | None = None, plan_path: str | None = None, prefix: str = "lab",
             notifications: str = "custom-webhook/lab-slack") -> dict[str, Any]:
    """Restore the newest snapshot (or that of one phase-transition run) and its phase."""
    plan = load_plan(plan_path)
    pg = load_block(PostgresConnection, f"{prefix}-postgres")
    snaps = _snapshots(pg, flow_run_id)
    phase_now, phase_then = current_phase(pg), snaps["containers"].phase
    run = connect(plan, prefix, notifications, sorted({phase_now, phase_then}), actor="rollback")
    with one_at_a_time(run):
        recorded = running_containers(snaps["containers"].payload["value"])
        live = [lc.container for lc in live_containers(run, run.planned(phase_now))
                if lc.running]
        r = snaps["redis"].payload["value"]
        run.step("rollback vLLM", lambda: deploy(run, live, recorded))
        run.step("rollback Cloud Run",
                 lambda: apply_service_settings(run.gcp, snaps["cloud_run"].payload["value"]))
        run.step("rollback Redis", lambda: apply_memory_config(run.redis, r["maxmemory"],
                                                               r["maxmemory_policy"]))
        with pg.get_connection(pg.state_database) as conn:
            state_store.set_phase(conn, phase_then, f"rollback {run.run_id}")
            # A run that died mid-way is finished by this restore: no rerun resumes from it.
            state_store.close_snapshots(conn, snaps["containers"].flow_run_id,
                                        RunOutcome.RESTORED, f"by rollback {run.run_id}")
    send_notification(notifications, f"rolled back to phase {phase_then}",
                      f"restored the snapshot of run {snaps['containers'].flow_run_id}")
    return {"phase": phase_then, "restored_from": snaps["containers"].flow_run_id}
