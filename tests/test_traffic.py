"""lab.traffic against the real API simulator (Redis, PostgreSQL, vLLM stub behind it)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import _services as svc  # tests/ has no __init__.py: pytest puts tests/ itself on sys.path
import pytest

from phasegate.lab.control import set_traffic_rate
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, pid_alive, stop_pid, wait_for
from phasegate.lab.traffic import check_target, p95


@dataclass
class World:
    """A running API simulator and its lab."""

    layout: LabLayout
    api: str
    vllm: svc.VllmStub


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("lab")
    layout = LabLayout(root)
    layout.ensure()
    stub = svc.VllmStub().start()
    with svc.postgres_server() as pg, svc.redis_server(root) as rd:
        dsn = svc.create_app_db(pg)
        port = free_port()
        pid = svc.start_module("phasegate.lab.api_sim", [
            "--port", str(port), "--lab-dir", str(root), "--redis-url", rd.url,
            "--vllm-url", stub.url, "--app-dsn", dsn], layout.logs_dir / "api.log", port=port)
        try:
            yield World(layout, f"http://127.0.0.1:{port}", stub)
        finally:
            stop_pid(pid)
            stub.stop()


def question_requests(world: World) -> float:
    """Journeys so far, as the API counted them (each journey starts with one GET)."""
    status, body = svc.http_get(world.api + "/metrics")
    assert status == 200
    return sum(v for (name, labels), v in svc.parse_metrics(body.decode()).items()
               if name == "http_requests_total" and ("handler", "/v1/questions") in labels)


def _settled(world: World, last: list[float]) -> bool:
    """True when the count did not move since the previous call."""
    now = question_requests(world)
    settled = bool(last) and now == last[-1]
    last.append(now)
    return settled


def test_rate_is_kept_and_zero_is_idle(world: World) -> None:
    set_traffic_rate(world.layout, 0)
    log = world.layout.logs_dir / "traffic.log"
    pid = svc.start_module("phasegate.lab.traffic", ["--api-url", world.api, "--lab-dir",
                                           str(world.layout.root), "--summary-interval", "1"],
                           log)
    try:
        wait_for(lambda: "traffic driver ->" in log.read_text(), timeout=10, what="driver")
        start = question_requests(world)
        time.sleep(0.6)
        assert question_requests(world) == start  # idle at rate 0
        set_traffic_rate(world.layout, 20)
        time.sleep(3.0)
        set_traffic_rate(world.layout, 0)
        seen: list[float] = []
        wait_for(lambda: _settled(world, seen), timeout=5, interval=0.4, what="idle")
        journeys = question_requests(world) - start
        assert 45 <= journeys <= 75, journeys
        assert len(world.vllm.calls) >= 5  # about 30 % of the journeys asked for feedback
        wait_for(lambda: "journeys=" in log.read_text(), timeout=3, what="summary line")
    finally:
        t0 = time.monotonic()
        assert stop_pid(pid, timeout=2)
        assert time.monotonic() - t0 < 2 and not pid_alive(pid)
    assert "errors=0" in log.read_text()


def test_non_local_target_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "phasegate.lab.traffic", "--api-url",
                           "http://example.com", "--lab-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=20, cwd=svc.REPO)
    assert proc.returncode == 2 and "127.0.0.1" in proc.stderr
    with pytest.raises(ValueError):
        check_target("http://localhost:80")


def test_p95() -> None:
    assert p95([]) == 0.0
    assert p95([5.0]) == 5.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0
