"""History: write OpenMetrics from the world, load it with the real promtool, start a real
Prometheus on it and query it over HTTP."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from phasegate.errors import LabError
from phasegate.lab.disk_exporter import PG_MOUNTPOINT
from phasegate.lab.history import HistoryLabels, load_history, write_openmetrics
from phasegate.lab.monitoring import APP_DB_OID, JOBS
from phasegate.lab.procs import free_port, spawn, stop_pid, wait_for
from phasegate.lab.world import TZ, World
from phasegate.policy.metrics import HISTOGRAM_BASES, KNOWN_METRICS

NOW = datetime(2025, 11, 20, 15, 0, tzinfo=TZ)
END = NOW - timedelta(minutes=1)
LABELS = HistoryLabels(api_instance="127.0.0.1:18080", gpu_uuid="GPU-test-uuid")

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None
                                or shutil.which("prometheus") is None,
                                reason="promtool/prometheus not installed")


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(NOW, days=21)


@pytest.fixture(scope="module")
def history(world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("history") / "history.om"
    t = time.perf_counter()
    n = write_openmetrics(out, world, LABELS, END)
    print(f"write_openmetrics: {n} samples in {time.perf_counter() - t:.2f}s")
    return out, n


def _ready(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200


def _start_prometheus(root: Path) -> tuple[int, str]:
    config = root / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    for _ in range(3):
        port = free_port()
        pid = spawn(["prometheus", f"--web.listen-address=127.0.0.1:{port}",
                     f"--storage.tsdb.path={root / 'data'}",
                     "--storage.tsdb.retention.time=400d", f"--config.file={config}"],
                    root / "prometheus.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(_ready(url), timeout=30, what="prometheus")
            return pid, url
        except TimeoutError:
            stop_pid(pid)
    raise RuntimeError((root / "prometheus.log").read_text()[-2000:])


@pytest.fixture(scope="module")
def prom(history: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[str]:
    root = tmp_path_factory.mktemp("prom")
    t = time.perf_counter()
    load_history(history[0], root / "data")
    print(f"load_history (promtool): {time.perf_counter() - t:.2f}s")
    pid, url = _start_prometheus(root)
    try:
        yield url
    finally:
        stop_pid(pid)


def _query(url: str, q: str, at: float) -> list[dict]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": q, "time": at}, timeout=30)
    r.raise_for_status()
    return r.json()["data"]["result"]


def _scalar(url: str, q: str, at: float) -> float:
    res = _query(url, q, at)
    assert len(res) == 1, (q, res)
    return float(res[0]["value"][1])


def _slot(world: World, at: float) -> dict:
    return world.slots.set_index("ts").loc[int(at)].to_dict()


def test_file_format(history: tuple[Path, int], world: World) -> None:
    path, n = history
    text = path.read_text()
    assert text.endswith("# EOF\n")
    n_slots = int((world.slots["ts"] <= END.timestamp()).sum())
    assert n % n_slots == 0 and n // n_slots > 70
    series: dict[str, list[tuple[float, int]]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, value, ts = line.rsplit(" ", 2)
        series.setdefault(key, []).append((float(value), int(ts)))
    assert sum(len(v) for v in series.values()) == n
    for key, points in series.items():
        stamps = [t for _, t in points]
        assert stamps == sorted(stamps) and stamps[-1] <= END.timestamp(), key
        if re.match(r"^\S+(_total|_bucket|_count|_sum|xact_commit|xact_rollback)\{", key):
            vals = np.array([v for v, _ in points])
            assert (np.diff(vals) >= 0).all(), f"counter {key} decreases"


def test_series_names_equal_catalog(prom: str) -> None:
    r = httpx.get(f"{prom}/api/v1/label/__name__/values", timeout=10)
    names = set(r.json()["data"])
    assert names <= KNOWN_METRICS, names - KNOWN_METRICS
    for must in ("http_requests_total", "api_cache_hits_total", "api_cache_misses_total",
                 "vllm:request_queue_time_seconds_bucket", "DCGM_FI_DEV_GPU_UTIL",
                 "node_network_receive_bytes_total", "pg_stat_database_xact_commit",
                 "dreamseed_registered_users", "http_request_duration_seconds_bucket"):
        assert must in names
    hist = {n.rsplit("_", 1)[0] for n in names if n.endswith(("_bucket", "_sum", "_count"))}
    assert hist <= HISTOGRAM_BASES


def test_gpu_util_7_days_hourly(prom: str, world: World) -> None:
    end = int(END.timestamp()) // 3600 * 3600
    r = httpx.get(f"{prom}/api/v1/query_range", timeout=30, params={
        "query": "avg(DCGM_FI_DEV_GPU_UTIL)", "start": end - 7 * 86400, "end": end,
        "step": "1h"})
    values = r.json()["data"]["result"][0]["values"]
    assert len(values) == 7 * 24 + 1
    slots = world.slots.set_index("ts")["gpu_util"]
    for at, v in values:
        assert float(v) == pytest.approx(round(slots.loc[int(at)]), abs=0.51)
    peak = max(float(v) for _, v in values)
    assert 80 <= peak <= 95


def test_api_p95_at_peak_matches_world(prom: str, world: World) -> None:
    q = "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[10m])))"
    day_start = datetime(2025, 11, 19, tzinfo=TZ).timestamp()
    for hour in (19.5, 20.0, 21.0, 22.0):
        at = day_start + hour * 3600
        want = np.mean([_slot(world, at - 300)["api_p95_ms"], _slot(world, at)["api_p95_ms"]])
        got = _scalar(prom, q, at) * 1000
        assert got == pytest.approx(want, rel=0.15), (hour, got, want)
        assert 300 < got < 700


def test_queue_wait_and_gauges(prom: str, world: World) -> None:
    day_end = datetime(2025, 11, 20, tzinfo=TZ).timestamp()       # end of Nov 19 (local)
    row = world.daily.set_index("day").loc[datetime(2025, 11, 19).date()]
    assert _scalar(prom, "dreamseed_daily_active_users", day_end) == row["dau"]
    assert _scalar(prom, "dreamseed_registered_users", day_end) == row["users_total"]
    at = day_end - 3 * 3600                                         # 21:00 KST
    q = ("histogram_quantile(0.95, sum by (le) "
         "(rate(vllm:request_queue_time_seconds_bucket[10m])))")
    want = _slot(world, at)["queue_p95_s"]
    assert _scalar(prom, q, at) == pytest.approx(want, rel=0.3)
    miss = _scalar(prom, "sum(increase(api_cache_misses_total[1h])) / (sum(increase("
                         "api_cache_misses_total[1h])) + sum(increase(api_cache_hits_total[1h])))",
                   at)
    assert 0.25 < miss < 0.35
    assert _scalar(prom, "sum(resets(http_requests_total[7d]))", at) == 0


def test_load_history_reports_promtool_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.om"
    bad.write_text("# TYPE x gauge\nx{a=\"1\"} not-a-number 1\n# EOF\n")
    with pytest.raises(LabError, match="promtool exited"):
        load_history(bad, tmp_path / "tsdb")


def test_jobs_and_labels_are_the_live_scrapes(prom: str) -> None:
    """The seed's job names, and the labels the real exporters give each series."""
    def labels(q: str) -> list[dict[str, str]]:
        return [r["metric"] for r in _query(prom, q, END.timestamp())]

    jobs = {m["job"] for m in labels("count by (job) ({__name__=~'.+'})")}
    assert jobs == {*JOBS, "vllm"}
    [pg] = labels("pg_stat_database_xact_commit")
    assert pg == {"__name__": "pg_stat_database_xact_commit", "job": "postgres",
                  "instance": LABELS.postgres_instance, "datid": str(APP_DB_OID),
                  "datname": "dreamseed", "server": LABELS.pg_server}
    [disk] = labels("node_filesystem_avail_bytes")
    assert disk["job"] == "lab-disk" and disk["mountpoint"] == PG_MOUNTPOINT
    assert {m["device"] for m in labels("node_network_receive_bytes_total{job='node'}")} \
        == {LABELS.net_device}
    assert {m["job"] for m in labels("redis_memory_used_bytes")} == {"redis"}
