"""A vLLM OpenAI-compatible server simulator: `python -m lab.vllm_sim [vllm serve args]
--gpu-host NAME --lab-dir DIR --visible-gpus 0,1`.

The docker shim starts it as the `vllm/vllm-openai` container, so it takes vLLM's own arguments
(unknown ones are logged and ignored), refuses the configurations vLLM refuses (with vLLM's
wording), "loads the model" for `vllm_load_seconds` (control/settings.json), then serves
/v1/completions, /v1/chat/completions (streaming or not), /v1/models, /health and /metrics
(vLLM's metric names). Latency and capacity come from `lab.gpu_model`: one engine coroutine
advances in steps, admitting waiting requests while KV cache blocks and the per-step token
budget allow. About once a second it writes `<lab>/hosts/<host>/gpu_load.json`.
Faults (control/faults.json, component "vllm"): slow {factor}, erroring {rate}, never-healthy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import time
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from phasegate.constants import DEFAULT_LAB_DIR, LAB_DIR_ENV
from phasegate.lab.control import read_faults, read_gpus, read_settings, write_json_atomic
from phasegate.lab.gpu_model import (
    BLOCK_SIZE,
    CONTEXT_MIB,
    CapacityError,
    GpuSpec,
    ModelShape,
    ReplicaCapacity,
    gpu_spec,
    gpu_utilization,
    replica_capacity,
    step_seconds,
)
from phasegate.lab.layout import LabLayout
from phasegate.policy.containers import VLLM_PORT

__all__ = ["EngineConfig", "StartupError", "build_parser", "main", "make_config"]

VERSION = "0.10.1.1+lab"
MAX_NUM_SEQS = 256
MAX_NUM_BATCHED_TOKENS = 2048
WATERMARK = 0.01
LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                   50.0, 60.0]
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0]
_FILLER_TEXT = (
    "먼저 문제를 정리해 봅시다. Let x be the unknown number. 양변에 같은 수를 더해도 등식은 "
    "성립합니다. So we add 3 to both sides and get 2x = 10. 이제 양변을 2로 나누면 x = 5 "
    "입니다. We can check the answer by substituting x back into the equation. 검산하면 "
    "2 × 5 − 3 = 7 이므로 답이 맞습니다. The key idea is to keep the equation balanced. "
    "다음 문제도 같은 방법으로 풀어 보세요."
)
FILLER = _FILLER_TEXT.split()


class StartupError(Exception):
    """The engine refuses to start; the message is what vLLM would print."""


def log(msg: str, level: str = "INFO") -> None:
    """One vLLM-style log line on stdout."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [vllm_sim] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Arguments and startup checks


def build_parser() -> argparse.ArgumentParser:
    """vLLM's server arguments the simulator understands, plus the lab's own."""
    p = argparse.ArgumentParser(prog="vllm serve (lab simulator)", allow_abbrev=False)
    p.add_argument("--model", default=None)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=MAX_NUM_SEQS)
    p.add_argument("--max-num-batched-tokens", type=int, default=MAX_NUM_BATCHED_TOKENS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=VLLM_PORT)  # vLLM's own default
    p.add_argument("--gpu-host", default=os.environ.get("PHASEGATE_GPU_HOST", "gpu-1"))
    p.add_argument("--lab-dir", default=os.environ.get(LAB_DIR_ENV, DEFAULT_LAB_DIR))
    p.add_argument("--visible-gpus", default="")
    return p


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine and the HTTP layer need after the startup checks passed."""

    model_path: str
    served_names: tuple[str, ...]
    shape: ModelShape
    gpu: GpuSpec
    gpu_indices: tuple[int, ...]
    tp: int
    pp: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    capacity: ReplicaCapacity
    layout: LabLayout
    host: str

    @property
    def model_name(self) -> str:
        """The first served name: the `model_name` metric label."""
        return self.served_names[0]


def read_model_config(model: str) -> ModelShape:
    """The model's HF config.json as a ModelShape; StartupError as vLLM words it."""
    cfg_file = Path(model) / "config.json"
    if not cfg_file.is_file():
        raise StartupError(
            f"ValueError: Invalid repository ID or local directory specified: '{model}'.\n"
            "Please verify the following requirements:\n"
            "1. Provide a valid Hugging Face repository ID.\n"
            "2. Specify a local directory that contains a recognized configuration file.\n"
            "   - For Hugging Face models: ensure the presence of a 'config.json'.")
    try:
        return ModelShape.from_config(json.loads(cfg_file.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise StartupError(f"ValueError: Invalid config.json in {model}: {exc!r}") from exc


def parse_visible(raw: str) -> list[int]:
    """'0,1' -> [0, 1]; '' -> []."""
    return [int(x) for x in raw.replace(" ", "").split(",") if x != ""]


def check_parallel(shape: ModelShape, tp: int, pp: int, visible: int) -> None:
    """vLLM's refusals for a tensor/pipeline-parallel layout the model or host cannot take."""
    if tp < 1 or pp < 1:
        raise StartupError("ValueError: tensor_parallel_size and pipeline_parallel_size must "
                           "be >= 1.")
    if shape.num_attention_heads % tp:
        raise StartupError(
            f"ValueError: Total number of attention heads ({shape.num_attention_heads}) must be "
            f"divisible by tensor parallel size ({tp}).")
    if shape.num_hidden_layers < pp:
        raise StartupError(f"ValueError: Pipeline parallel size ({pp}) is larger than the "
                           f"number of hidden layers ({shape.num_hidden_layers}).")
    if visible == 0:
        raise StartupError("RuntimeError: No CUDA GPUs are available")
    if tp > visible:
        raise StartupError(f"AssertionError: please set tensor_parallel_size ({tp}) to less "
                           f"than max local gpu count ({visible})")
    if tp * pp > visible:
        raise StartupError(f"AssertionError: please ensure that world_size ({tp * pp}) is less "
                           f"than than max local gpu count ({visible})")


def resolve_max_model_len(shape: ModelShape, requested: int | None) -> int:
    """--max-model-len, or the model's max_position_embeddings; vLLM refuses a longer one."""
    derived = shape.max_position_embeddings
    if requested is None:
        return derived
    if requested > derived:
        raise StartupError(
            f"ValueError: User-specified max_model_len ({requested}) is greater than the "
            f"derived max_model_len (max_position_embeddings={derived} in model's config.json)."
            " This may lead to incorrect model outputs or CUDA errors.")
    return requested


def make_config(ns: argparse.Namespace) -> EngineConfig:
    """Run vLLM's startup checks on parsed arguments; StartupError on refusal."""
    model = ns.model
    if not model:
        raise StartupError("error: the following arguments are required: --model")
    shape = read_model_config(model)
    layout = LabLayout(Path(ns.lab_dir).expanduser().resolve())
    installed = {int(g["index"]): g for g in read_gpus(layout, ns.gpu_host) if "index" in g}
    visible = parse_visible(ns.visible_gpus)
    missing = [i for i in visible if i not in installed]
    if missing:
        raise StartupError(f"RuntimeError: CUDA error: invalid device ordinal (GPU {missing[0]})")
    tp, pp = ns.tensor_parallel_size, ns.pipeline_parallel_size
    check_parallel(shape, tp, pp, len(visible))
    used = tuple(visible[: tp * pp])
    first = installed[used[0]]
    gpu = gpu_spec(str(first.get("name", "")), int(first.get("memory_total_mib", 49140)))
    max_len = resolve_max_model_len(shape, ns.max_model_len)
    try:
        cap = replica_capacity(shape, gpu, tp, pp, ns.gpu_memory_utilization, max_len)
    except CapacityError as exc:
        raise StartupError(f"ValueError: {exc}") from exc
    names = tuple(ns.served_model_name or [model])
    return EngineConfig(model, names, shape, gpu, used, tp, pp, max_len, ns.max_num_seqs,
                        max(ns.max_num_batched_tokens, 64), cap, layout, ns.gpu_host)


# ---------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """vLLM's Prometheus metrics (labels model_name, engine="0") in a private registry."""

    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r, names, lv = self.registry, ["model_name", "engine"], (model_name, "0")

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, names, registry=r).labels(*lv)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, names, registry=r).labels(*lv)

        def hist(name: str, doc: str, buckets: list[float]) -> Any:
            return Histogram(name, doc, names, buckets=buckets, registry=r).labels(*lv)

        self.running = gauge("vllm:num_requests_running",
                             "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be "
                             "processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent "
                              "usage.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption "
                                   "from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          [*names, "finished_reason"], registry=r)
        self.success = {reason: success.labels(*lv, reason)
                        for reason in ("stop", "length", "abort")}
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in "
                                      "terms of number of queried tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of "
                                   "number of cached tokens.")
        self.ttft = hist("vllm:time_to_first_token_seconds", "Histogram of time to first token "
                         "in seconds.", TTFT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency "
                        "in seconds.", ITL_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency "
                        "in seconds.", LATENCY_BUCKETS)
        self.queue = hist("vllm:request_queue_time_seconds", "Histogram of time spent in "
                          "WAITING phase for request.", LATENCY_BUCKETS)
        self.inference = hist("vllm:request_inference_time_seconds", "Histogram of time spent "
                              "in RUNNING phase for request.", LATENCY_BUCKETS)
        self.prefill = hist("vllm:request_prefill_time_seconds", "Histogram of time spent in "
                            "PREFILL phase for request.", LATENCY_BUCKETS)
        self.decode = hist("vllm:request_decode_time_seconds", "Histogram of time spent in "
                           "DECODE phase for request.", LATENCY_BUCKETS)
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.req_prompt = hist("vllm:request_prompt_tokens", "Number of prefill tokens "
                               "processed.", token_buckets)
        self.req_gen = hist("vllm:request_generation_tokens", "Number of generation tokens "
                            "processed.", token_buckets)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


def build_1_2_5_buckets(max_value: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's token-count buckets)."""
    out: list[float] = []
    for exp in itertools.count():
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return out
            out.append(float(v))
    return out  # pragma: no cover - the loop always returns


# ---------------------------------------------------------------------------------------------
# Engine


@dataclass(eq=False)
class Seq:
    """One request inside the engine."""

    prompt_tokens: int
    cached_tokens: int
    target_tokens: int
    finish_reason: str
    stream: bool
    arrival: float = field(default_factory=time.monotonic)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    generated: int = 0
    pending: int = 0          # tokens to process before the next token can be sampled
    blocks: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float = 0.0
    finished_at: float | None = None
    aborted: bool = False

    @property
    def done(self) -> bool:
        """Finished or aborted."""
        return self.finished_at is not None or self.aborted

    def blocks_needed(self) -> int:
        """KV blocks for the context plus the slot of the next token."""
        return -(-(self.prompt_tokens + self.generated + 1) // BLOCK_SIZE)


class PrefixCache:
    """Hashes of full 16-token prompt blocks seen recently (LRU), like vLLM's prefix cache."""

    def __init__(self, max_blocks: int = 50_000) -> None:
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def lookup_and_insert(self, words: list[str]) -> int:
        """Tokens of `words` whose prefix blocks were cached; remember every full block."""
        h, hits, matching = 0, 0, True
        for i in range(0, len(words) - BLOCK_SIZE + 1, BLOCK_SIZE):
            h = hash((h, tuple(words[i:i + BLOCK_SIZE])))
            if matching and h in self._blocks:
                hits += BLOCK_SIZE
                self._blocks.move_to_end(h)
            else:
                matching = False
                self._blocks[h] = None
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)
        return hits


class Engine:
    """The scheduler: FCFS admission under KV-block and token-budget limits, one step at a time,
    recompute preemption when the KV cache runs out. Sleeps when idle."""

    def __init__(self, cfg: EngineConfig, metrics: Metrics) -> None:
        self.cfg, self.m = cfg, metrics
        self.total_blocks = cfg.capacity.kv_blocks
        self.used_blocks = 0
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.prefix = PrefixCache()
        self._work = asyncio.Event()
        self.busy_s = 0.0
        self.occupancy_s = 0.0
        self.slow_factor: Callable[[], float] = lambda: 1.0

    def submit(self, seq: Seq) -> None:
        """Queue a request (it waits until the scheduler admits it)."""
        seq.pending = seq.prompt_tokens - seq.cached_tokens
        self.waiting.append(seq)
        self.m.waiting.set(len(self.waiting))
        self._work.set()

    def abort_all(self) -> None:
        """Abort every request (shutdown)."""
        for seq in [*self.running, *self.waiting]:
            seq.aborted = True
            seq.wake.set()
        self.running.clear()
        self.waiting.clear()
        self.used_blocks = 0

    async def run(self) -> None:
        """The engine loop: schedule, sleep for the step's duration, apply its results."""
        while True:
            if not self.running and not self.waiting:
                self._publish()
                self._work.clear()
                await self._work.wait()
                continue
            work = self._schedule()
            if not work:
                await asyncio.sleep(0.01)
                continue
            dt = self._step_duration(work) * self.slow_factor()
            await asyncio.sleep(dt)
            self.busy_s += dt
            self.occupancy_s += dt * self.occupancy()
            self._apply(work, time.monotonic())
            self._publish()

    def occupancy(self) -> float:
        """How full the batch is: the larger of KV usage and running / 128 sequences."""
        return max(self.used_blocks / max(1, self.total_blocks), len(self.running) / 128)

    def _drop_aborted(self) -> None:
        for seq in [s for s in self.running if s.aborted]:
            self._free(seq)
        self.waiting = deque(s for s in self.waiting if not s.aborted)

    def _free(self, seq: Seq) -> None:
        with contextlib.suppress(ValueError):
            self.running.remove(seq)
        self.used_blocks -= seq.blocks
        seq.blocks = 0

    def _preempt_last(self) -> None:
        victim = self.running[-1]
        self._free(victim)
        victim.pending = victim.prompt_tokens + victim.generated
        self.waiting.appendleft(victim)
        self.m.preemptions.inc()

    def _schedule(self) -> list[tuple[Seq, int]]:
        """This step's work: (seq, tokens to process); running first, then FCFS admission."""
        self._drop_aborted()
        budget = self.cfg.max_num_batched_tokens
        work: list[tuple[Seq, int]] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            extra = seq.blocks_needed() - seq.blocks
            if extra > self.total_blocks - self.used_blocks:
                self._preempt_last()
                continue
            seq.blocks += extra
            self.used_blocks += extra
            n = min(seq.pending, budget)
            work.append((seq, n))
            budget -= n
            i += 1
        watermark = int(self.total_blocks * WATERMARK)
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            seq = self.waiting[0]
            need = seq.blocks_needed()
            if self.total_blocks - self.used_blocks - need < watermark and self.running:
                break
            self.waiting.popleft()
            seq.blocks, self.used_blocks = need, self.used_blocks + need
            if seq.scheduled_at is None:
                seq.scheduled_at = time.monotonic()
            self.running.append(seq)
            n = min(seq.pending, budget)
            work.append((seq, n))
            budget -= n
        return work

    def _step_duration(self, work: list[tuple[Seq, int]]) -> float:
        tokens = sum(n for _, n in work)
        context = sum(s.prompt_tokens + s.generated for s, _ in work)
        return step_seconds(self.cfg.shape, self.cfg.gpu, self.cfg.tp, tokens, context)

    def _apply(self, work: list[tuple[Seq, int]], now: float) -> None:
        emitted = 0
        for seq, n in work:
            if seq.aborted:
                continue
            seq.pending -= n
            if seq.pending <= 0:
                self._emit_token(seq, now)
                emitted += 1
        self.m.generation_tokens.inc(emitted)

    def _emit_token(self, seq: Seq, now: float) -> None:
        seq.generated += 1
        seq.pending = 1
        if seq.first_token_at is None:
            seq.first_token_at = now
            self.m.ttft.observe(now - seq.arrival)
            self.m.prompt_tokens.inc(seq.prompt_tokens)
        else:
            self.m.itl.observe(now - seq.last_token_at)
        seq.last_token_at = now
        if seq.generated >= seq.target_tokens:
            self._finish(seq, now)
        elif seq.stream:
            seq.wake.set()

    def _finish(self, seq: Seq, now: float) -> None:
        seq.finished_at = now
        self._free(seq)
        sched = seq.scheduled_at or now
        first = seq.first_token_at or now
        m = self.m
        m.success[seq.finish_reason].inc()
        m.e2e.observe(now - seq.arrival)
        m.queue.observe(sched - seq.arrival)
        m.inference.observe(now - sched)
        m.prefill.observe(first - sched)
        m.decode.observe(now - first)
        m.req_prompt.observe(seq.prompt_tokens)
        m.req_gen.observe(seq.generated)
        seq.wake.set()

    def _publish(self) -> None:
        self.m.running.set(len(self.running))
        self.m.waiting.set(len(self.waiting))
        self.m.kv_usage.set(round(self.used_blocks / max(1, self.total_blocks), 4))


# ---------------------------------------------------------------------------------------------
# Text and tokens


def words_of(text: str) -> list[str]:
    """The simulator's tokenizer: one token per whitespace-separated word."""
    return text.split()


def render_chat(messages: Any) -> str:
    """A chat template: one `<|role|> content` line per message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    lines = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise ValueError("each message must be an object")
        content = msg.get("content") or ""
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        lines.append(f"<|{msg.get('role', 'user')}|> {content}")
    return "\n".join(lines) + "\n<|assistant|>"


def filler_tokens(prompt: str, start: int, count: int) -> list[str]:
    """`count` deterministic filler words for `prompt`, from token index `start`."""
    offset = zlib.crc32(prompt.encode()) % len(FILLER)
    return [FILLER[(offset + i) % len(FILLER)] for i in range(start, start + count)]


def natural_length(prompt: str) -> int:
    """How many tokens the 'model' would write before its end-of-sequence token."""
    return 120 + zlib.crc32(prompt.encode(), 7) % 200


# ---------------------------------------------------------------------------------------------
# HTTP


def error(status: int, message: str, kind: str) -> JSONResponse:
    """vLLM's error body."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": status}}, status_code=status)


@dataclass
class GenRequest:
    """A validated generation request."""

    chat: bool
    prompt: str
    prompt_tokens: int
    words: list[str]
    max_tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool
    model: str


class ApiError(Exception):
    """An HTTP error answer."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class Simulator:
    """The HTTP layer around one Engine."""

    def __init__(self, cfg: EngineConfig, load_seconds: float) -> None:
        self.cfg = cfg
        self.metrics = Metrics(cfg.model_name, cfg.max_model_len)
        self.engine = Engine(cfg, self.metrics)
        self.started = time.monotonic()
        self.load_seconds = load_seconds
        self.rng = random.Random(0x5eed)
        self.created = int(time.time())
        self.engine.slow_factor = self.slow_factor

    def slow_factor(self) -> float:
        """The `slow` fault's latency multiplier (1 without the fault), read per engine step."""
        slow = self.faults().get("slow")
        return max(0.01, float(slow.get("factor", 5.0))) if isinstance(slow, dict) else 1.0

    def loading_progress(self) -> float:
        """0..1 of the model load."""
        if self.load_seconds <= 0:
            return 1.0
        return min(1.0, (time.monotonic() - self.started) / self.load_seconds)

    def faults(self) -> dict[str, dict[str, float]]:
        """The vLLM faults currently set (re-read per call)."""
        faults = read_faults(self.cfg.layout).get("vllm", {})
        return faults if isinstance(faults, dict) else {}

    def ready(self, faults: dict[str, dict[str, float]]) -> bool:
        """Loaded and not under the never-healthy fault."""
        return self.loading_progress() >= 1.0 and "never-healthy" not in faults

    def app(self) -> Starlette:
        """The ASGI application."""
        return Starlette(routes=[
            Route("/health", self.health, methods=["GET"]),
            Route("/ping", self.health, methods=["GET", "POST"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ])

    async def health(self, request: Request) -> Response:
        """200 once loaded, 503 while loading or under never-healthy."""
        return Response(status_code=200 if self.ready(self.faults()) else 503)

    async def version(self, request: Request) -> Response:
        """The (simulated) vLLM version."""
        return JSONResponse({"version": VERSION})

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus text format."""
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        """The served model names."""
        data: list[dict[str, Any]] = [
            {"id": name, "object": "model", "created": self.created, "owned_by": "vllm",
             "root": self.cfg.model_path, "parent": None,
             "max_model_len": self.cfg.max_model_len, "permission": []}
            for name in self.cfg.served_names]
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions."""
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions."""
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        try:
            req = self._validate(await request.body(), chat)
        except ApiError as exc:
            return error(exc.status, exc.message, exc.kind)
        faults = self.faults()
        if not self.ready(faults):
            return error(503, "The model is still loading.", "ServiceUnavailableError")
        if "erroring" in faults:
            rate = float(faults["erroring"].get("rate", 0.5))
            if self.rng.random() < rate:
                return error(500, "EngineCore encountered an issue. See stack trace (above) "
                             "for the root cause.", "InternalServerError")
        cached = min(self.engine.prefix.lookup_and_insert(req.words), req.prompt_tokens - 1)
        self.metrics.prefix_queries.inc(req.prompt_tokens)
        self.metrics.prefix_hits.inc(cached)
        seq = Seq(req.prompt_tokens, cached, req.max_tokens, req.finish_reason, req.stream)
        self.engine.submit(seq)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if req.stream:
            return StreamingResponse(self._stream(req, seq, rid), media_type="text/event-stream")
        await self._wait(seq)
        if seq.aborted:
            return error(503, "The request was aborted (server shutting down).",
                         "ServiceUnavailableError")
        return JSONResponse(self._full_body(req, seq, rid))

    async def _wait(self, seq: Seq) -> None:
        try:
            while not seq.done:
                await seq.wake.wait()
                seq.wake.clear()
        finally:
            if not seq.done:
                seq.aborted = True

    def _validate(self, raw: bytes, chat: bool) -> GenRequest:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"JSON decode error: {exc}", "BadRequestError") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "Input should be a valid dictionary", "BadRequestError")
        model = body.get("model") or self.cfg.model_name
        if model not in self.cfg.served_names:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
        prompt = self._prompt_text(body, chat)
        words = words_of(prompt)
        n_prompt = max(1, len(words))
        return self._lengths(body, chat, prompt, words, n_prompt, str(model))

    def _prompt_text(self, body: dict[str, Any], chat: bool) -> str:
        field_name = "messages" if chat else "prompt"
        if field_name not in body:
            kind = "ChatCompletionRequest" if chat else "CompletionRequest"
            raise ApiError(400, f"1 validation error for {kind}\n{field_name}\n  Field required",
                           "BadRequestError")
        value = body[field_name]
        try:
            if chat:
                return render_chat(value)
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, list) and all(isinstance(t, int) for t in value):
                return " ".join(f"t{t}" for t in value)
            if isinstance(value, str):
                return value
        except ValueError as exc:
            raise ApiError(400, str(exc), "BadRequestError") from exc
        raise ApiError(400, "prompt must be a string or a list of token ids (the lab simulator "
                       "serves one prompt per request)", "BadRequestError")

    def _lengths(self, body: dict[str, Any], chat: bool, prompt: str, words: list[str],
                 n_prompt: int, model: str) -> GenRequest:
        limit = self.cfg.max_model_len
        raw_max = body.get("max_completion_tokens") if chat else None
        raw_max = raw_max if raw_max is not None else body.get("max_tokens")
        if raw_max is not None and (not isinstance(raw_max, int) or raw_max < 1):
            raise ApiError(400, "max_tokens must be at least 1, got "
                           f"{raw_max}.", "BadRequestError")
        asked = raw_max if raw_max is not None else limit - n_prompt
        if n_prompt + asked > limit or n_prompt >= limit:
            where = "messages" if chat else "prompt"
            raise ApiError(400, f"This model's maximum context length is {limit} tokens. "
                           f"However, you requested {n_prompt + asked} tokens ({n_prompt} in "
                           f"the {where}, {asked} in the completion). Please reduce the length "
                           f"of the {where} or completion.", "BadRequestError")
        natural = natural_length(prompt)
        if body.get("ignore_eos") or asked <= natural:
            target, reason = asked, "length"
        else:
            target, reason = natural, "stop"
        opts = body.get("stream_options") or {}
        return GenRequest(chat, prompt, n_prompt, words, target, reason,
                          bool(body.get("stream")),
                          bool(isinstance(opts, dict) and opts.get("include_usage")), model)

    def _usage(self, req: GenRequest, seq: Seq) -> dict[str, Any]:
        return {"prompt_tokens": req.prompt_tokens, "completion_tokens": seq.generated,
                "total_tokens": req.prompt_tokens + seq.generated,
                "prompt_tokens_details": None}

    def _full_body(self, req: GenRequest, seq: Seq, rid: str) -> dict[str, Any]:
        tokens = filler_tokens(req.prompt, 0, seq.generated)
        base = {"id": rid, "created": int(time.time()), "model": req.model,
                "usage": self._usage(req, seq)}
        if req.chat:
            choice: dict[str, Any] = {
                "index": 0, "message": {"role": "assistant", "content": " ".join(tokens),
                                        "tool_calls": []},
                "logprobs": None, "finish_reason": seq.finish_reason, "stop_reason": None}
            return {**base, "object": "chat.completion", "choices": [choice]}
        choice = {"index": 0, "text": "".join(" " + t for t in tokens), "logprobs": None,
                  "finish_reason": seq.finish_reason, "stop_reason": None,
                  "prompt_logprobs": None}
        return {**base, "object": "text_completion", "choices": [choice]}

    def _chunk(self, req: GenRequest, rid: str, created: int, piece: str | None,
               finish: str | None, first: bool) -> bytes:
        if req.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if piece is None else {
                "content": piece if first else " " + piece}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": " " + (piece or ""), "logprobs": None,
                      "finish_reason": finish, "stop_reason": None}
            obj = "text_completion"
        data: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": req.model,
                "choices": [choice]}
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    async def _stream(self, req: GenRequest, seq: Seq, rid: str) -> AsyncIterator[bytes]:
        created, sent = int(time.time()), 0
        try:
            if req.chat:
                yield self._chunk(req, rid, created, None, None, True)
            while True:
                await seq.wake.wait()
                seq.wake.clear()
                if seq.aborted:
                    break
                new = filler_tokens(req.prompt, sent, seq.generated - sent)
                for j, piece in enumerate(new):
                    last = seq.finished_at is not None and sent + j + 1 == seq.generated
                    yield self._chunk(req, rid, created, piece,
                                      seq.finish_reason if last else None, sent + j == 0)
                sent = seq.generated
                if seq.finished_at is not None:
                    break
            if req.include_usage and not seq.aborted:
                usage: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if req.chat
                         else "text_completion", "created": created, "model": req.model,
                         "choices": [], "usage": self._usage(req, seq)}
                yield b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            if not seq.done:
                seq.aborted = True


# ---------------------------------------------------------------------------------------------
# GPU load file


class GpuLoadWriter:
    """Writes this server's share of <lab>/hosts/<host>/gpu_load.json about once a second,
    keeping fresh entries of other servers on the same host (other GPU indices)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.path = sim.cfg.layout.gpu_load_file(sim.cfg.host)
        self._last = (time.monotonic(), 0.0, 0.0)

    def sample(self) -> tuple[float, float]:
        """(utilization %, memory used MiB per GPU) since the previous sample."""
        eng, cap = self.sim.engine, self.sim.cfg.capacity
        now = time.monotonic()
        t0, busy0, occ0 = self._last
        self._last = (now, eng.busy_s, eng.occupancy_s)
        busy = eng.busy_s - busy0
        occupancy = (eng.occupancy_s - occ0) / busy if busy > 0 else 0.0
        util = gpu_utilization(busy / max(1e-6, now - t0), occupancy)
        progress = self.sim.loading_progress()
        if progress < 1.0:
            return 0.0, round(CONTEXT_MIB + cap.weights_mib_per_gpu * progress)
        return util, round(cap.memory_used_mib_per_gpu)

    def write(self, util: float, mem: float) -> None:
        """Merge this server's GPUs into the host's file."""
        now = time.time()
        mine = set(self.sim.cfg.gpu_indices)
        try:
            old = json.loads(self.path.read_text()).get("gpus", [])
        except (OSError, ValueError, AttributeError):
            old = []
        keep = [g for g in old if isinstance(g, dict) and g.get("index") not in mine
                and now - float(g.get("updated", 0)) < 10]
        ours = [{"index": i, "utilization": util, "memory_used_mib": int(mem), "updated": now,
                 "pid": os.getpid()} for i in sorted(mine)]
        gpus = sorted(keep + ours, key=lambda g: int(g.get("index", 0)))
        write_json_atomic(self.path, {"updated": now, "gpus": gpus})

    async def run(self) -> None:
        """Every second: sample and write."""
        while True:
            with contextlib.suppress(OSError):
                self.write(*self.sample())
            await asyncio.sleep(1.0)


async def stats_logger(sim: Simulator) -> None:
    """A vLLM-like throughput line every 10 s while there is work."""
    m, last_p, last_g = sim.metrics, 0.0, 0.0
    while True:
        await asyncio.sleep(10.0)
        p = m.prompt_tokens._value.get()
        g = m.generation_tokens._value.get()
        eng = sim.engine
        if p != last_p or g != last_g or eng.running or eng.waiting:
            log(f"Engine 000: Avg prompt throughput: {(p - last_p) / 10:.1f} tokens/s, "
                f"Avg generation throughput: {(g - last_g) / 10:.1f} tokens/s, Running: "
                f"{len(eng.running)} reqs, Waiting: {len(eng.waiting)} reqs, GPU KV cache "
                f"usage: {100 * eng.used_blocks / max(1, eng.total_blocks):.1f}%")
        last_p, last_g = p, g


# ---------------------------------------------------------------------------------------------
# Server and main


class LabServer(uvicorn.Server):
    """uvicorn.Server that exits 0 on SIGTERM/SIGINT (no re-raise) and aborts the engine."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.on_exit: list[Any] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install handlers that ask the server to stop; restore them afterwards."""
        loop = asyncio.get_running_loop()

        def handler(sig: int, frame: FrameType | None) -> None:
            self.should_exit = True
            for fn in self.on_exit:
                loop.call_soon_threadsafe(fn)

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def loopback(host: str) -> str:
    """The lab binds loopback only: any other --host becomes 127.0.0.1."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return host
    log(f"lab: binding 127.0.0.1 instead of {host} (the lab listens on loopback only)")
    return "127.0.0.1"


async def serve(cfg: EngineConfig, host: str, port: int) -> None:
    """Run the HTTP server and the engine until a signal; then leave the GPUs idle."""
    load_s = float(read_settings(cfg.layout).get("vllm_load_seconds", 3.0))
    sim = Simulator(cfg, load_s)
    writer = GpuLoadWriter(sim)
    config = uvicorn.Config(sim.app(), host=host, port=port, lifespan="off", access_log=False,
                            log_level="warning", timeout_graceful_shutdown=1, backlog=2048,
                            loop="none", http="httptools")
    server = LabServer(config)
    server.on_exit = [sim.engine.abort_all]
    tasks = [asyncio.create_task(c) for c in (sim.engine.run(), writer.run(), stats_logger(sim))]
    log(f"Loading model weights took {load_s:.2f} s (simulated); KV cache "
        f"{cfg.capacity.kv_cache_tokens:,} tokens; maximum concurrency for "
        f"{cfg.max_model_len:,} tokens per request: "
        f"{cfg.capacity.kv_cache_tokens / cfg.max_model_len:.2f}x")
    log(f"Starting vLLM API server on http://{host}:{port}")
    try:
        await server.serve()
    finally:
        sim.engine.abort_all()
        for t in tasks:
            t.cancel()
        with contextlib.suppress(OSError):
            writer.write(0.0, 0.0)
        log("Shutting down: GPUs idle")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 after a clean shutdown, 1 when the engine refuses to start."""
    ns, unknown = build_parser().parse_known_args(argv)
    if ns.model is None and unknown and not unknown[0].startswith("-"):
        ns.model = unknown.pop(0)  # `vllm serve MODEL ...`
    log(f"vLLM API server version {VERSION}")
    log(f"non-default args: {vars(ns)}")
    if unknown:
        log(f"ignoring vLLM arguments the simulator does not model: {unknown}", "WARNING")
    try:
        cfg = make_config(ns)
    except StartupError as exc:
        log("EngineCore failed to start.", "ERROR")
        print(str(exc), flush=True)
        return 1
    log(f"model {cfg.model_path}: {cfg.shape.parameters() / 1e9:.1f}B parameters, "
        f"TP={cfg.tp} PP={cfg.pp} on GPUs {list(cfg.gpu_indices)} ({cfg.gpu.name}); "
        f"weights {cfg.capacity.weights_mib_per_gpu / 1024:.2f} GiB per GPU")
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(cfg, loopback(ns.host), ns.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
