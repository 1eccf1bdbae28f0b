"""Stopping a phase transition after its first change, on the lab: a cancel through the Prefect
API (the UI's Cancel) for a run started by `phasegate transition` and for one a worker runs, a
SIGTERM during the load test, the run's time limit, a lost transition lock. Each ends with the
rollback done and verified (the exact phase-1 state), the snapshot closed, the slot free, an
incident report naming the cause and a notification."""

from __future__ import annotations

import contextvars
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelling
from test_phase_transition import (
    OPTIONS,
    PLAN,
    _answer,
    _assert_phase_1_intact,
    _deployment_run,
    _wait_audit,
    _wait_run,
    fast,
)

from phasegate.flows.phase_transition import phase_transition
from phasegate.lab.receiver import read_inbox
from phasegate.policy.outcomes import RunOutcome

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker

PHASEGATE = str(Path(sys.executable).with_name("phasegate"))
BY_API = "cancelled through the Prefect API"  # what the run says of a cancel
LEASE_S = 60 + 15 + 10  # Prefect's 60 s lease, its 15 s repossessor loop, a margin


def _approve_both() -> str:
    """Both managers approve the paused run (one pause each); its id."""
    run_id = _answer("Alice Kim", "CTO", True, "go", timeout=90)
    _answer("Bob Lee", "CFO", True, "go")
    return run_id


def _active_slots() -> int:
    """The server's active slots of the one-transition-at-a-time limit, read from outside."""
    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name("phase-transition").active_slots)


def _cancel(run_id: str, why: str) -> float:
    """What the UI's Cancel does: the run goes Cancelling. When it was asked."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Cancelling(message=why))
    return time.monotonic()


def _assert_rolled_back(lab: dict[str, Any], lab_layout: Any, run_id: str, outcome: RunOutcome,
                        cause: str) -> None:
    """Phase 1 exactly, the snapshot closed with `outcome`, the slot free, the incident report
    and the notification naming `cause`."""
    _assert_phase_1_intact(lab)
    assert _active_slots() == 0
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        closed = conn.execute("SELECT DISTINCT outcome FROM snapshots WHERE flow_run_id = %s",
                              (run_id,)).fetchall()
        report = conn.execute("SELECT outcome, markdown FROM postmortems WHERE flow_run_id = %s",
                              (run_id,)).fetchone()
        undone = [r[0] for r in conn.execute(
            "SELECT action FROM audit_log WHERE flow_run_id = %s AND action LIKE 'stage rollback%%'"
            " ORDER BY id", (run_id,))]
    assert closed == [(outcome.value,)]
    assert report is not None and report[0] == outcome.value and cause in report[1]
    ended = [a for a in undone if not a.endswith(": started")]
    assert ended and all(a.endswith(": ok") for a in ended), undone
    texts = [m["body"].get("text", "") for m in read_inbox(lab_layout, "slack")]
    assert any(cause in t and "1 -> 2" in t for t in texts), texts[-3:]


def _final_state(run_id: str) -> Any:
    run = _wait_run(UUID(run_id), 30)
    assert run.state is not None
    return run.state


def test_cli_run_keeps_its_slot_then_a_cancel_in_the_watch_rolls_back(
        lab: dict[str, Any], lab_layout: Any, gpu2_installed: None, tmp_path: Path) -> None:
    """`phasegate transition` in a plain shell: its slot stays taken on the lab's server past
    a lease (the renewal thread reaches the same API as the run), and a cancel through the API
    during the metric watch rolls back, ends Cancelled and frees the slot."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    cli = subprocess.Popen(  # noqa: S603 - our own command
        [PHASEGATE, "transition", "--to", "2", "--plan", PLAN, "--watch", "150s",
         "--watch-interval", "5s", "--watch-min-window", "5s", "--scale", "0.005",
         "--dir", lab["dir"]], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        run_id = _approve_both()
        approved = time.monotonic()
        seen = []
        while time.monotonic() - approved < LEASE_S:  # bounded: one lease and a loop
            seen.append(_active_slots())
            time.sleep(5)
        _wait_audit(lab, run_id, "stage load test: ok", 5)  # in the watch now
        asked = _cancel(run_id, "cancelled from the UI by the test")
        out, err = cli.communicate(timeout=180)
        took = time.monotonic() - asked
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    print(f"CLI run: cancel during the watch -> rolled back and Cancelled in {took:.1f} s")
    assert seen[-1] == 1 and seen.count(0) <= 1, seen  # 0 only before the lock was taken
    assert cli.returncode == 1 and out == "", out
    assert "could not renew" not in err and "Traceback" not in err, err[-3000:]
    assert err.splitlines()[-1].startswith(
        "error: phase transition cancelled: cancelled through the Prefect API"), err[-2000:]
    state = _final_state(run_id)
    assert state.is_cancelled() and "cancelled from the UI by the test" in state.message
    _assert_rolled_back(lab, lab_layout, run_id, RunOutcome.CANCELLED, BY_API)


def test_worker_run_cancelled_in_the_watch_rolls_back(lab: dict[str, Any], lab_layout: Any,
                                                      gpu2_installed: None) -> None:
    """Started as the UI's Run button does (a lab worker runs it); the UI's Cancel during the
    watch: the worker SIGTERMs the run's process, which rolls back before it exits."""
    params = {"target_phase": 2, "plan_path": PLAN,
              "options": {**OPTIONS, "watch_duration": "120s", "watch_interval": "5s"}}
    run_id = str(_deployment_run(params))
    assert _approve_both() == run_id
    _wait_audit(lab, run_id, "stage load test: ok", 180)
    asked = _cancel(run_id, "cancelled from the UI by the test")
    state = _wait_run(UUID(run_id), 120).state
    print(f"worker run: cancel during the watch -> Cancelled in {time.monotonic() - asked:.1f} s")
    assert state is not None and state.is_cancelled(), state
    # Our own Cancelled message ("...; every change rolled back and verified") may be
    # replaced by the worker's "Flow run was cancelled successfully.": after the process
    # exits, Prefect's runner forces its own Cancelled state. The incident report, the audit
    # table and the notification keep what happened (asserted below).
    _assert_rolled_back(lab, lab_layout, run_id, RunOutcome.CANCELLED, BY_API)


def test_sigterm_during_the_load_test_rolls_back(lab: dict[str, Any], lab_layout: Any,
                                                 gpu2_installed: None, tmp_path: Path) -> None:
    """A SIGTERM (a worker shutting down) while the load test runs: the load test stops, the
    rollback runs to the end, the run ends Cancelled saying it was a SIGTERM."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    cli = subprocess.Popen(  # noqa: S603 - our own command
        [PHASEGATE, "transition", "--to", "2", "--plan", PLAN, "--watch", "6s",
         "--watch-interval", "2s", "--watch-min-window", "5s", "--scale", "0.1",
         "--dir", lab["dir"]], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        run_id = _approve_both()
        _wait_audit(lab, run_id, "stage Cloud Run: ok", 180)
        time.sleep(3)  # the load test (54 s at this scale) is running
        cli.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        out, err = cli.communicate(timeout=180)
        took = time.monotonic() - signalled
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    print(f"SIGTERM during the load test -> rolled back and Cancelled in {took:.1f} s")
    assert cli.returncode == 1, (out, err[-3000:])
    assert "Exception in callback" not in err and "Traceback" not in err, err[-3000:]
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        load_test_done = conn.execute("SELECT 1 FROM audit_log WHERE flow_run_id = %s"
                                      " AND action LIKE 'stage load test: ok%%'",
                                      (run_id,)).fetchone()
    assert load_test_done is None  # stopped in the middle, not after
    state = _final_state(run_id)
    assert state.is_cancelled() and "stopped by SIGTERM" in state.message
    _assert_rolled_back(lab, lab_layout, run_id, RunOutcome.CANCELLED, "stopped by SIGTERM")


def test_a_stage_past_the_time_limit_is_interrupted_and_rolled_back(
        lab: dict[str, Any], lab_layout: Any, gpu2_installed: None) -> None:
    """A watch longer than the run's time limit: the run is interrupted at the limit in the
    middle of the watch (not after it), rolls back and ends Failed (TimeLimitExceeded)."""
    answers = _answer_when_paused()
    state = phase_transition(target_phase=2, return_state=True,
                             **fast(watch_duration="120s", time_limit="40s"))
    answers.join(30)
    run_id = str(state.state_details.flow_run_id)
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        locked, ended = conn.execute(
            "SELECT min(at) FILTER (WHERE action LIKE 'stage snapshot%%'),"
            " max(at) FILTER (WHERE action = 'outcome') FROM audit_log"
            " WHERE flow_run_id = %s", (run_id,)).fetchone()
    print(f"time limit 40 s -> rolled back, {(ended - locked).total_seconds():.1f} s after the"
          " snapshot")
    assert state.is_failed() and "passed its time limit" in (state.message or ""), state.message
    assert (ended - locked).total_seconds() < 40 + 45  # the limit, then the rollback
    _assert_rolled_back(lab, lab_layout, run_id, RunOutcome.ROLLED_BACK, "passed its time limit")


def test_a_lost_lock_stops_the_run_and_rolls_back(lab: dict[str, Any], lab_layout: Any,
                                                  gpu2_installed: None) -> None:
    """The lock's PostgreSQL session is terminated (what a failover or a dropped connection
    does) while vLLM is redeployed: the check before the next change sees it, and the run
    rolls back instead of going on without the lock."""
    answers = _answer_when_paused(then=_terminate_lock_session_in_redeploy, lab=lab)
    state = phase_transition(target_phase=2, return_state=True, **fast())
    answers.join(60)
    run_id = str(state.state_details.flow_run_id)
    assert state.is_failed() and "transition lock" in (state.message or ""), state.message
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        redis_changed = conn.execute("SELECT 1 FROM audit_log WHERE flow_run_id = %s"
                                     " AND action LIKE 'stage Redis%%'", (run_id,)).fetchone()
    assert redis_changed is None  # stopped before the next change
    _assert_rolled_back(lab, lab_layout, run_id, RunOutcome.ROLLED_BACK, "transition lock")


def _answer_when_paused(then: Any = None, **kwargs: Any) -> threading.Thread:
    """Approve both roles once the run pauses (in a thread: the flow runs in the main one, where
    the signal handlers live); then call `then(run_id, **kwargs)`."""
    def answer() -> None:
        run_id = _approve_both()
        if then is not None:
            then(run_id, **kwargs)

    t = threading.Thread(target=contextvars.copy_context().run, args=(answer,), daemon=True)
    t.start()
    return t


def _terminate_lock_session_in_redeploy(run_id: str, lab: dict[str, Any]) -> None:
    _wait_audit(lab, run_id, "stage vLLM redeploy: started", 120)  # its guard has passed
    with psycopg.connect(lab["postgres"]["dsn"], autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted").fetchall()
    assert killed == [(True,)], killed
