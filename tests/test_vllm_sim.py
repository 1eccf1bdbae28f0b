"""The vLLM simulator (lab.vllm_sim) as a real process, and its capacity model (lab.gpu_model)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from phasegate.lab.control import clear_faults, set_fault, set_gpu_count, set_setting
from phasegate.lab.gpu_model import (
    ModelShape,
    gpu_spec,
    gpu_utilization,
    percentile,
    replica_capacity,
    step_seconds,
)
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, spawn, stop_pid, wait_for, wait_port

ROOT = Path(__file__).resolve().parents[1]
LLAMA_13B = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 40,
             "num_hidden_layers": 40, "hidden_size": 5120, "intermediate_size": 13824,
             "num_key_value_heads": 40, "vocab_size": 32000, "max_position_embeddings": 4096,
             "torch_dtype": "float16"}
A6000 = gpu_spec("NVIDIA RTX A6000", 49140)


@dataclass
class Sim:
    """A running simulator started by a test."""

    pid: int
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_lab(root: Path, gpus: int = 2, load_seconds: float = 0.3) -> tuple[LabLayout, Path]:
    """A lab dir with host gpu-1 holding `gpus` GPUs and a Llama-2-13B-shaped model dir."""
    layout = LabLayout(root)
    layout.ensure()
    layout.host_dir("gpu-1").mkdir(parents=True, exist_ok=True)
    set_gpu_count(layout, "gpu-1", gpus)
    set_setting(layout, "vllm_load_seconds", load_seconds)
    model = layout.host_dir("gpu-1") / "models" / "llama-2-13b"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(LLAMA_13B))
    return layout, model


def sim_argv(layout: LabLayout, model: Path, port: int, *extra: str,
             visible: str = "0,1") -> list[str]:
    """The command line the docker shim would run."""
    return [sys.executable, "-m", "phasegate.lab.vllm_sim", "--model", str(model),
            "--port", str(port),
            "--gpu-host", "gpu-1", "--lab-dir", str(layout.root), "--visible-gpus", visible,
            *extra]


def start(layout: LabLayout, model: Path, *extra: str, visible: str = "0,1",
          healthy: bool = True, name: str = "vllm") -> Sim:
    """Spawn a simulator; wait for its port (and /health 200 when `healthy`)."""
    port = free_port()
    log = layout.logs_dir / f"{name}-{port}.log"
    pid = spawn(sim_argv(layout, model, port, *extra, visible=visible), log, cwd=ROOT)
    sim = Sim(pid, port, log)
    try:
        wait_port(port, timeout=15)
        if healthy:
            wait_healthy(sim)
    except Exception:
        stop_pid(pid)
        raise
    return sim


def wait_healthy(sim: Sim, timeout: float = 15) -> None:
    """Until /health answers 200."""
    wait_for(lambda: httpx.get(f"{sim.url}/health", timeout=2).status_code == 200, timeout,
             what="vllm_sim /health")


def run_refused(layout: LabLayout, model: Path, *extra: str,
                visible: str = "0,1") -> subprocess.CompletedProcess[str]:
    """Run a simulator that should refuse to start; its exit status and output."""
    argv = sim_argv(layout, model, free_port(), *extra, visible=visible)
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=20)


def metric_values(text: str, name: str) -> list[float]:
    """Values of every sample of `name` (exact series name, any labels)."""
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabLayout, Path]:
    """One lab for the module."""
    return make_lab(tmp_path_factory.mktemp("vlab"))


@pytest.fixture(scope="module")
def sim(lab: tuple[LabLayout, Path]) -> Iterator[Sim]:
    """A healthy TP1 simulator serving `llama` on GPU 0."""
    layout, model = lab
    s = start(layout, model, "--served-model-name", "llama", "--max-model-len", "2048",
              visible="0", name="shared")
    yield s
    stop_pid(s.pid)
    clear_faults(layout)


# --- the pure model --------------------------------------------------------------------------


def test_model_sizes_follow_the_config() -> None:
    shape = ModelShape.from_config(LLAMA_13B)
    assert 25e9 < shape.weight_bytes() < 27e9            # 13B in fp16 ~ 26 GB
    assert shape.kv_bytes_per_token() == 2 * 40 * 40 * 128 * 2
    one = replica_capacity(shape, A6000, 1, 1, 0.9, 4096)
    two = replica_capacity(shape, A6000, 2, 1, 0.9, 4096)
    assert 15_000 < one.kv_cache_tokens < 30_000
    assert two.kv_cache_tokens > 3 * one.kv_cache_tokens  # weights are paid once
    assert two.weights_mib_per_gpu == pytest.approx(one.weights_mib_per_gpu / 2)


def test_steps_shrink_with_tp_and_grow_with_batch() -> None:
    shape = ModelShape.from_config(LLAMA_13B)
    t1 = step_seconds(shape, A6000, 1, 1, 100)
    t2 = step_seconds(shape, A6000, 2, 1, 100)
    assert t2 < t1 < 2 * t2                               # faster, but sub-linear
    assert step_seconds(shape, A6000, 1, 64, 64 * 200) > 1.5 * t1
    assert step_seconds(shape, A6000, 1, 2048, 2048) > 10 * t1  # prefill is compute bound


def test_capacity_refusals_and_utilization_formula() -> None:
    shape = ModelShape.from_config(LLAMA_13B)
    with pytest.raises(ValueError, match="No available memory for the cache blocks"):
        replica_capacity(shape, A6000, 1, 1, 0.5, 4096)
    with pytest.raises(ValueError, match="max seq len"):
        replica_capacity(shape, A6000, 1, 1, 0.6, 4096)
    assert gpu_utilization(0.0, 1.0) == 0.0
    assert 20 <= gpu_utilization(1.0, 0.01) <= 30        # one request is not 100 %
    assert gpu_utilization(1.0, 1.0) == 100.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


# --- startup -----------------------------------------------------------------------------------


def test_refusals_use_vllm_wording(tmp_path: Path) -> None:
    layout, model = make_lab(tmp_path, gpus=4)
    tp3 = run_refused(layout, model, "--tensor-parallel-size", "3", visible="0,1,2,3")
    assert tp3.returncode != 0
    assert ("Total number of attention heads (40) must be divisible by tensor parallel "
            "size (3).") in tp3.stdout
    few = run_refused(layout, model, "--tensor-parallel-size", "2", visible="0")
    assert few.returncode != 0 and "max local gpu count (1)" in few.stdout
    pp = run_refused(layout, model, "-tp", "2", "--pipeline-parallel-size", "2", visible="0,1")
    assert pp.returncode != 0 and "world_size (4)" in pp.stdout
    none = run_refused(layout, model, visible="")
    assert none.returncode != 0 and "No CUDA GPUs are available" in none.stdout
    missing = run_refused(layout, tmp_path / "no-such-model", visible="0")
    assert missing.returncode != 0 and "config.json" in missing.stdout


def test_health_is_503_while_loading_then_200(tmp_path: Path) -> None:
    layout, model = make_lab(tmp_path, load_seconds=1.5)
    s = start(layout, model, "--some-unknown-vllm-flag", "x", healthy=False)
    try:
        assert httpx.get(f"{s.url}/health").status_code == 503
        body = {"model": str(model), "prompt": "hi", "max_tokens": 2}
        assert httpx.post(f"{s.url}/v1/completions", json=body).status_code == 503
        wait_healthy(s, timeout=10)
        models = httpx.get(f"{s.url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == [str(model)]  # default served name
        assert httpx.post(f"{s.url}/v1/completions", json=body).status_code == 200
        assert "--some-unknown-vllm-flag" in s.log.read_text()
    finally:
        stop_pid(s.pid)


def test_never_healthy_fault(sim: Sim, lab: tuple[LabLayout, Path]) -> None:
    layout, _ = lab
    set_fault(layout, "vllm", "never-healthy")
    try:
        codes = set()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            codes.add(httpx.get(f"{sim.url}/health").status_code)
            time.sleep(0.1)
        assert codes == {503}
    finally:
        clear_faults(layout, "vllm")
    assert httpx.get(f"{sim.url}/health").status_code == 200


# --- the OpenAI API ----------------------------------------------------------------------------


def test_completion_and_chat(sim: Sim) -> None:
    body = {"model": "llama", "prompt": "Explain how to solve 2x - 3 = 7", "max_tokens": 7}
    r = httpx.post(f"{sim.url}/v1/completions", json=body, timeout=10)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["finish_reason"] == "length"
    assert len(data["choices"][0]["text"].split()) == 7
    assert data["usage"] == {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16,
                             "prompt_tokens_details": None}
    again = httpx.post(f"{sim.url}/v1/completions", json=body, timeout=10).json()
    assert again["choices"][0]["text"] == data["choices"][0]["text"]  # deterministic
    chat = {"model": "llama", "messages": [{"role": "user", "content": "x + 1 = 3?"}],
            "max_tokens": 5}
    c = httpx.post(f"{sim.url}/v1/chat/completions", json=chat, timeout=10).json()
    assert c["object"] == "chat.completion"
    assert c["choices"][0]["message"]["role"] == "assistant"
    assert c["usage"]["completion_tokens"] == 5
    models = httpx.get(f"{sim.url}/v1/models").json()
    assert models["data"][0]["id"] == "llama" and models["data"][0]["max_model_len"] == 2048


def sse_events(url: str, body: dict[str, Any]) -> list[str]:
    """The `data:` payloads of a streamed response."""
    with httpx.stream("POST", url, json=body, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]


def test_streaming_chunks_end_with_done(sim: Sim) -> None:
    events = sse_events(f"{sim.url}/v1/completions",
                        {"model": "llama", "prompt": "what is 3 x 4", "max_tokens": 6,
                         "stream": True})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 6
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    chat = sse_events(f"{sim.url}/v1/chat/completions",
                      {"model": "llama", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 4, "stream": True,
                       "stream_options": {"include_usage": True}})
    assert chat[-1] == "[DONE]"
    parsed = [json.loads(e) for e in chat[:-1]]
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert parsed[0]["object"] == "chat.completion.chunk"
    assert sum(1 for p in parsed if p["choices"] and "content" in p["choices"][0]["delta"]) == 5
    assert parsed[-1]["usage"]["completion_tokens"] == 4


def test_request_errors_look_like_vllm(sim: Sim) -> None:
    url = f"{sim.url}/v1/completions"
    r = httpx.post(url, json={"model": "gpt-4", "prompt": "hi"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "The model `gpt-4` does not exist."
    assert r.json()["error"]["type"] == "NotFoundError" and r.json()["error"]["code"] == 404
    assert httpx.post(url, content=b"{not json").status_code == 400
    assert httpx.post(url, json={"model": "llama"}).status_code == 400
    long = httpx.post(url, json={"model": "llama", "prompt": "word " * 100, "max_tokens": 2000})
    assert long.status_code == 400
    assert "maximum context length is 2048 tokens" in long.json()["error"]["message"]


def test_metrics_names_and_counters_move(sim: Sim) -> None:
    before = httpx.get(f"{sim.url}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:inter_token_latency_seconds_bucket",
                 "vllm:request_inference_time_seconds_sum",
                 "vllm:request_prefill_time_seconds_count",
                 "vllm:request_decode_time_seconds_count",
                 "vllm:request_prompt_tokens_bucket", "vllm:request_generation_tokens_bucket"):
        assert metric_values(before, name), name
    assert 'vllm:num_requests_running{engine="0",model_name="llama"}' in before
    assert 'vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="llama"}' \
        in before
    assert 'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="llama"}' \
        in before
    prompt = "system: you are a math tutor for middle school students " * 4
    for _ in range(2):
        body = {"model": "llama", "prompt": prompt, "max_tokens": 3}
        assert httpx.post(f"{sim.url}/v1/completions", json=body, timeout=10).status_code == 200
    after = httpx.get(f"{sim.url}/metrics").text
    for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:e2e_request_latency_seconds_count", "vllm:prefix_cache_hits_total",
                 "vllm:request_queue_time_seconds_count"):
        assert sum(metric_values(after, name)) > sum(metric_values(before, name)), name
    ok = 'vllm:request_success_total{engine="0",finished_reason="length",model_name="llama"}'
    assert metric_values(after, ok.split("{")[0])
    assert ok in after


def test_faults_erroring_and_slow(sim: Sim, lab: tuple[LabLayout, Path]) -> None:
    layout, _ = lab
    body = {"model": "llama", "prompt": "1 + 1", "max_tokens": 4}
    url = f"{sim.url}/v1/completions"
    t0 = time.monotonic()
    assert httpx.post(url, json=body, timeout=10).status_code == 200
    base = time.monotonic() - t0
    set_fault(layout, "vllm", "erroring", rate=0.3)
    try:
        codes = asyncio.run(post_many(url, body, 200))
    finally:
        clear_faults(layout, "vllm")
    share = codes.count(500) / len(codes)
    assert set(codes) <= {200, 500} and 0.2 <= share <= 0.4, share
    set_fault(layout, "vllm", "slow", factor=5)
    try:
        t0 = time.monotonic()
        assert httpx.post(url, json=body, timeout=20).status_code == 200
        slow = time.monotonic() - t0
    finally:
        clear_faults(layout, "vllm")
    assert slow > 2.5 * base, (slow, base)


async def post_many(url: str, body: dict[str, Any], n: int) -> list[int]:
    """POST `body` n times concurrently; the status codes."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one() -> int:
            async with session.post(url, json=body) as r:
                await r.read()
                return r.status
        return list(await asyncio.gather(*(one() for _ in range(n))))


# --- load: capacity, latency, concurrency ------------------------------------------------------


async def open_load(url: str, model: str, rate: float, seconds: float,
                    prompt_words: int, max_tokens: int) -> list[float]:
    """Open-model load: `rate` requests/s for `seconds`; e2e latencies of the answers."""
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(i: int) -> None:
            prompt = " ".join(f"w{i}x{j}" for j in range(prompt_words))
            t0 = time.monotonic()
            async with session.post(url, json={"model": model, "prompt": prompt,
                                               "max_tokens": max_tokens}) as r:
                await r.read()
                assert r.status == 200
            latencies.append(time.monotonic() - t0)

        start_t, tasks = time.monotonic(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start_t + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    return latencies


def queue_mean(metrics_text: str) -> float:
    """Mean vllm:request_queue_time_seconds."""
    total = sum(metric_values(metrics_text, "vllm:request_queue_time_seconds_sum"))
    count = sum(metric_values(metrics_text, "vllm:request_queue_time_seconds_count"))
    return total / count if count else 0.0


def test_tp2_beats_tp1_at_the_same_load(tmp_path: Path) -> None:
    layout, model = make_lab(tmp_path, gpus=2)
    extra = ("--gpu-memory-utilization", "0.58", "--max-model-len", "2048")
    tp1 = start(layout, model, *extra, visible="0", name="tp1")
    tp2 = start(layout, model, *extra, "--tensor-parallel-size", "2", visible="0,1", name="tp2")
    try:
        async def both() -> tuple[list[float], list[float]]:
            a, b = await asyncio.gather(
                *(open_load(f"{s.url}/v1/completions", str(model), 30, 2.0, 60, 24)
                  for s in (tp1, tp2)))
            return a, b
        lat1, lat2 = asyncio.run(both())
        m1, m2 = (httpx.get(f"{s.url}/metrics").text for s in (tp1, tp2))
    finally:
        stop_pid(tp1.pid)
        stop_pid(tp2.pid)
    p1, p2 = percentile(lat1, 0.95), percentile(lat2, 0.95)
    print(f"p95 TP1 {p1:.2f}s TP2 {p2:.2f}s; mean queue TP1 {queue_mean(m1):.3f}s "
          f"TP2 {queue_mean(m2):.3f}s")
    assert len(lat1) == len(lat2) == 60
    assert p2 < 0.8 * p1
    # TP1 queues (its KV cache is full) at a load TP2 takes without queueing
    assert queue_mean(m1) > 0.2 and queue_mean(m1) > 4 * queue_mean(m2)


def test_hundreds_of_concurrent_requests(sim: Sim) -> None:
    async def burst() -> tuple[int, int]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(i: int) -> bool:
                body = {"model": "llama", "prompt": f"question {i} about fractions",
                        "max_tokens": 16, "stream": i % 2 == 0}
                async with session.post(f"{sim.url}/v1/completions", json=body) as r:
                    text = await r.text()
                    return r.status == 200 and (i % 2 == 1 or text.endswith("data: [DONE]\n\n"))
            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(400))), 30)
            return sum(results), len(results)
    t0 = time.monotonic()
    ok, total = asyncio.run(burst())
    print(f"400 concurrent requests in {time.monotonic() - t0:.2f}s")
    assert ok == total == 400


# --- GPU load file and shutdown ----------------------------------------------------------------


def test_gpu_load_written_and_reset_on_sigterm(tmp_path: Path) -> None:
    layout, model = make_lab(tmp_path, gpus=2, load_seconds=0.2)
    port = free_port()
    log = open(layout.logs_dir / "sigterm.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(sim_argv(layout, model, port, "-tp", "2"), cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(Sim(proc.pid, port, Path(log.name)))
        url = f"http://127.0.0.1:{port}/v1/completions"

        async def load() -> None:
            await open_load(url, str(model), 20, 1.5, 40, 20)

        asyncio.run(load())
        data = json.loads(layout.gpu_load_file("gpu-1").read_text())
        assert time.time() - data["updated"] < 5
        assert [g["index"] for g in data["gpus"]] == [0, 1]
        assert all(40_000 < g["memory_used_mib"] < 49_140 for g in data["gpus"])
        assert all(0 < g["utilization"] <= 100 for g in data["gpus"]), data
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 2.0
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid)
            proc.wait(timeout=5)
        log.close()
    idle = json.loads(layout.gpu_load_file("gpu-1").read_text())
    assert [(g["utilization"], g["memory_used_mib"]) for g in idle["gpus"]] == [(0, 0), (0, 0)]
