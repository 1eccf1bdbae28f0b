"""`phasegate loadtest run|export-k6` end to end against a local target: exit codes, summary
file layout, ad-hoc flags, the plan's phases, the k6 script."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from _targets import Running, start_target, stop_target

from phasegate.cli.main import main


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The seed's endpoints, 2 ms each, never failing."""
    t = start_target("journey", tmp_path_factory.mktemp("cli") / "api.log", "--base-ms", "2")
    yield t
    stop_target(t)


def _adhoc(api: Running, threshold: str, summary: Path) -> list[str]:
    return ["loadtest", "run", "--target", api.url, "--executor", "constant-arrival-rate",
            "--rate", "50", "--duration", "1s", "--path", "/v1/questions?subject=math",
            "--threshold", threshold, "--summary", str(summary), "--quiet"]


def test_passing_thresholds_exit_0_and_write_the_summary(api: Running, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    out = tmp_path / "summary.json"
    assert main(_adhoc(api, "http_req_duration: p(95)<1000", out)) == 0
    summary = json.loads(out.read_text())
    d = summary["metrics"]["http_req_duration"]
    assert {"avg", "min", "med", "max", "p(90)", "p(95)", "p(99)"} <= set(d)
    assert d["thresholds"]["p(95)<1000"]["ok"] is True
    assert summary["metrics"]["http_reqs"]["count"] == 51  # 50/s x 1 s + the one at 1 s, as k6
    assert {"value", "passes", "fails"} <= set(summary["metrics"]["http_req_failed"])
    assert summary["metrics"]["iterations"]["count"] == 51
    assert summary["windows"] and summary["aborted"] is False
    assert "http_req_duration" in capsys.readouterr().out  # the terminal table


def test_failing_threshold_exits_99(api: Running, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    assert main(_adhoc(api, "http_req_duration: max<0.001", out)) == 99
    assert json.loads(out.read_text())["metrics"]["http_req_duration"]["thresholds"][
        "max<0.001"]["ok"] is False


def test_plan_phase_runs_by_name_with_a_time_scale(api: Running, tmp_path: Path) -> None:
    out = tmp_path / "phase1.json"
    # phase 1 is 100 VUs for 5 min; x 0.004 = 1.2 s, sleeps 4 and 8 ms.
    code = main(["loadtest", "run", "phase1", "--target", api.url, "--scale", "0.004",
                 "--summary", str(out), "--quiet"])
    summary = json.loads(out.read_text())
    assert code == 0
    assert summary["metrics"]["vus_max"]["value"] == 100
    assert summary["metrics"]["http_req_duration{name:feedback}"]["thresholds"]["p(95)<5000"][
        "ok"] is True
    assert set(summary["checks"]) >= {"status is 200", "AI feedback success"}


def test_bad_input_exits_1(tmp_path: Path) -> None:
    assert main(["loadtest", "run", "--target", "ftp://127.0.0.1:80", "--quiet"]) == 1
    assert main(["loadtest", "run", "--threshold", "http_req_duration: p(95)<<3",
                 "--quiet"]) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenarios: {s: {executor: constant-vus, vus: -1, duration: 1s}}\n")
    assert main(["loadtest", "run", str(bad), "--quiet"]) == 1


def test_export_k6_writes_scenarios_and_thresholds(tmp_path: Path) -> None:
    out = tmp_path / "phase2.js"
    assert main(["loadtest", "export-k6", "--phase", "2", "--target", "http://127.0.0.1:9",
                 "--threshold", "errors: rate<0.05", "--out", str(out)]) == 0
    script = out.read_text()
    assert "export const options" in script and '"phase2"' in script
    assert '"executor": "ramping-vus"' in script and '"startVUs": 0' in script
    assert '"p(95)<300"' in script and '"rate<0.05"' in script
    assert '"http_req_duration{name:feedback}"' in script
    assert "export function journey()" in script and "/v1/feedback" in script


def test_export_k6_of_adhoc_flags_keeps_abort_settings(tmp_path: Path) -> None:
    spec = tmp_path / "opts.yaml"
    spec.write_text(
        "scenarios:\n  spike: {executor: constant-arrival-rate, rate: 200, duration: 15s,"
        " preAllocatedVUs: 50, maxVUs: 400, exec: llm}\n"
        "thresholds:\n  http_req_failed: [{threshold: 'rate<0.01', abortOnFail: true,"
        " delayAbortEval: 10s}]\n")
    out = tmp_path / "spike.js"
    assert main(["loadtest", "export-k6", str(spec), "--out", str(out)]) == 0
    script = out.read_text()
    assert '"preAllocatedVUs": 50' in script and '"maxVUs": 400' in script
    assert '"abortOnFail": true' in script and '"delayAbortEval": "10s"' in script
    assert '"exec": "llm"' in script and "export function llm()" in script
