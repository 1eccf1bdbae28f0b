"""lab.api_sim against real Redis and PostgreSQL and a local OpenAI-compatible vLLM stub."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import _services as svc  # tests/ has no __init__.py: pytest puts tests/ itself on sys.path
import pytest
import redis

from phasegate.lab.api_sim import API_BUCKETS, upstreams_file
from phasegate.lab.control import clear_faults, set_fault, write_json_atomic
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, stop_pid, wait_for
from phasegate.policy.metrics import is_known_metric


@dataclass
class World:
    """The running API simulator and everything around it."""

    layout: LabLayout
    api: str
    redis: redis.Redis
    vllm_a: svc.VllmStub
    vllm_b: svc.VllmStub
    pid: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("lab")
    layout = LabLayout(root)
    layout.ensure()
    a, b = svc.VllmStub().start(), svc.VllmStub().start()
    with svc.postgres_server() as pg, svc.redis_server(root) as rd:
        dsn = svc.create_app_db(pg)
        port = free_port()
        pid = svc.start_module("phasegate.lab.api_sim", [
            "--port", str(port), "--lab-dir", str(root), "--redis-url", rd.url,
            "--vllm-url", a.url, "--app-dsn", dsn, "--vllm-timeout", "1.0"],
            layout.logs_dir / "api.log", port=port)
        client = redis.Redis(port=rd.port)
        try:
            yield World(layout, f"http://127.0.0.1:{port}", client, a, b, pid)
        finally:
            client.close()
            stop_pid(pid)
            a.stop()
            b.stop()


@pytest.fixture(autouse=True)
def _clean(world: World) -> Iterator[None]:
    yield
    clear_faults(world.layout)
    upstreams_file(world.layout).unlink(missing_ok=True)
    world.layout.cloud_run_serving_file.unlink(missing_ok=True)
    world.vllm_a.delay_s = world.vllm_b.delay_s = 0.0


def scrape(world: World) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = svc.http_get(world.api + "/metrics")
    assert status == 200
    return svc.parse_metrics(body.decode())


def counter(world: World, name: str) -> float:
    return svc.metric(scrape(world), name) or 0.0


def test_questions_cache_miss_then_hit(world: World) -> None:
    world.redis.delete("api:questions:math")
    misses, hits = counter(world, "api_cache_misses_total"), counter(world, "api_cache_hits_total")
    status, body = svc.http_get(world.api + "/v1/questions?subject=math")
    assert status == 200
    questions = json.loads(body)
    assert [q["subject"] for q in questions] == ["math"] * 3
    assert "answer" not in questions[0]
    assert counter(world, "api_cache_misses_total") == misses + 1
    assert 0 < int(world.redis.ttl("api:questions:math")) <= 30
    status, again = svc.http_get(world.api + "/v1/questions?subject=math")
    assert (status, json.loads(again)) == (200, questions)
    assert counter(world, "api_cache_hits_total") == hits + 1
    assert counter(world, "api_cache_misses_total") == misses + 1


def test_questions_validation(world: World) -> None:
    assert svc.http_get(world.api + "/v1/questions")[0] == 400
    assert svc.http_get(world.api + "/v1/questions?subject=latin") == (200, b"[]")
    assert svc.http_get(world.api + "/v1/nothing")[0] == 404
    assert svc.http_request("DELETE", world.api + "/v1/questions")[0] == 405


def test_feedback_calls_upstream(world: World) -> None:
    before = len(world.vllm_a.calls)
    status, body = svc.http_request("POST", world.api + "/v1/feedback",
                                    {"question_id": "q123", "user_answer": "x = 5"})
    assert status == 200, body
    data = json.loads(body)
    assert data["feedback"].startswith("정답입니다")
    assert data["model"] == "Llama-2-13b-chat-hf" and data["latency_ms"] >= 0
    call = world.vllm_a.calls[before]
    assert call["model"] == "Llama-2-13b-chat-hf" and call["max_tokens"] == 96
    assert "x = 5" in call["prompt"] and "q123" in call["prompt"]


def test_feedback_bad_requests(world: World) -> None:
    url = world.api + "/v1/feedback"
    assert svc.http_request("POST", url, raw=b"{not json")[0] == 400
    assert svc.http_request("POST", url, {"question_id": 1})[0] == 400
    assert svc.http_request("POST", url, [1, 2])[0] == 400


def test_upstreams_file_switches_and_down_upstream_is_502(world: World) -> None:
    path: Path = upstreams_file(world.layout)
    write_json_atomic(path, {"vllm": [world.vllm_b.url]})
    before_a, before_b = len(world.vllm_a.calls), len(world.vllm_b.calls)
    for _ in range(2):
        status, body = svc.http_request("POST", world.api + "/v1/feedback",
                                        {"question_id": 1, "user_answer": "56"})
        assert status == 200
        assert f"port {world.vllm_b.port}" in json.loads(body)["feedback"]
    assert (len(world.vllm_a.calls), len(world.vllm_b.calls)) == (before_a, before_b + 2)
    write_json_atomic(path, {"vllm": [f"http://127.0.0.1:{free_port()}"]})
    status, body = svc.http_request("POST", world.api + "/v1/feedback",
                                    {"question_id": 1, "user_answer": "56"})
    assert status == 502 and "error" in json.loads(body)


def test_serving_revisions_env_routes_and_the_control_file_wins(world: World) -> None:
    """The API's instances follow their serving Cloud Run revision's VLLM_BASE_URLS."""
    world.layout.gcp_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(world.layout.cloud_run_serving_file, {"svc": {
        "revision": "r2", "env": {"VLLM_BASE_URLS": f"{world.vllm_b.url}/ , "}}})
    before_b = len(world.vllm_b.calls)
    body = {"question_id": 1, "user_answer": "56"}
    assert svc.http_request("POST", world.api + "/v1/feedback", body)[0] == 200
    assert len(world.vllm_b.calls) == before_b + 1
    write_json_atomic(upstreams_file(world.layout), {"vllm": [world.vllm_a.url]})
    before_a = len(world.vllm_a.calls)
    assert svc.http_request("POST", world.api + "/v1/feedback", body)[0] == 200
    assert len(world.vllm_a.calls) == before_a + 1  # the control file overrides the revision
    upstreams_file(world.layout).unlink()
    write_json_atomic(world.layout.cloud_run_serving_file,
                      {"svc": {"revision": "r3", "env": {"VLLM_BASE_URLS": ""}}})
    status, reply = svc.http_request("POST", world.api + "/v1/feedback", body)
    assert status == 502 and "no vLLM upstream" in json.loads(reply)["error"]


def test_round_robin_over_two_upstreams(world: World) -> None:
    write_json_atomic(upstreams_file(world.layout),
                      {"vllm": [world.vllm_a.url, world.vllm_b.url]})
    before = len(world.vllm_a.calls) + len(world.vllm_b.calls), len(world.vllm_b.calls)
    for _ in range(4):
        assert svc.http_request("POST", world.api + "/v1/feedback",
                                {"question_id": 1, "user_answer": "a"})[0] == 200
    assert len(world.vllm_b.calls) - before[1] == 2


def test_upstream_timeout_is_504(world: World) -> None:
    world.vllm_a.delay_s = 1.5
    status, body = svc.http_request("POST", world.api + "/v1/feedback",
                                    {"question_id": 1, "user_answer": "a"})
    assert status == 504 and "timed out" in json.loads(body)["error"]


def test_metrics_names_labels_and_business_gauges(world: World) -> None:
    svc.http_get(world.api + "/v1/questions?subject=physics")
    samples = scrape(world)
    names = {name for name, _ in samples}
    assert all(is_known_metric(n) for n in names), names
    assert svc.metric(samples, "dreamseed_registered_users") == 5
    assert svc.metric(samples, "dreamseed_daily_active_users") == 3
    les = sorted(float(dict(lbl)["le"]) for n, lbl in samples
                 if n == "http_request_duration_seconds_bucket"
                 and dict(lbl)["handler"] == "/v1/questions" and dict(lbl)["method"] == "GET")
    assert les == [*API_BUCKETS, float("inf")]
    assert svc.metric(samples, "http_requests_total", handler="/v1/questions",
                      method="GET", status="200")
    assert svc.metric(samples, "http_request_duration_seconds_count",
                      handler="/v1/questions", method="GET")


def test_active_connections_gauge_counts_in_flight(world: World) -> None:
    set_fault(world.layout, "api", "slow", ms=1500)
    url = world.api + "/v1/questions?subject=math"
    threads = [threading.Thread(target=svc.http_get, args=(url,)) for _ in range(5)]
    for t in threads:
        t.start()
    wait_for(lambda: counter(world, "api_active_connections") == 5, timeout=1.2,
             interval=0.05, what="5 in flight")
    for t in threads:
        t.join(timeout=5)
    assert counter(world, "api_active_connections") == 0


def test_faults_slow_and_erroring(world: World) -> None:
    set_fault(world.layout, "api", "slow", ms=300)
    start = time.monotonic()
    assert svc.http_get(world.api + "/v1/questions?subject=math")[0] == 200
    assert time.monotonic() - start >= 0.3
    assert svc.http_get(world.api + "/healthz") == (200, b"ok")
    clear_faults(world.layout)
    set_fault(world.layout, "api", "erroring", rate=1.0)
    assert svc.http_get(world.api + "/v1/questions?subject=math")[0] == 503
    assert svc.metric(scrape(world), "http_requests_total", handler="/v1/questions",
                      method="GET", status="503")
    clear_faults(world.layout)
    assert svc.http_get(world.api + "/v1/questions?subject=math")[0] == 200


def test_redis_down_serves_from_db(world: World) -> None:
    """With the cache unreachable every request is a miss, still answered from the DB."""
    misses = counter(world, "api_cache_misses_total")
    world.redis.config_set("requirepass", "locked-for-test")
    world.redis.client_kill_filter(_type="normal", skipme=True)  # others must re-authenticate
    try:
        status, body = svc.http_get(world.api + "/v1/questions?subject=math")
    finally:
        locked = redis.Redis(port=world.redis.connection_pool.connection_kwargs["port"],
                             password="locked-for-test")
        locked.config_set("requirepass", "")
        locked.close()
    assert status == 200 and len(json.loads(body)) == 3
    assert counter(world, "api_cache_misses_total") == misses + 1
