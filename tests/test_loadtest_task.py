"""The Prefect task `run_load_test`: its summary and its artifacts (progress, table, windows),
for the built-in engine and for a k6 script run by the real k6 (given, or named by the plan)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _targets import Running, start_target, stop_target


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    """A throw-away Prefect server for this module, without the heartbeat thread."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60), \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A target answering at once."""
    t = start_target("fast", tmp_path_factory.mktemp("task") / "fast.log")
    yield t
    stop_target(t)


async def _artifacts(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_task_returns_the_summary_and_publishes_artifacts(harness: None, fast: Running) -> None:
    from prefect import flow

    from phasegate.tasks.loadtest import run_load_test

    options = {"scenarios": {"smoke_test": {
        "executor": "constant-vus", "vus": 2, "duration": "250s", "exec": "journey"}},
        "thresholds": {"http_req_duration": ["p(95)<2000"], "errors": ["rate<0.5"]}}

    @flow
    def probe() -> dict[str, Any]:
        return run_load_test(fast.url, options=options, scale=0.01)

    summary = probe()
    # the fast target answers every path 200, so the seed's journey passes its checks
    assert summary["exit_code"] == 0
    assert summary["metrics"]["http_req_duration"]["thresholds"]["p(95)<2000"]["ok"]
    table = asyncio.run(_artifacts("load-test-smoke-test"))
    assert table and table[0].type == "table"
    assert "http_req_duration" in str(table[0].data) and "p(95)<2000: pass" in str(table[0].data)
    windows = asyncio.run(_artifacts("load-test-smoke-test-windows"))
    assert windows and windows[0].type == "table"
    progress = asyncio.run(_artifacts("load-test-smoke-test-progress"))
    assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0


def test_task_is_never_retried() -> None:
    from phasegate.tasks.loadtest import run_load_test

    assert run_load_test.retries == 0


# A small script in the shape of the team's load_test.js: its own options and thresholds.
K6_SCRIPT = """
import http from 'k6/http';
import { check, sleep } from 'k6';
export const options = { vus: 2, duration: '1s', thresholds: { http_req_failed: ['rate<0.01'] } };
export default function () {
  const res = http.get(`${__ENV.TARGET}/v1/questions?subject=math`,
                       { tags: { name: 'questions' } });
  check(res, { 'status is 200': (r) => r.status === 200 });
  sleep(0.1);
}
"""


def _k6_probe(target: str, **kwargs: Any) -> dict[str, Any]:
    from prefect import flow

    from phasegate.tasks.loadtest import run_load_test

    @flow
    def probe() -> dict[str, Any]:
        return run_load_test(target, **kwargs)
    return probe()


def test_a_k6_script_gives_the_same_verdict_objects(harness: None, fast: Running,
                                                    tmp_path: Path) -> None:
    script = tmp_path / "load_test.js"
    script.write_text(K6_SCRIPT)
    passing = _k6_probe(fast.url, k6_script=str(script), options={"thresholds": {
        "http_req_duration{name:questions}": ["p(95)<2000"]}})
    assert passing["exit_code"] == 0 and passing["k6"]["exit_code"] == 0
    verdict = passing["metrics"]["http_req_duration{name:questions}"]["thresholds"]["p(95)<2000"]
    assert verdict["ok"] is True and verdict["observed"] > 0 and not verdict["no_data"]
    assert passing["checks"]["status is 200"]["fails"] == 0 and passing["windows"]
    table = asyncio.run(_artifacts("load-test-load-test"))
    assert table and "p(95)<2000: pass" in str(table[0].data)
    failing = _k6_probe(fast.url, k6_script=str(script), options={"thresholds": {
        "http_req_duration": ["max<0.001"]}})
    assert failing["exit_code"] == 99 and failing["k6"]["exit_code"] == 0  # ours failed
    assert failing["metrics"]["http_req_duration"]["thresholds"]["max<0.001"]["ok"] is False


def test_a_plan_phase_naming_a_k6_script_runs_k6(harness: None, fast: Running,
                                                 tmp_path: Path) -> None:
    from phasegate.policy.plan import DEFAULT_PLAN_PATH

    data = yaml.safe_load(DEFAULT_PLAN_PATH.read_text())
    data["phases"][1]["load_test"]["k6_script"] = "load_test.js"
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(data, allow_unicode=True))
    (tmp_path / "load_test.js").write_text(K6_SCRIPT)
    summary = _k6_probe(fast.url, phase=1, plan_path=str(plan))
    assert summary["meta"]["k6_script"] == str(tmp_path / "load_test.js")
    # the plan's phase-1 thresholds judged k6's samples
    assert summary["metrics"]["http_req_duration{name:questions}"]["thresholds"]["p(95)<500"][
        "ok"] is True
    assert summary["metrics"]["errors"]["thresholds"]["rate<0.01"]["no_data"] is True
    assert summary["exit_code"] == 0
