"""`phasegate demo`: the whole story on the lab, time-compressed, in a few minutes.

1. Lab up (if needed): its Prefect server (on the lab's PostgreSQL) lists every deployment of
   prefect.yaml and its two process workers run them, for the demo and after it.
2. trigger-check: is phase 2 due? (the evidence table)
3. Install GPU #2; phase 1 -> 2 through the deployment (one click in the UI), approved by the
   CTO and the CFO (by `phasegate approve`, or by a person in the UI with --interactive), ending
   in a postmortem.
4. A second transition attempt, the planned step back 2 -> 1, with a fault injected during the
   metric watch (the API answers 50 % errors): automatic rollback, phase 2 restored and
   verified. (The lab's two cores cannot serve phase 3's 3,000-VU load test within its 200 ms
   p95, so a 2 -> 3 attempt would stop at its load test, before the watch.)
5. A summary, and where to look in the UI.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import psycopg

from phasegate.cli.lab import lab_layout, running_lab
from phasegate.errors import LabError
from phasegate.lab import control
from phasegate.lab.layout import LabLayout
from phasegate.lab.plans import light_plan

__all__ = ["register", "run_demo"]


def register(sub: Any) -> None:
    """Add `demo`."""
    demo = sub.add_parser("demo", help="the story on the lab: triggers, 1 -> 2 with approvals, "
                          "a step back with a fault and its automatic rollback")
    demo.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    demo.add_argument("--interactive", action="store_true",
                      help="wait for people to approve in the Prefect UI")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    # The story's own lines, not every task run's: Prefect reads its log level on import.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    layout = lab_layout(args.dir)
    code = run_demo(layout, interactive=args.interactive)
    print(f"\nThe lab keeps running; stop it with: .venv/bin/phasegate lab down "
          f"--dir {layout.root}")
    return code

# Compressed time: a 2-hour watch becomes 24 s; the 9-minute load test ~5 s.
DEMO_OPTIONS: dict[str, Any] = {
    "watch_duration": "24s", "watch_interval": "2s", "watch_min_window": "5s",
    "load_test_scale": 0.01,
    "approval_timeout": "30m", "approval_poll": "1s", "vllm_ready_timeout": "60s"}


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _workers(doc: dict[str, Any]) -> list[str]:
    """The lab's Prefect workers, all running; LabError when one is not (a lab started before
    the lab had workers, or a worker that died)."""
    workers = [w for names in doc.get("prefect", {}).get("workers", {}).values() for w in names]
    down = [w for w in workers if not doc["running"].get(f"prefect-worker:{w}")]
    if not workers or down:
        raise LabError(f"the lab's Prefect workers are not running ({', '.join(down) or 'none'}"
                       "): restart the lab with `phasegate lab down` and `phasegate lab up`")
    return workers


def _wait_deployment(name: str, timeout_s: float = 60) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with get_client(sync_client=True) as client:
                client.read_deployment_by_name(name)
            return
        except Exception:  # noqa: BLE001 - not registered yet
            time.sleep(0.5)
    raise LabError(f"deployment {name} was not served within {timeout_s:.0f} s")


def _state(run_id: UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def _wait(run_id: UUID, done: Any, timeout_s: float) -> Any:
    """Poll the run's state until `done(state)` (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _state(run_id)
        if state is not None and done(state):
            return state
        time.sleep(0.5)
    raise LabError(f"flow run {run_id} did not get there within {timeout_s:.0f} s")


def _approve_all(run_id: UUID, interactive: bool, ui: str) -> None:
    """Answer both approvals, as two managers would."""
    from phasegate.cli.transition import approve

    for name, role in (("Jiwoo Park", "CTO"), ("Minseo Choi", "CFO")):
        state = _wait(run_id, lambda s: s.is_paused() or s.is_final(), 300)
        if state.is_final():
            return
        if interactive:
            print(f"   waiting for {role} in the UI: {ui}/runs/flow-run/{run_id}")
            _wait(run_id, lambda s, sid=state.id: s.id != sid, 3600)
            continue
        print(f"   phasegate approve {run_id} --as '{name}' --role {role}")
        approve(str(run_id), name, role, approved=True, comment="demo")
        _wait(run_id, lambda s, sid=state.id: s.id != sid, 60)


def _transition(target: int, plan: Path, interactive: bool, ui: str, reports: Path,
                during_watch: Any = None) -> tuple[Any, float, float | None]:
    """Run the phase-transition deployment; returns (final state, seconds, breach->end s)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    started = time.monotonic()
    run = cast(FlowRun, run_deployment("phase-transition/phase-transition", timeout=0,
                                       parameters={"target_phase": target,
                                                   "plan_path": str(plan),
                                                   "options": DEMO_OPTIONS}))
    print(f"   run {run.id}: {ui}/runs/flow-run/{run.id}")
    _approve_all(run.id, interactive, ui)
    breach = None
    if during_watch is not None:
        breach = _when_watching(run.id, during_watch)
    state = _wait(run.id, lambda s: s.is_final(), 600)
    end = time.monotonic()
    print(f"   ran on the lab's worker {_worker_of(run.id)}")
    return state, end - started, (end - breach) if breach else None


def _worker_of(run_id: UUID) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.read_flow_run(run_id).labels.get("prefect.worker.name", "?"))


def _when_watching(run_id: UUID, action: Any) -> float:
    """Wait until the run's metric watch has started, then do `action`; when it was done."""
    from prefect.client.orchestration import get_client

    from phasegate.blocks.systems import PostgresConnection, load_block

    pg = load_block(PostgresConnection, "lab-postgres")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with pg.get_connection(pg.state_database) as conn:
            if conn.execute("SELECT 1 FROM audit_log WHERE flow_run_id = %s AND action ="
                            " 'stage metric watch: started'", (str(run_id),)).fetchone():
                action()
                return time.monotonic()
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
        if state is not None and state.is_final():
            return time.monotonic()
        time.sleep(0.5)
    raise LabError("the metric watch never started")


def _phase(state_dsn: str) -> int:
    with psycopg.connect(state_dsn) as conn:
        return int(conn.execute("SELECT phase FROM phase_state").fetchone()[0])  # type: ignore[index]


def run_demo(layout: LabLayout, interactive: bool = False) -> int:
    """The demo story; returns the exit code (0 when both runs ended as expected)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from phasegate.lab.supervisor import UpOptions, status, up

    t0 = time.monotonic()
    _say("lab up")
    doc = status(layout) if running_lab(layout) else up(layout, UpOptions())
    api = doc["prefect"]["api_url"]
    ui = api.removesuffix("/api")
    if _phase(doc["postgres"]["state_dsn"]) != 1:
        raise LabError("the demo starts in phase 1: run `phasegate lab down --purge` first")
    print(f"   Prefect workers: {', '.join(_workers(doc))} (they keep running with the lab)")
    with temporary_settings(updates={PREFECT_API_URL: api}):
        return _story(layout, doc, ui, interactive, t0)


def _story(layout: LabLayout, doc: dict[str, Any], ui: str, interactive: bool,
           t0: float) -> int:
    from phasegate.flows.trigger_check import trigger_check

    _wait_deployment("phase-transition/phase-transition")
    _say("trigger-check: is phase 2 due?")
    report = trigger_check()
    print(f"   {report['summary']}")
    reports = layout.root / "reports"  # the lab-reports Block's directory
    # The plan's load tests are production-sized; the lab's 2 cores carry a tenth of the VUs.
    plan = light_plan(layout.root / "plans" / "demo.yaml")
    print(f"   plan: {plan} (plans/dreamseed.yaml with load-test VUs / 10 for the lab's 2 cores)")
    _say("D-Day 10:00: GPU #2 installed on gpu-1 (phasegate lab gpus gpu-1 2)")
    control.set_gpu_count(layout, "gpu-1", 2)
    _say("phase 1 -> 2 (approvals by the CTO and the CFO)")
    up_state, up_s, _ = _transition(2, plan, interactive, ui, reports)
    print(f"   {up_state.name} in {up_s:.0f} s; phase now {_phase(doc['postgres']['state_dsn'])}")
    _say("planned step back 2 -> 1, with a fault during the watch (API answering 50 % errors)")
    try:
        down_state, down_s, breach_s = _transition(1, plan, interactive, ui, reports, lambda: (
            control.set_fault(layout, "api", "erroring", rate=0.5)))
    finally:
        control.clear_faults(layout)
    phase = _phase(doc["postgres"]["state_dsn"])
    restored = _phase2_live()
    _summary(up_state, up_s, down_state, down_s, breach_s, phase, reports, ui, t0)
    print(f"   live state after the rollback: {restored}")
    ok = up_state.is_completed() and down_state.is_failed() and phase == 2
    return 0 if ok and restored.startswith("phase 2") else 1


def _phase2_live() -> str:
    """Read back what phase 2 means (vLLM TP 2, Cloud Run 1-8, Redis 16gb allkeys-lru)."""
    from phasegate.blocks.systems import GcpConnection, GpuHost, RedisConnection, load_block
    from phasegate.policy.containers import VLLM_NAME
    from phasegate.tasks.cloud_run import read_service_settings
    from phasegate.tasks.gpu_hosts import inspect_container
    from phasegate.tasks.redis_cache import read_memory_config

    # .fn: plain calls; a task run outside a flow run has no run to send its logs to.
    live = inspect_container.fn(load_block(GpuHost, "lab-gpu-1"), VLLM_NAME)
    tp = live.container.option("--tensor-parallel-size", "?") if live else "?"
    running = bool(live and live.running)
    run = read_service_settings.fn(load_block(GcpConnection, "lab-gcp"))
    redis = read_memory_config.fn(load_block(RedisConnection, "lab-redis"))
    facts = (f"vLLM TP {tp} running={running}, Cloud Run "
             f"{run['min_instances']}-{run['max_instances']}, Redis {redis['maxmemory']} "
             f"{redis['maxmemory_policy']}")
    phase2 = (tp == "2" and running and (run["min_instances"],
              run["max_instances"]) == (1, 8) and redis["maxmemory_policy"] == "allkeys-lru")
    return ("phase 2 verified: " if phase2 else "NOT phase 2: ") + facts


def _summary(up_state: Any, up_s: float, down_state: Any, down_s: float,
             breach_s: float | None, phase: int, reports: Path, ui: str, t0: float) -> None:
    _say("summary")
    print(f"   1 -> 2: {up_state.name} in {up_s:.0f} s (postmortem in {reports})")
    print(f"   2 -> 1: {down_state.name} in {down_s:.0f} s: {down_state.message}")
    if breach_s is not None:
        print(f"   from the injected breach to rollback complete: {breach_s:.0f} s")
    print(f"   phase now: {phase}")
    print(f"   demo wall time: {time.monotonic() - t0:.0f} s ({datetime.now(UTC):%H:%M} UTC)")
    print(f"   UI: {ui} (flow runs, their artifacts: approval form, load test, watch progress,"
          " postmortem and incident report)")
    print(f"   every deployment's Run button keeps working: {ui}/deployments")
