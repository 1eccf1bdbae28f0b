"""phase-transition against the lab: approvals answered from another thread (as a manager
would from the UI or `phasegate approve`), the exact end state asserted."""

from __future__ import annotations

import contextvars
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import redis
from _plans import light_plan
from _proxy import Forwarder
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled

from phasegate.blocks.systems import GcpConnection, load_block
from phasegate.cli.transition import approve
from phasegate.flows.options import TransitionOptions
from phasegate.flows.phase_transition import phase_transition
from phasegate.lab.blocks import gpu_host_block
from phasegate.policy.containers import Container, Gpus, LiveContainer
from phasegate.policy.outcomes import RunOutcome
from phasegate.tasks.cloud_run import read_service_settings
from phasegate.tasks.gpu_hosts import inspect_container

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker

REPORTS = Path(tempfile.mkdtemp(prefix="phasegate-reports-"))
PLAN = light_plan()  # the real plan with load-test VUs / 10 (tests/_plans.py)
OPTIONS = {"watch_duration": "6s", "watch_interval": "2s", "watch_min_window": "5s",
           "load_test_scale": 0.005, "approval_timeout": "60s", "approval_poll": "1s",
           "vllm_ready_timeout": "20s", "reports_dir": str(REPORTS)}
FAST = {"plan_path": PLAN, "options": TransitionOptions(**OPTIONS)}


def fast(**overrides: Any) -> dict[str, Any]:
    """The time-compressed parameters with some options changed."""
    return {"plan_path": PLAN, "options": TransitionOptions(**{**OPTIONS, **overrides})}


def _paused_run(timeout: float = 60) -> str:
    """The id of the phase-transition run waiting for input (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["phase-transition"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
        if runs:
            return str(runs[0].id)
        time.sleep(0.5)
    raise TimeoutError("no paused phase-transition run")


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        out["state"] = fn()

    # The Prefect settings (the lab's API URL) live in context variables: carry them over.
    t = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True)
    t.start()
    return t, out


def _phase(lab: dict[str, Any]) -> int:
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        return int(conn.execute("SELECT phase FROM phase_state").fetchone()[0])


def _set_phase(lab: dict[str, Any], phase: int) -> None:
    with psycopg.connect(lab["postgres"]["state_dsn"], autocommit=True) as conn:
        conn.execute("UPDATE phase_state SET phase = %s", (phase,))


def test_rejection_ends_cleanly_without_change(lab: dict[str, Any],
                                               gpu2_installed: None) -> None:
    t, out = _in_thread(lambda: phase_transition(target_phase=2, return_state=True, **FAST))
    _answer("Alice Kim", "CTO", False, "not this week")
    t.join(60)
    state = out["state"]
    assert state.is_completed() and state.name == "Rejected"
    assert "rejected by Alice Kim (CTO)" in state.message
    assert _phase(lab) == 1
    settings = read_service_settings.fn(load_block(GcpConnection, "lab-gcp"))
    assert (settings["min_instances"], settings["max_instances"]) == (0, 3)


def test_skip_phase_is_refused_before_anything(lab: dict[str, Any]) -> None:
    state = phase_transition(target_phase=3, return_state=True, **FAST)
    assert state.is_failed() and state.name == "Refused"
    assert state.message == "phase 1 -> 3 skips 1 phase(s): one step at a time (1 -> 2)"
    assert _phase(lab) == 1


def test_one_to_two_happy_path(lab: dict[str, Any], gpu2_installed: None) -> None:
    t, out = _in_thread(lambda: phase_transition(target_phase=2, return_state=True, **FAST))
    run_id = _answer("Alice Kim", "CTO", True)
    _answer("Bob Lee", "CFO", True)
    t.join(300)
    state = out["state"]
    try:
        assert state.is_completed(), state.message
        assert _phase(lab) == 2
        assert _stages(run_id) == STAGES
        host = gpu_host_block(next(h for h in lab["gpu_hosts"] if h["name"] == "gpu-1"))
        live = inspect_container.fn(host, "vllm-server")
        assert live is not None and live.running
        assert live.container.option("--tensor-parallel-size") == "2"
        r = redis.Redis.from_url(lab["redis"]["url"], decode_responses=True)
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        settings = read_service_settings.fn(load_block(GcpConnection, "lab-gcp"))
        assert (settings["min_instances"], settings["max_instances"]) == (1, 8)
        report = (REPORTS / f"postmortem-1-to-2-{run_id}.md").read_text()
        assert report.startswith("# Scaling Postmortem: Phase 1 → 2\n")
        assert "- Alice Kim (CTO) approved" in report
        assert "- Bob Lee (CFO) approved" in report
        with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
            outcome, facts = conn.execute("SELECT outcome, facts FROM postmortems"
                                          " WHERE flow_run_id = %s", (run_id,)).fetchone()
            ended = conn.execute("SELECT detail->>'outcome' FROM audit_log WHERE"
                                 " flow_run_id = %s AND action = 'outcome'", (run_id,)).fetchone()
        assert outcome == RunOutcome.SUCCEEDED.value == facts["outcome"] == ended[0]
        assert (facts["from_phase"], facts["to_phase"]) == (1, 2)
        assert [a["name"] for a in facts["approvals"]] == ["Alice Kim", "Bob Lee"]
        assert [t["stage"] for t in facts["timeline"]] == ["preflight", "approval", *STAGES]
        assert state.result()["outcome"] == "succeeded"
    finally:
        if _phase(lab) == 2:  # the planned scale-down 2 -> 1, a transition like any other
            t, out = _in_thread(lambda: phase_transition(target_phase=1, return_state=True,
                                                         **FAST))
            _answer("Alice Kim", "CTO", True)
            _answer("Bob Lee", "CFO", True)
            t.join(300)
            assert out["state"].is_completed(), out["state"].message
            _assert_phase_1_intact(lab)


STAGES = ["snapshot", "backup", "gpu detection", "vLLM redeploy", "Redis", "Cloud Run",
          "load test", "metric watch"]


def _stages(run_id: str) -> list[str]:
    """The runbook stages the UI shows for a run: its stage task runs, in order."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[UUID(run_id)])))
    ordered = sorted(runs, key=lambda r: r.start_time or r.expected_start_time)
    names = [r.name.rsplit("-", 1)[0] for r in ordered]  # task run names are "<task>-<id>"
    return [n for n in names if n in STAGES]


def _scale_back(lab: dict[str, Any]) -> None:
    """Back to phase 1 with the `rollback` flow (it restores the newest snapshot: the exact
    phase-1 state), so later tests find the lab in phase 1; asserts that state."""
    from phasegate.flows.rollback import rollback

    if _phase(lab) != 2:
        return
    assert rollback()["phase"] == 1
    _assert_phase_1_intact(lab)


def test_rollback_runs_while_a_transition_waits_for_its_approvals(
        lab: dict[str, Any], gpu2_installed: None) -> None:
    # Restores the phase-1 snapshot the happy path above recorded (the lab stays in phase 1).
    from phasegate.flows.rollback import rollback

    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        snapshot_of = conn.execute("SELECT flow_run_id FROM snapshots WHERE phase = 1"
                                   " ORDER BY at DESC LIMIT 1").fetchone()[0]
    t, out = _in_thread(lambda: phase_transition(target_phase=2, return_state=True, **FAST))
    run_id = _paused_run()
    try:
        assert _active_slots() == 0  # a pending approval holds neither the slot...
        started = time.monotonic()
        done = rollback(flow_run_id=str(snapshot_of))  # ...nor the lock: no TransitionLocked
        assert done == {"phase": 1, "restored_from": str(snapshot_of)}
        print(f"rollback during a pending approval: {time.monotonic() - started:.1f} s")
        assert _active_slots() == 0
    finally:
        approve(run_id, "Alice Kim", "CTO", approved=False, comment="test over")
        t.join(120)
    assert out["state"].name == "Rejected"
    assert _phase(lab) == 1
    _assert_phase_1_intact(lab)


def _active_slots() -> int:
    """The server's active slots of the one-transition-at-a-time limit, read from outside."""
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("phase-transition")
    return int(limit.active_slots)


def test_missing_gpu_stops_at_the_preflight_before_anyone_is_asked(lab: dict[str, Any]) -> None:
    state = phase_transition(target_phase=2, return_state=True, **FAST)  # no pause: no answer
    assert state.is_failed() and state.name == "Refused"
    assert ("preflight: " in state.message and "FAIL: gpu-1 nvidia-smi: 1 GPU(s): NVIDIA RTX"
            " A6000; the target phase needs 2" in state.message), state.message
    run_id = str(state.state_details.flow_run_id)
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        asked = conn.execute("SELECT count(*) FROM approvals WHERE flow_run_id = %s",
                             (run_id,)).fetchone()
        ended = conn.execute("SELECT detail->>'outcome', detail->>'detail' FROM audit_log"
                             " WHERE flow_run_id = %s AND action = 'outcome'",
                             (run_id,)).fetchone()
    assert asked == (0,)
    assert ended[0] == RunOutcome.STOPPED.value
    assert "1 GPU(s): NVIDIA RTX A6000; the target phase needs 2" in ended[1]
    assert _phase(lab) == 1
    _assert_phase_1_intact(lab)  # untouched


def test_one_person_cannot_approve_both_roles(lab: dict[str, Any],
                                              gpu2_installed: None) -> None:
    t, out = _in_thread(lambda: phase_transition(target_phase=2, return_state=True, **FAST))
    run_id = _answer("Alice Kim", "CTO", True)
    _answer("alice kim ", "CFO", True)   # same person, other spelling
    _answer("Bob Lee", "CFO", False, comment="budget")
    t.join(120)
    state = out["state"]
    assert state.is_completed() and state.name == "Rejected"
    assert "rejected by Bob Lee (CFO)" in state.message
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        rows = conn.execute("SELECT role, name, approved FROM approvals WHERE flow_run_id = %s"
                            " ORDER BY id", (run_id,)).fetchall()
    assert rows == [("CTO", "Alice Kim", True), ("CFO", "alice kim ", True),
                    ("CFO", "Bob Lee", False)]
    assert _phase(lab) == 1


def test_second_transition_is_refused_while_one_runs(lab: dict[str, Any],
                                                     gpu2_installed: None) -> None:
    t, out = _in_thread(lambda: phase_transition(target_phase=2, return_state=True, **FAST))
    run_id = _paused_run()
    try:
        second = phase_transition(target_phase=2, return_state=True, **FAST)
        assert second.is_failed() and "another phase transition" in second.message
    finally:
        approve(run_id, "Alice Kim", "CTO", approved=False, comment="test over")
        t.join(120)
    assert _phase(lab) == 1


def test_vllm_never_healthy_rolls_back_to_the_old_container(
        lab: dict[str, Any], lab_layout: Any, gpu2_installed: None) -> None:
    from phasegate.lab.control import clear_faults, set_fault

    t, out = _in_thread(lambda: phase_transition(target_phase=2, return_state=True, **FAST))
    run_id = _answer("Alice Kim", "CTO", True)
    # The new container will never be healthy; the fault is cleared once it is clear that
    # the deploy failed, so the restored phase-1 container can come back.
    set_fault(lab_layout, "vllm", "never-healthy")
    _answer("Bob Lee", "CFO", True)
    try:
        _wait_audit(lab, run_id, "stage vLLM redeploy: failed", 400)
    finally:
        clear_faults(lab_layout)
    t.join(300)
    state = out["state"]
    assert state.is_failed() and "vllm" in state.message.lower()
    assert _phase(lab) == 1
    _assert_phase_1_intact(lab)


def _answer(name: str, role: str, approved: bool, comment: str = "",
            timeout: float = 30) -> str:
    """Answer the paused run as NAME (ROLE), then wait (bounded) until the run has taken the
    answer, i.e. its state is no longer the pause we answered. Returns the run id."""
    run_id = _paused_run()
    with get_client(sync_client=True) as client:
        answered = client.read_flow_run(UUID(run_id)).state_id
    approve(run_id, name, role, approved=approved, comment=comment)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            if client.read_flow_run(UUID(run_id)).state_id != answered:
                return run_id
        time.sleep(0.3)
    raise TimeoutError("the run did not take the answer")


def _wait_audit(lab: dict[str, Any], run_id: str, action: str, timeout: float) -> None:
    """Wait (bounded) until run `run_id` has written an audit row starting with `action`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
            if conn.execute("SELECT 1 FROM audit_log WHERE flow_run_id = %s AND action LIKE %s",
                            (run_id, action + "%")).fetchone():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{run_id}: {action}")


def test_expired_approval_is_recorded_and_changes_nothing(lab: dict[str, Any],
                                                          gpu2_installed: None) -> None:
    state = phase_transition(target_phase=2, return_state=True, **fast(approval_timeout="3s"))
    assert state.is_failed()
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        last = conn.execute("SELECT comment, approved FROM approvals ORDER BY id DESC"
                            " LIMIT 1").fetchone()
    assert last == ("expired", False)
    assert _phase(lab) == 1


def test_backup_failure_stops_with_nothing_changed(lab: dict[str, Any],
                                                    gpu2_installed: None) -> None:
    t, out = _in_thread(lambda: phase_transition(
        target_phase=2, return_state=True, **fast(reports_dir="/dev/null/reports")))
    _answer("Alice Kim", "CTO", True)
    _answer("Bob Lee", "CFO", True)
    t.join(300)
    state = out["state"]
    assert state.is_failed()
    _assert_phase_1_intact(lab)


def test_prometheus_down_during_watch_rolls_back(lab: dict[str, Any],
                                                 gpu2_installed: None) -> None:
    """Prometheus answers the preflight and the changes, then goes down (a forwarder to it is
    cut once the watch starts): the watch errors and the run rolls back."""
    from urllib.parse import urlsplit

    from phasegate.blocks.systems import PrometheusConnection

    prom = urlsplit(lab["prometheus"]["url"])
    with Forwarder(str(prom.hostname), int(prom.port or 80)) as link:
        PrometheusConnection(url=link.url, timeout_s=1).save("dying-prometheus", overwrite=True)
        t, out = _in_thread(lambda: phase_transition(
            target_phase=2, return_state=True,
            **fast(prometheus_block="dying-prometheus", watch_duration="20s",
                   watch_interval="1s")))
        run_id = _answer("Alice Kim", "CTO", True)
        _answer("Bob Lee", "CFO", True)
        _wait_audit(lab, run_id, "stage metric watch: started", 240)
        link.cut()
        t.join(300)
    state = out["state"]
    assert state.is_failed() and "metric watch error" in state.message, state.message
    _assert_phase_1_intact(lab)
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        restored = [r[0] for r in conn.execute(
            "SELECT action FROM audit_log WHERE flow_run_id = %s AND action LIKE"
            " 'stage rollback %%: ok' ORDER BY id", (run_id,))]
    assert restored == ["stage rollback vLLM: ok", "stage rollback Cloud Run: ok",
                        "stage rollback Redis: ok"]  # the seed's order: serving first
    assert next(REPORTS.glob("incident-1-to-2-*.md")).read_text()


def _live(lab: dict[str, Any]) -> tuple[int, LiveContainer, dict[str, Any], str, str]:
    """What a transition changes, as it is now: phase, gpu-1's vLLM container, Cloud Run
    settings, Redis maxmemory and policy."""
    host = gpu_host_block(next(h for h in lab["gpu_hosts"] if h["name"] == "gpu-1"))
    spec = inspect_container.fn(host, "vllm-server")
    assert spec is not None
    settings = read_service_settings.fn(load_block(GcpConnection, "lab-gcp"))
    r = redis.Redis.from_url(lab["redis"]["url"], decode_responses=True)
    return (_phase(lab), spec, settings, r.config_get("maxmemory")["maxmemory"],
            r.config_get("maxmemory-policy")["maxmemory-policy"])


def _assert_phase_1_intact(lab: dict[str, Any]) -> None:
    """The exact phase-1 state: phase, vLLM spec, Cloud Run fields, Redis config."""
    phase, live, settings, maxmemory, policy = _live(lab)
    assert phase == 1
    assert live.running and live.container.gpus == Gpus.of(0)
    assert live.container.option("--tensor-parallel-size") == "1"
    assert (settings["min_instances"], settings["max_instances"], settings["memory"],
            settings["cpu"]) == (0, 3, "2Gi", "1")
    assert maxmemory == str(4 * 1024**3)
    assert policy == "volatile-lru"


def test_ssh_frozen_during_redeploy_is_retried_never_half_applied(
        lab: dict[str, Any], gpu2_installed: None) -> None:
    """gpu-1's sshd stops answering (SIGSTOP) for longer than the SSH timeout while the vLLM
    redeploy runs: the SSH step is retried; the end state is phase 2 complete or, when the
    outage's failed requests breach the watch's error rate, phase 1 fully restored."""
    import os
    import signal

    sshd = int(lab["processes"]["ssh:gpu-1"])
    t, out = _in_thread(lambda: phase_transition(target_phase=2, return_state=True, **FAST))
    run_id = _answer("Alice Kim", "CTO", True)
    _answer("Bob Lee", "CFO", True)
    _wait_audit(lab, run_id, "stage vLLM redeploy: started", 120)
    os.kill(sshd, signal.SIGSTOP)
    try:
        time.sleep(12)  # longer than the 10 s SSH timeout: the call in flight fails
    finally:
        os.kill(sshd, signal.SIGCONT)
    t.join(300)
    state = out["state"]
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        redeploy = conn.execute("SELECT action FROM audit_log WHERE flow_run_id = %s AND"
                                " action LIKE 'stage vLLM redeploy: %%' ORDER BY id DESC"
                                " LIMIT 1", (run_id,)).fetchone()
    assert redeploy == ("stage vLLM redeploy: ok",)  # the frozen SSH call was retried
    if not state.is_completed():
        # The outage's failed requests may breach the watch: then phase 1, fully restored.
        assert "metric watch" in state.message, state.message
        _assert_phase_1_intact(lab)
        return
    try:
        _assert_phase_2(lab)
    finally:
        _scale_back(lab)


def test_run_killed_mid_way_then_rerun_converges(lab: dict[str, Any], gpu2_installed: None
                                                 ) -> None:
    """Through the lab's workers, as the UI's Run button starts it: the worker's flow-run
    process is SIGKILLed once it has switched vLLM and Redis, and nothing restores anything;
    the worker reports the run Crashed. The rerun (a worker again) gives back the dead run's
    Prefect slot, takes over its snapshot (the true phase-1 state), finds vLLM and Redis
    already as planned (no second switch), finishes the rest and ends in phase 2."""
    params = {"target_phase": 2, "plan_path": PLAN, "options": OPTIONS}
    first = _deployment_run(params)
    try:
        killed = _answer("Alice Kim", "CTO", True)
        _answer("Bob Lee", "CFO", True)
        _wait_audit(lab, killed, "stage Redis: ok", 180)
    finally:
        _kill_flow_run_process(first)
    assert killed == str(first)
    dead = _wait_run(first, 60)
    assert dead.state is not None and dead.state.name == "Crashed"  # said by its worker
    assert dead.labels["prefect.worker.name"] in lab["prefect"]["workers"]["local"]
    assert _phase(lab) == 1  # half-applied: vLLM and Redis changed, the phase not recorded
    second = _deployment_run(params)
    rerun = _answer("Alice Kim", "CTO", True, timeout=90)
    _answer("Bob Lee", "CFO", True)
    done = _wait_run(second, 300)
    try:
        assert rerun == str(second)
        assert done.state is not None and done.state.is_completed(), done.state
        _assert_phase_2(lab)
        with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
            snaps = dict(conn.execute(
                "SELECT flow_run_id, array_agg(DISTINCT outcome || ' ' || outcome_detail)"
                " FROM snapshots WHERE flow_run_id IN (%s, %s) GROUP BY flow_run_id",
                (killed, rerun)))
            taken = conn.execute(
                "SELECT flow_run_id, payload FROM snapshots WHERE component = 'containers'"
                " AND flow_run_id IN (%s, %s)", (killed, rerun)).fetchall()
            actions = [r[0] for r in conn.execute(
                "SELECT action FROM audit_log WHERE flow_run_id = %s ORDER BY id", (rerun,))]
            switch = conn.execute(
                "SELECT detail->>'count' FROM audit_log WHERE flow_run_id = %s"
                " AND action = 'failed requests during the vLLM switch'", (rerun,)).fetchone()
        assert snaps == {killed: [f"resumed resumed by {rerun}"], rerun: ["succeeded "]}
        assert taken[0][1] == taken[1][1]  # the rerun's snapshot is the dead run's: phase 1
        containers = [Container.from_dict(c) for c in taken[0][1]["value"]]
        assert [c.option("--tensor-parallel-size") for c in containers] == ["1"]
        assert {"gave back the slot of a run that died",
                "resuming an interrupted run"} <= set(actions)
        assert not [a for a in actions if a.startswith("stage rollback")]
        assert switch == ("0",)  # vLLM already ran as planned: left serving, not restarted
    finally:
        _scale_back(lab)


def _deployment_run(parameters: dict[str, Any]) -> UUID:
    """A run of the phase-transition deployment (a lab worker picks it up); its id."""
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("phase-transition/phase-transition")
        return client.create_flow_run_from_deployment(dep.id, parameters=parameters).id


def _wait_run(run_id: UUID, timeout: float) -> Any:
    """The flow run once its state is final (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(0.3)
    raise TimeoutError(f"flow run {run_id} not final after {timeout:.0f} s")


def _kill_flow_run_process(run_id: UUID) -> None:
    """SIGKILL the process a worker runs the flow run in (its infrastructure PID), or cancel
    the run when it never started."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        if run.infrastructure_pid:
            os.kill(int(run.infrastructure_pid), signal.SIGKILL)
        elif run.state is not None and not run.state.is_final():
            client.set_flow_run_state(run_id, Cancelled(), force=True)


def _assert_phase_2(lab: dict[str, Any]) -> None:
    """The exact phase-2 state: phase, vLLM spec, Cloud Run fields, Redis config."""
    phase, live, settings, maxmemory, policy = _live(lab)
    assert phase == 2
    assert live.running and live.container.gpus == Gpus.of(0, 1) and live.container.ipc == "host"
    assert live.container.option("--tensor-parallel-size") == "2"
    assert (settings["min_instances"], settings["max_instances"], settings["memory"],
            settings["cpu"]) == (1, 8, "4Gi", "2")
    assert maxmemory == str(16 * 1024**3)
    assert policy == "allkeys-lru"
