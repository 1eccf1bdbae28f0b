"""The exception hierarchy's retry predicate, and the lab's control files."""

from __future__ import annotations

from pathlib import Path

import pytest

from phasegate import errors
from phasegate.lab import control
from phasegate.lab.layout import LabLayout


@pytest.mark.parametrize("exc, retryable", [
    (errors.SourceUnavailable("x"), True),
    (errors.RemoteTimeout("x"), True),
    (errors.CapacityUnavailable("x"), True),
    (errors.RemoteCommandFailed("h", "c", 1, "e"), False),
    (errors.VerificationFailed("x"), False),
    (errors.ApprovalRejected("x"), False),
    (errors.PlanError([("a", "b")]), False),
    (ValueError("x"), False),
])
def test_only_transient_errors_are_retryable(exc: BaseException, retryable: bool) -> None:
    assert errors.is_retryable(exc) is retryable


def test_expired_and_rejected_approvals_are_siblings() -> None:
    # Neither is a kind of the other, so `except` order cannot turn an expiry into a "no".
    assert not issubclass(errors.ApprovalExpired, errors.ApprovalRejected)
    assert not issubclass(errors.ApprovalRejected, errors.ApprovalExpired)
    assert issubclass(errors.ApprovalExpired, errors.SafetyStop)
    assert issubclass(errors.ApprovalRejected, errors.SafetyStop)


def test_plan_error_lists_every_problem() -> None:
    err = errors.PlanError([("phases[0].gpus", "must be > 0"), ("version", "missing")])
    assert "phases[0].gpus: must be > 0" in str(err) and "version: missing" in str(err)


def test_faults_set_and_clear(tmp_path: Path) -> None:
    layout = LabLayout(tmp_path)
    layout.ensure()
    control.set_fault(layout, "vllm", "slow", factor=3)
    control.set_fault(layout, "compute", "stockout")
    assert control.read_faults(layout) == {"vllm": {"slow": {"factor": 3}},
                                           "compute": {"stockout": {}}}
    control.clear_faults(layout, "vllm")
    assert control.read_faults(layout) == {"compute": {"stockout": {}}}
    with pytest.raises(ValueError, match="unknown fault vllm:melt"):
        control.set_fault(layout, "vllm", "melt")


def test_gpu_count_keeps_existing_uuids(tmp_path: Path) -> None:
    layout = LabLayout(tmp_path)
    layout.host_dir("gpu-1").mkdir(parents=True)
    one = control.set_gpu_count(layout, "gpu-1", 1)
    two = control.set_gpu_count(layout, "gpu-1", 2)
    assert two[0] == one[0] and two[1]["index"] == 1 and two[1]["uuid"] != one[0]["uuid"]
    with pytest.raises(ValueError, match="unknown GPU host"):
        control.set_gpu_count(layout, "gpu-9", 1)


def test_json_file_rereads_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    f = control.JsonFile(path, default={"rate": 0})
    assert f.read() == {"rate": 0}
    control.write_json_atomic(path, {"rate": 5})
    assert f.read() == {"rate": 5}
    path.write_text("{not json")
    assert f.read() == {"rate": 5}  # a half-written file keeps the last good value
