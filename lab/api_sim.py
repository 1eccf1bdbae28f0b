"""API simulator: the education service's public API (the seed's k6 journey, section D).

`python -m lab.api_sim --port P --lab-dir D --redis-url U --vllm-url U [--vllm-url U ...]
--app-dsn DSN`

- GET /v1/questions?subject=math: questions from the app DB behind a Redis response cache (one key
  per subject, short TTL, so the hit/miss ratio moves with traffic and with Redis' health).
- POST /v1/feedback {question_id, user_answer}: an AI tutoring answer from a vLLM server's
  OpenAI-compatible /v1/completions (round robin over the upstreams: `<lab>/control/
  upstreams.json` {"vllm": [...]} while it exists, else the serving Cloud Run revision's env
  VLLM_BASE_URLS (comma-separated; `<lab>/gcp/serving.json`, as the service's instances would
  see it after a rollout), else --vllm-url). Upstream errors -> 502, upstream timeout -> 504.
- GET /healthz, GET /metrics (Prometheus text, names and labels as in lab/README.md).

Faults (`lab.control`, component "api") apply to /v1/* only, so /metrics and /healthz stay
observable: "slow" adds `ms` (default 500) per request, "erroring" answers a share `rate`
(default 0.2) with 503.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import psycopg
import redis.asyncio as aioredis
import uvicorn
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from phasegate.constants import VLLM_URLS_ENV
from phasegate.lab.control import JsonFile
from phasegate.lab.layout import LabLayout

__all__ = ["API_BUCKETS", "ApiConfig", "ApiSim", "Upstreams", "main", "upstreams_file"]

log = logging.getLogger("phasegate.lab.api_sim")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
ROUTES = {("GET", "/v1/questions"), ("POST", "/v1/feedback"), ("GET", "/healthz"),
          ("GET", "/metrics")}
ROUTE_PATHS = frozenset(p for _, p in ROUTES)
BUSINESS_REFRESH_S = 15.0
MAX_BODY = 64 * 1024
PROMPT = (
    "[INST] <<SYS>>You are DreamSeed, a patient tutor. Answer in Korean, then in English. "
    "Say whether the student's answer is right and give one hint.<</SYS>>\n"
    "Question {question_id}.\nStudent answer: {answer} [/INST]"
)


@dataclass(frozen=True)
class ApiConfig:
    """Command-line settings of one API simulator."""

    layout: LabLayout
    redis_url: str
    app_dsn: str
    vllm_urls: tuple[str, ...]
    model: str = "Llama-2-13b-chat-hf"
    max_tokens: int = 96
    cache_ttl_s: int = 30
    vllm_timeout_s: float = 30.0
    db_pool_size: int = 4


def upstreams_file(layout: LabLayout) -> Path:
    """control/upstreams.json: {"vllm": ["http://127.0.0.1:P", ...]} overriding --vllm-url."""
    return layout.control_dir / "upstreams.json"


class Upstreams:
    """Round robin over the vLLM base URLs: the control file, else the serving revision's env,
    else the defaults."""

    def __init__(self, layout: LabLayout, defaults: tuple[str, ...]) -> None:
        self._file = JsonFile(upstreams_file(layout), None)
        self._serving = JsonFile(layout.cloud_run_serving_file, {})
        self._defaults = list(defaults)
        self._next = 0

    def current(self) -> list[str]:
        """The URLs in force now."""
        data = self._file.read()
        if isinstance(data, dict) and isinstance(data.get("vllm"), list):
            return [str(u).rstrip("/") for u in data["vllm"]]
        urls = self._from_revision()
        return urls if urls is not None else [u.rstrip("/") for u in self._defaults]

    def _from_revision(self) -> list[str] | None:
        serving = self._serving.read()
        for revision in (serving.values() if isinstance(serving, dict) else ()):
            value = (revision.get("env") or {}).get(VLLM_URLS_ENV) if isinstance(
                revision, dict) else None
            if isinstance(value, str):
                return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        return None

    def pick(self) -> str | None:
        """The next URL in turn, or None when none is configured."""
        urls = self.current()
        if not urls:
            return None
        self._next += 1
        return urls[(self._next - 1) % len(urls)]


class DbPool:
    """A few async psycopg connections (autocommit), opened lazily, dropped when broken."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn, self._size = dsn, size
        self._idle: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(size)

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one query and return its rows; psycopg errors propagate."""
        async with self._slots:
            conn = self._idle.get_nowait() if not self._idle.empty() else None
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=3)
            try:
                cur = await conn.execute(sql, params)
                rows = await cur.fetchall()
            except BaseException:
                await conn.close()
                raise
            self._idle.put_nowait(conn)
            return rows

    async def close(self) -> None:
        """Close every idle connection."""
        while not self._idle.empty():
            await self._idle.get_nowait().close()


class BusinessGauges(Collector):
    """dreamseed_* gauges; a series appears only once it was read from the app DB."""

    def __init__(self) -> None:
        self.registered: float | None = None
        self.daily_active: float | None = None

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges that have a value."""
        if self.registered is not None:
            yield GaugeMetricFamily("dreamseed_registered_users",
                                    "Registered users (count of users)", value=self.registered)
        if self.daily_active is not None:
            yield GaugeMetricFamily("dreamseed_daily_active_users",
                                    "Daily active users (latest rollup day)",
                                    value=self.daily_active)


@dataclass
class ApiMetrics:
    """The API's Prometheus instrumentation in a private registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    business: BusinessGauges = field(default_factory=BusinessGauges)

    def __post_init__(self) -> None:
        r = self.registry
        self.duration = Histogram("http_request_duration_seconds", "HTTP request latency",
                                  ["handler", "method"], buckets=API_BUCKETS, registry=r)
        self.requests = Counter("http_requests", "HTTP requests",
                                ["handler", "method", "status"], registry=r)
        self.hits = Counter("api_cache_hits", "Response cache hits", registry=r)
        self.misses = Counter("api_cache_misses", "Response cache misses", registry=r)
        self.active = Gauge("api_active_connections", "In-flight API requests", registry=r)
        r.register(self.business)


class HttpError(Exception):
    """An error answer: status and a JSON {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


Reply = tuple[int, bytes, str]


def _json(status: int, data: Any) -> Reply:
    return status, json.dumps(data, ensure_ascii=False).encode(), "application/json"


class ApiSim:
    """The ASGI application (raw ASGI: it sits on every request of the load tests)."""

    def __init__(self, cfg: ApiConfig) -> None:
        self.cfg = cfg
        self.metrics = ApiMetrics()
        self.upstreams = Upstreams(cfg.layout, cfg.vllm_urls)
        self.faults = JsonFile(cfg.layout.faults_file, {})  # like read_faults, cached by mtime
        self.db = DbPool(cfg.app_dsn, cfg.db_pool_size)
        self.redis: aioredis.Redis | None = None
        self.http: aiohttp.ClientSession | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Open the Redis client and HTTP session; start the business-gauge refresher."""
        self.redis = aioredis.Redis.from_url(
            self.cfg.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, force_close=False))
        self._refresher = asyncio.create_task(self._refresh_business())

    async def shutdown(self) -> None:
        """Stop the refresher and close every client."""
        if self._refresher:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self.http:
            await self.http.close()
        if self.redis:
            await self.redis.aclose()
        await self.db.close()

    async def _refresh_business(self) -> None:
        while True:
            try:
                await self._read_business()
            except (psycopg.Error, OSError) as exc:
                log.warning("business gauges not refreshed: %s", exc)
            await asyncio.sleep(BUSINESS_REFRESH_S)

    async def _read_business(self) -> None:
        rows = await self.db.fetch(
            "SELECT (SELECT count(*) FROM users),"
            " (SELECT active_users FROM daily_active_users ORDER BY day DESC LIMIT 1)")
        users, dau = rows[0]
        self.metrics.business.registered = float(users)
        if dau is not None:
            self.metrics.business.daily_active = float(dau)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        handler = path if path in ROUTE_PATHS else "none"
        tracked = handler.startswith("/v1/")
        start = time.perf_counter()
        if tracked:
            self.metrics.active.inc()
        try:
            status, body, ctype = await self._dispatch(scope, receive, path, method)
        finally:
            if tracked:
                self.metrics.active.dec()
        await _send(send, status, body, ctype)
        self.metrics.duration.labels(handler, method).observe(time.perf_counter() - start)
        self.metrics.requests.labels(handler, method, str(status)).inc()

    async def _dispatch(self, scope: Scope, receive: Receive, path: str, method: str) -> Reply:
        try:
            if path.startswith("/v1/"):
                await self._apply_faults()
            return await self._route(scope, receive, path, method)
        except HttpError as exc:
            return _json(exc.status, {"error": exc.message})
        except Exception:  # a bug must still answer, and show up as 500 in the metrics
            log.exception("unhandled error on %s %s", method, path)
            return _json(500, {"error": "internal error"})

    async def _route(self, scope: Scope, receive: Receive, path: str, method: str) -> Reply:
        if (method, path) == ("GET", "/v1/questions"):
            return await self.questions(_query(scope).get("subject", ""))
        if (method, path) == ("POST", "/v1/feedback"):
            return await self.feedback(await _read_json(receive))
        if (method, path) == ("GET", "/healthz"):
            return 200, b"ok", "text/plain"
        if (method, path) == ("GET", "/metrics"):
            return 200, generate_latest(self.metrics.registry), "text/plain; version=0.0.4"
        if path in ROUTE_PATHS:
            raise HttpError(405, "method not allowed")
        raise HttpError(404, "not found")

    async def _apply_faults(self) -> None:
        data = self.faults.read()
        faults = (data.get("api") or {}) if isinstance(data, dict) else {}
        if "slow" in faults:
            await asyncio.sleep(float((faults["slow"] or {}).get("ms", 500)) / 1000.0)
        if "erroring" in faults:
            rate = float((faults["erroring"] or {}).get("rate", 0.2))
            if random.random() < rate:
                raise HttpError(503, "service unavailable (injected fault)")

    async def questions(self, subject: str) -> Reply:
        """The questions of one subject, from the Redis cache or the app DB."""
        if not subject or len(subject) > 64:
            raise HttpError(400, "query parameter 'subject' is required")
        key = f"api:questions:{subject}"
        cached = await self._cache_get(key)
        if cached is not None:
            self.metrics.hits.inc()
            return 200, cached, "application/json"
        self.metrics.misses.inc()
        body = json.dumps(await self._load_questions(subject), ensure_ascii=False).encode()
        await self._cache_set(key, body)
        return 200, body, "application/json"

    async def _cache_get(self, key: str) -> bytes | None:
        assert self.redis is not None
        try:
            value = await self.redis.get(key)
        except (aioredis.RedisError, OSError) as exc:  # cache down: serve from the DB
            log.debug("cache get failed: %s", exc)
            return None
        return value if isinstance(value, bytes) else None

    async def _cache_set(self, key: str, body: bytes) -> None:
        assert self.redis is not None
        try:
            await self.redis.set(key, body, ex=self.cfg.cache_ttl_s)
        except (aioredis.RedisError, OSError) as exc:
            log.debug("cache set failed: %s", exc)

    async def _load_questions(self, subject: str) -> list[dict[str, Any]]:
        try:
            rows = await self.db.fetch(
                "SELECT id, subject, body FROM questions WHERE subject = %s ORDER BY id LIMIT 20",
                (subject,))
        except (psycopg.Error, OSError) as exc:
            raise HttpError(503, f"database unavailable: {type(exc).__name__}") from exc
        return [{"id": r[0], "subject": r[1], "body": r[2]} for r in rows]

    async def feedback(self, data: Any) -> Reply:
        """AI feedback on one answer, generated by a vLLM upstream."""
        if not isinstance(data, dict) or "question_id" not in data \
                or not isinstance(data.get("user_answer"), str):
            raise HttpError(400, "expected JSON {question_id, user_answer}")
        base = self.upstreams.pick()
        if base is None:
            raise HttpError(502, "no vLLM upstream configured")
        prompt = PROMPT.format(question_id=str(data["question_id"])[:64],
                               answer=data["user_answer"][:2000])
        start = time.perf_counter()
        text = await self._complete(base, prompt)
        latency_ms = round((time.perf_counter() - start) * 1000.0, 1)
        return _json(200, {"feedback": text, "model": self.cfg.model, "latency_ms": latency_ms})

    async def _complete(self, base: str, prompt: str) -> str:
        assert self.http is not None
        payload = {"model": self.cfg.model, "prompt": prompt,
                   "max_tokens": self.cfg.max_tokens, "temperature": 0.7}
        timeout = aiohttp.ClientTimeout(total=self.cfg.vllm_timeout_s, sock_connect=2.0)
        try:
            async with self.http.post(f"{base}/v1/completions", json=payload,
                                      timeout=timeout) as resp:
                if resp.status != 200:
                    raise HttpError(502, f"vLLM upstream {base} answered {resp.status}")
                data = await resp.json(content_type=None)
        except TimeoutError as exc:
            raise HttpError(504, f"vLLM upstream {base} timed out") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise HttpError(502, f"vLLM upstream {base} failed: {type(exc).__name__}") from exc
        try:
            return str(data["choices"][0]["text"])
        except (KeyError, IndexError, TypeError) as exc:
            raise HttpError(502, f"vLLM upstream {base} sent an unexpected body") from exc


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[0] for k, v in parse_qs(raw).items()}


async def _read_json(receive: Receive) -> Any:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if len(body) > MAX_BODY:
            raise HttpError(413, "request body too large")
        if not msg.get("more_body"):
            break
    try:
        return json.loads(body)
    except ValueError as exc:
        raise HttpError(400, "invalid JSON body") from exc


async def _send(send: Send, status: int, body: bytes, ctype: str) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.api_sim", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lab-dir", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--vllm-url", action="append", default=[],
                   help="vLLM base URL (repeatable); control/upstreams.json overrides")
    p.add_argument("--app-dsn", required=True)
    p.add_argument("--model", default=ApiConfig.model, help="model name sent to vLLM")
    p.add_argument("--cache-ttl", type=int, default=ApiConfig.cache_ttl_s)
    p.add_argument("--vllm-timeout", type=float, default=ApiConfig.vllm_timeout_s)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the API simulator on 127.0.0.1 until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    disable_created_metrics()  # the real service's instrumentation has no *_created series
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    cfg = ApiConfig(layout=LabLayout(Path(args.lab_dir).resolve()), redis_url=args.redis_url,
                    app_dsn=args.app_dsn, vllm_urls=tuple(args.vllm_url), model=args.model,
                    cache_ttl_s=args.cache_ttl, vllm_timeout_s=args.vllm_timeout)
    log.info("api_sim on 127.0.0.1:%d, vLLM %s", args.port, ", ".join(cfg.vllm_urls) or "-")
    uvicorn.run(ApiSim(cfg), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                lifespan="on", access_log=False, log_level="warning",
                timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
