"""`phasegate plan check`: summary and exit 0 for a valid plan; every problem and exit 1 else."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from phasegate.cli import plan as plan_cli
from phasegate.policy.plan import DEFAULT_PLAN_PATH


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="phasegate")
    plan_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.handler(args)
    return code, capsys.readouterr().out


def test_check_default_plan_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["plan", "check"], capsys)
    assert code == 0
    assert f"{DEFAULT_PLAN_PATH}: valid" in out
    for section in ("Phases", "Transitions", "Load tests (k6)", "Watch"):
        assert f"\n{section}\n" in out
    phase3 = next(line for line in out.splitlines() if line.startswith("3 "))
    assert "gpu-1:3" in phase3 and "3 x TP1" in phase3 and "2-15 x 4Gi/2 CPU" in phase3
    assert "3 of 14 bullets" in out
    assert "p(95)<300" in out


def test_check_invalid_plan_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DEFAULT_PLAN_PATH.read_text(encoding="utf-8")
    text = text.replace("      max_instances: 8 ", "      max_instances: -8 ", 1)
    text = text.replace('query: avg(DCGM_FI_DEV_GPU_UTIL{job="gpu"})\n          step',
                        'query: avg(DCGM_GPU_UTIL{job="gpu"})\n          step', 1)
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    code, out = _run(["plan", "check", str(path)], capsys)
    assert code == 1
    lines = out.splitlines()
    assert "phases[2].cloud_run.max_instances: Input should be greater than 0" in lines
    assert any(line.startswith("transitions[0].conditions[3].source.query: unknown metric "
                               "'DCGM_GPU_UTIL'") for line in lines)
    assert lines[-1].endswith(f"problem(s) in {path}")
    assert "Traceback" not in out


@pytest.mark.parametrize(("content", "expected"), [
    (None, "cannot read the plan"),
    ("version: [1\n", "YAML syntax error"),
    ("- just\n- a list\n", "(plan): the plan must be a mapping"),
])
def test_check_unreadable_files_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    path = tmp_path / "plan.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, out = _run(["plan", "check", str(path)], capsys)
    assert code == 1
    assert expected in out
