"""The whole lab, through the real clients: psycopg, redis-py, prometheus-api-client,
paramiko (RejectPolicy), httpx, the Google clients, and Prefect."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paramiko
import psycopg
import pytest
import redis
from prometheus_api_client import PrometheusConnect

from phasegate.blocks.systems import GpuHost, PostgresConnection, load_block
from phasegate.errors import PreconditionFailed
from phasegate.lab import control
from phasegate.lab.blocks import gpu_host_block
from phasegate.lab.monitoring import JOBS
from phasegate.tasks.gpu_hosts import detect_gpus, run_remote

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker


def test_status_json_has_the_documented_fields(lab: dict[str, Any]) -> None:
    out = subprocess.run([sys.executable, "-m", "phasegate.cli", "lab", "status", "--json",
                          "--dir", lab["dir"]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    for key in ("dsn", "app_dsn"):
        assert doc["postgres"][key].startswith("postgresql://")
    for part in ("redis", "prometheus", "alertmanager", "vllm", "api"):
        assert doc[part]["url"]
    assert doc["gcp"]["cloud_run_service"] == \
        "projects/dreamseed-prod/locations/asia-northeast3/services/dreamseed-api"
    assert {h["name"] for h in doc["gpu_hosts"]} == {"gpu-1", "gpu-2"}
    for h in doc["gpu_hosts"]:
        assert {"host", "port", "user", "key_path", "known_hosts", "gpus"} <= set(h)
    assert doc["prefect"]["api_url"].endswith("/api")
    assert all(doc["running"].values()), doc["running"]


def test_postgres_holds_seeded_app_data_and_state(lab: dict[str, Any]) -> None:
    with psycopg.connect(lab["postgres"]["app_dsn"]) as conn:
        days = conn.execute("SELECT count(*) FROM daily_active_users").fetchone()[0]
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    assert days >= 90
    assert 800 < users < 1300  # around the phase 1 -> 2 threshold of 1,000
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        assert conn.execute("SELECT phase FROM phase_state").fetchone()[0] == 1


def test_redis_answers_and_reports_its_memory_config(lab: dict[str, Any]) -> None:
    r = redis.Redis.from_url(lab["redis"]["url"])
    assert r.ping()
    assert int(r.config_get("maxmemory")["maxmemory"]) == 4 * 1024**3


def test_prometheus_has_90_days_of_history_and_live_scrapes(lab: dict[str, Any]) -> None:
    prom = PrometheusConnect(url=lab["prometheus"]["url"], disable_ssl=True)
    end = datetime.now(UTC)
    series = prom.custom_query_range("avg(DCGM_FI_DEV_GPU_UTIL)", start_time=end -
                                     timedelta(days=89), end_time=end, step="1d")
    assert len(series) == 1 and len(series[0]["values"]) >= 85
    up = prom.custom_query("up")
    assert {s["metric"]["job"] for s in up if s["value"][1] == "1"} == {*JOBS, "vllm"}


def test_alertmanager_is_ready(lab: dict[str, Any]) -> None:
    resp = httpx.get(lab["alertmanager"]["url"] + "/api/v2/status", timeout=5)
    assert resp.status_code == 200 and resp.json()["cluster"]["status"] == "disabled"


def _hosts(lab: dict[str, Any]) -> dict[str, GpuHost]:
    return {h["name"]: gpu_host_block(h) for h in lab["gpu_hosts"]}


def test_ssh_reaches_two_distinct_hosts(lab: dict[str, Any]) -> None:
    seen = {name: run_remote(h, ["printenv", "PHASEGATE_GPU_HOST"]).stdout.strip()
            for name, h in _hosts(lab).items()}
    assert seen == {"gpu-1": "gpu-1", "gpu-2": "gpu-2"}


def test_wrong_host_key_is_refused(lab: dict[str, Any]) -> None:
    hosts = _hosts(lab)
    good, other = hosts["gpu-1"], hosts["gpu-2"]
    # gpu-2's key presented as gpu-1's: a different machine answering on gpu-1's address.
    forged_line = other.known_hosts.replace(f"[127.0.0.1]:{other.port}",
                                            f"[127.0.0.1]:{good.port}")
    forged = good.model_copy(update={"known_hosts": forged_line})
    with pytest.raises(paramiko.BadHostKeyException):
        forged.get_client()
    with pytest.raises(PreconditionFailed, match="host key does not match"):
        run_remote(forged, ["true"])
    unknown = good.model_copy(update={"known_hosts": ""})
    with pytest.raises(PreconditionFailed):
        run_remote(unknown, ["true"])


def test_gpu_detection_follows_lab_gpus(lab: dict[str, Any], lab_layout: Any) -> None:
    hosts = _hosts(lab)
    assert [g.name for g in detect_gpus.fn(hosts["gpu-1"])] == ["NVIDIA RTX A6000"]
    assert detect_gpus.fn(hosts["gpu-2"]) == []
    out = subprocess.run([sys.executable, "-m", "phasegate.cli", "lab", "gpus", "gpu-2", "2",
                          "--dir", lab["dir"]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    try:
        gpus = detect_gpus.fn(hosts["gpu-2"])
        assert [g.index for g in gpus] == [0, 1] and len({g.uuid for g in gpus}) == 2
    finally:
        control.set_gpu_count(lab_layout, "gpu-2", 0)


def test_vllm_and_api_answer(lab: dict[str, Any]) -> None:
    body = {"model": "Llama-2-13b-chat-hf", "prompt": "x^2+5x+6=0 을 풀어주세요", "max_tokens": 8}
    resp = httpx.post(lab["vllm"]["url"] + "/v1/completions", json=body, timeout=30)
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"]
    q = httpx.get(lab["api"]["url"] + "/v1/questions", params={"subject": "math"}, timeout=10)
    assert q.status_code == 200 and q.json()


def test_cloud_run_service_is_in_phase_1(lab: dict[str, Any]) -> None:
    from phasegate.blocks.systems import GcpConnection
    from phasegate.tasks.cloud_run import read_service_settings

    settings = read_service_settings.fn(load_block(GcpConnection, "lab-gcp"))
    assert (settings["min_instances"], settings["max_instances"]) == (0, 3)


def test_blocks_are_saved_without_secrets_in_clear(lab: dict[str, Any]) -> None:
    pg = load_block(PostgresConnection, "lab-postgres")
    with pg.get_connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    host = load_block(GpuHost, "lab-gpu-1")
    assert "PRIVATE KEY" not in repr(host) and "PRIVATE KEY" not in str(host.model_dump())


def test_smoke_flow_runs_through_prefect(lab: dict[str, Any]) -> None:
    from phasegate.flows.smoke import smoke

    state = smoke(return_state=True)
    assert state.is_completed(), state
    seen = state.result()
    assert seen["phase"] == 1 and seen["gpus"] == {"gpu-1": ["NVIDIA RTX A6000"], "gpu-2": []}
    assert seen["vllm_healthy"] and seen["completion"]
    assert seen["gpu_util_7d_points"] >= 160
    assert seen["cloud_run"]["max_instances"] == 3


def test_lab_dir_is_self_contained(lab: dict[str, Any]) -> None:
    doc = json.loads((Path(lab["dir"]) / "lab.json").read_text())
    assert doc["ready_seconds"] > 0


def _cli(lab: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phasegate.cli", "lab", *args, "--dir",
                           lab["dir"]], capture_output=True, text=True, timeout=60)


def test_vllm_fault_commands_reach_the_simulator(lab: dict[str, Any]) -> None:
    url = lab["vllm"]["url"]
    body = {"model": "Llama-2-13b-chat-hf", "prompt": "hi", "max_tokens": 2}
    assert _cli(lab, "fault", "vllm", "erroring", "--param", "rate=1").returncode == 0
    try:
        assert httpx.post(url + "/v1/completions", json=body, timeout=30).status_code == 500
        assert _cli(lab, "fault", "vllm", "never-healthy").returncode == 0
        assert httpx.get(url + "/health", timeout=5).status_code == 503
    finally:
        assert _cli(lab, "fault", "--clear").returncode == 0
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    assert httpx.post(url + "/v1/completions", json=body, timeout=30).status_code == 200
    bad = _cli(lab, "fault", "vllm", "melt")
    assert bad.returncode == 1 and "unknown fault vllm:melt" in bad.stderr


def test_traffic_command_sets_the_driver_rate(lab: dict[str, Any], lab_layout: Any) -> None:
    assert _cli(lab, "traffic", "7.5").returncode == 0
    try:
        assert control.read_traffic_rate(lab_layout) == 7.5
        assert _cli(lab, "traffic", "-1").returncode != 0
    finally:
        control.set_traffic_rate(lab_layout, 2.0)


def test_lab_slack_block_delivers_to_the_receiver(lab: dict[str, Any], lab_layout: Any) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from phasegate.lab.receiver import read_inbox

    block = load_block(CustomWebhookNotificationBlock, "lab-slack")
    block.notify("phase 1 -> 2 is due", subject="phasegate")
    texts = [m["body"].get("text", "") for m in read_inbox(lab_layout, "slack")]
    assert any("phase 1 -> 2 is due" in t for t in texts), texts


def test_loadtest_against_the_lab_api_and_vllm(lab: dict[str, Any], tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    base = [sys.executable, "-m", "phasegate.cli", "loadtest", "run", "--quiet"]
    ok = subprocess.run([*base, "--target", lab["api"]["url"], "--executor",
                         "constant-arrival-rate", "--rate", "50", "--duration", "2s",
                         "--max-vus", "50", "--path", "/v1/questions?subject=math",
                         "--threshold", "http_req_failed: rate<0.01",
                         "--threshold", "dropped_iterations: count<1",
                         "--summary", str(summary)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    doc = json.loads(summary.read_text())
    assert 90 <= doc["metrics"]["http_reqs"]["count"] <= 110
    llm = subprocess.run([*base, "--target", lab["vllm"]["url"], "--llm", "--executor",
                          "constant-vus", "--vus", "4", "--duration", "2s", "--max-tokens", "8",
                          "--model", "Llama-2-13b-chat-hf", "--threshold",
                          "llm_errors: rate<0.01", "--summary", str(summary)],
                         capture_output=True, text=True, timeout=120)
    assert llm.returncode == 0, llm.stdout[-3000:] + llm.stderr[-2000:]
    assert json.loads(summary.read_text())["metrics"]["llm_ttft"]["p(95)"] > 0
    bad = subprocess.run([*base, "--target", lab["api"]["url"], "--executor", "constant-vus",
                          "--vus", "2", "--duration", "1s", "--path", "/v1/questions",
                          "--threshold", "http_req_duration: p(95)<0.001"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 99
