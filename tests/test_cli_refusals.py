"""Expected refusals on the lab, through the real `phasegate` command in a plain environment
(no Prefect variables, a fresh home): one line on stderr, no traceback anywhere, and the flow
run's final state says the same reason in one line (what the Prefect UI shows)."""

from __future__ import annotations

import contextvars
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _plans import light_plan
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from phasegate.cli.transition import approve
from phasegate.flows.options import TransitionOptions
from phasegate.flows.phase_transition import phase_transition
from phasegate.policy.plan import DEFAULT_PLAN_PATH

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]

PHASEGATE = str(Path(sys.executable).with_name("phasegate"))
PLAN = light_plan()


def _plain_env(home: Path) -> dict[str, str]:
    """What a new user's shell has: a PATH and a home, no PREFECT_* settings."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def _cli(lab: dict[str, Any], home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHASEGATE, *argv, "--dir", lab["dir"]], env=_plain_env(home),
                          capture_output=True, text=True, timeout=180, check=False)


def _latest_transition_run() -> FlowRun:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["phase-transition"])),
            sort=FlowRunSort.START_TIME_DESC, limit=1)
    return runs[0]


def _paused_run(timeout: float = 60) -> str:
    """The id of the phase-transition run waiting for approval (bounded wait)."""
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


def _assert_refused(done: subprocess.CompletedProcess[str], reason: str) -> None:
    """Exit 1, exactly one stderr line naming the reason, nothing on stdout, and the run's
    final state Failed "Refused" with that reason as its message."""
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [f"error: phase transition refused: {reason}"]
    state = _latest_transition_run().state
    assert state is not None
    assert (state.type, state.name, state.message) == (StateType.FAILED, "Refused", reason)


def test_skipped_phase_is_one_line(lab: dict[str, Any], tmp_path: Path) -> None:
    done = _cli(lab, tmp_path, "transition", "--to", "3")
    _assert_refused(done, "phase 1 -> 3 skips 1 phase(s): one step at a time (1 -> 2)")


def test_bad_plan_is_one_line(lab: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_PLAN_PATH.read_text(encoding="utf-8").replace(
        "      max_instances: 8 ", "      max_instances: -8 ", 1), encoding="utf-8")
    done = _cli(lab, tmp_path, "transition", "--plan", str(bad))
    reason = done.stderr.removeprefix("error: phase transition refused: ").strip()
    assert reason.startswith("invalid phase plan (1 problem(s)): phases[2].cloud_run.max_inst")
    _assert_refused(done, reason)


def test_second_transition_is_one_line(lab: dict[str, Any], tmp_path: Path,
                                       gpu2_installed: None) -> None:
    options = TransitionOptions(approval_timeout="90s", approval_poll="1s")
    holder = threading.Thread(target=contextvars.copy_context().run, daemon=True, args=(
        lambda: phase_transition(target_phase=2, plan_path=PLAN, options=options,
                                 return_state=True),))
    holder.start()
    run_id = _paused_run()
    try:
        done = _cli(lab, tmp_path, "transition", "--to", "2", "--plan", PLAN)
        # The first run waits for its approvals without the lock; the second is refused
        # because two approved transitions could otherwise race for the same phase.
        _assert_refused(done, f"another phase transition ({run_id}) is waiting for its "
                        "approvals: answer or cancel it first")
    finally:
        approve(run_id, "Alice Kim", "CTO", approved=False, comment="test over")
        holder.join(120)


def test_rejected_approval_is_one_line(lab: dict[str, Any], tmp_path: Path,
                                       gpu2_installed: None) -> None:
    asked = subprocess.Popen(  # noqa: S603 - our own command
        [PHASEGATE, "transition", "--to", "2", "--plan", PLAN, "--dir", lab["dir"]],
        env=_plain_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = _paused_run()
        answer = _cli(lab, tmp_path, "approve", run_id, "--as", "Alice Kim", "--role", "CTO",
                      "--reject", "--comment", "not this week")
        assert answer.returncode == 0, answer.stderr
        out, err = asked.communicate(timeout=120)
    finally:
        if asked.poll() is None:
            asked.kill()
            asked.wait(10)
    lines = err.splitlines()
    reason = "rejected by Alice Kim (CTO): not this week"
    # The approval request is the one other line: it tells who must answer, and how.
    assert len(lines) == 2 and f"phasegate approve {run_id}" in lines[0]
    assert (asked.returncode, out, lines[1]) == (1, "", f"error: phase transition rejected: "
                                                         f"{reason}")
    state = _latest_transition_run().state
    assert state is not None
    assert (state.type, state.name, state.message) == (StateType.COMPLETED, "Rejected", reason)
