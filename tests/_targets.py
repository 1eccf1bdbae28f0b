"""Small load-test targets (uvicorn + httptools + uvloop, raw ASGI), run as child processes.

`python tests/_targets.py MODE --port P [options]`; modes:

- `fast`: 200 with a small JSON body on every path (the throughput benchmark's target);
- `freeze`: `--base-ms` latency, and frozen for `--freeze-s` at the end of every `--every-s`
  period counted from `--epoch` (a `time.monotonic()` value: CLOCK_MONOTONIC is shared by all
  processes, so the generator can compute the true latency of every request with `answer_at`);
- `journey`: the seed's API (GET /v1/questions, POST /v1/feedback) with `--base-ms` latency;
  every `--fail-every`-th request answers 503;
- `llm`: an OpenAI-compatible streaming stub: /v1/completions and /v1/chat/completions send
  `--tokens` SSE token events, the first after `--ttft-ms`, then one every `--itl-ms`.

Also imported by tests and the benchmark for `answer_at`, `start_target` and `stop_target`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from phasegate.lab.procs import free_port, spawn, stop_pid, wait_port  # noqa: E402

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

SMALL = b'{"ok":true,"items":[1,2,3]}'


def answer_at(t: float, epoch: float, every_s: float, freeze_s: float, base_s: float) -> float:
    """When the freezing target answers a request that arrives at `t`: after `base_s`, unless
    that moment falls in a freeze window [k*every + every - freeze, (k+1)*every) from `epoch`,
    in which case at the window's end."""
    ready = t + base_s
    into = (ready - epoch) % every_s
    return ready + (every_s - into) if into >= every_s - freeze_s else ready


async def _reply(send: Send, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


def fast_app() -> App:
    """The fastest sensible target: a fixed small JSON answer."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await _reply(send, 200, SMALL)
    return app


def freeze_app(ns: argparse.Namespace) -> App:
    """Answers at `answer_at(arrival)`: 50 ms normally, held to the end of each freeze."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        now = time.monotonic()
        done = answer_at(now, ns.epoch, ns.every_s, ns.freeze_s, ns.base_ms / 1000)
        await asyncio.sleep(max(0.0, done - time.monotonic()))
        await _reply(send, 200, SMALL)
    return app


def journey_app(ns: argparse.Namespace) -> App:
    """The seed's two endpoints; every `fail_every`-th request gets a 503."""
    seen = [0]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await _drain(receive)
        seen[0] += 1
        number = seen[0]  # before sleeping: concurrent requests move the counter meanwhile
        await asyncio.sleep(ns.base_ms / 1000)
        if ns.fail_every and number % ns.fail_every == 0:
            return await _reply(send, 503, b'{"error":"overloaded"}')
        if scope["method"] == "GET" and scope["path"] == "/v1/questions":
            return await _reply(send, 200, b'[{"id":123,"subject":"math","body":"x+1=2"}]')
        if scope["method"] == "POST" and scope["path"] == "/v1/feedback":
            data = json.loads(body or b"null")
            ok = isinstance(data, dict) and {"question_id", "user_answer"} <= set(data)
            return await _reply(send, 200 if ok else 422, b'{"feedback":"good"}')
        await _reply(send, 404, b'{"error":"not found"}')
    return app


def llm_app(ns: argparse.Namespace) -> App:
    """Streams `tokens` SSE events (completions or chat shape) and `data: [DONE]`."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        req = json.loads(await _drain(receive) or b"{}")
        chat = scope["path"] == "/v1/chat/completions"
        if scope["path"] not in ("/v1/completions", "/v1/chat/completions") or not (
                req.get("prompt") or req.get("messages")):
            return await _reply(send, 400, b'{"error":"bad request"}')
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(ns.tokens):
            await asyncio.sleep((ns.ttft_ms if i == 0 else ns.itl_ms) / 1000)
            choice = {"index": 0, "delta": {"content": f" t{i}"}} if chat else \
                {"index": 0, "text": f" t{i}"}
            event = b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
    return app


def _lifespan_safe(app: App) -> App:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await app(scope, receive, send)
    return wrapped


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["fast", "freeze", "journey", "llm"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--base-ms", type=float, default=50.0)
    p.add_argument("--every-s", type=float, default=5.0)
    p.add_argument("--freeze-s", type=float, default=1.0)
    p.add_argument("--epoch", type=float, default=0.0)
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--keep-alive-s", type=float, default=30.0)
    p.add_argument("--certfile", help="serve https with this certificate (PEM)")
    p.add_argument("--keyfile", help="the certificate's private key (PEM)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serve one target until SIGTERM."""
    import uvicorn

    ns = _parse(argv)
    build = {"fast": lambda: fast_app(), "freeze": lambda: freeze_app(ns),
             "journey": lambda: journey_app(ns), "llm": lambda: llm_app(ns)}[ns.mode]
    uvicorn.run(_lifespan_safe(build()), host="127.0.0.1", port=ns.port, loop="uvloop",
                http="httptools", lifespan="off", access_log=False, log_level="warning",
                backlog=4096, timeout_keep_alive=ns.keep_alive_s,
                ssl_certfile=ns.certfile, ssl_keyfile=ns.keyfile)


@dataclass
class Running:
    """A started target process."""

    pid: int
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


def start_target(mode: str, log: Path, *args: str, cpu: int | None = None,
                 cert: tuple[Path, Path] | None = None) -> Running:
    """Spawn a target (pinned to `cpu` when given; https with `cert` = (certificate, key))
    and wait until it accepts connections."""
    port = free_port()
    tls = ("--certfile", str(cert[0]), "--keyfile", str(cert[1])) if cert else ()
    argv = [sys.executable, str(Path(__file__).resolve()), mode, "--port", str(port), *args,
            *tls]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    pid = spawn(argv, log, cwd=ROOT)
    try:
        wait_port(port, timeout=15)
    except Exception:
        stop_pid(pid)
        raise
    return Running(pid, port, cert is not None)


def stop_target(target: Running) -> None:
    """Stop a target by its PID."""
    stop_pid(target.pid, timeout=5)


if __name__ == "__main__":
    main()
