"""The Prefect task `run_load_test`: its summary and its artifacts (progress, table, windows)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
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
