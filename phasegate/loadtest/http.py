"""The engine's HTTP/1.1 client: one keep-alive connection per VU, asyncio Protocol + httptools.

Chosen by measurement (bench/loadtest_bench.py, case "client"): on these 2-core machines this
client reached several times aiohttp's throughput per CPU second, because a request is one
`transport.write` of pre-built bytes and one C-parser pass, with no per-request Python objects
beyond the `Response`. It does only what a load generator needs:

- HTTP/1.1 with keep-alive (reconnects when the server closes or a request failed);
- Content-Length and chunked bodies (httptools decodes both), bodies kept or streamed;
- a per-request timeout covering connect + send + full response;
- streaming reads: `on_chunk(data, t)` receives each body piece with its arrival time
  (SSE for the LLM mode), instead of buffering the body.

Failures never raise: they come back as `Response(status=0, error=...)`, as k6 reports them,
so a run measures a failing target instead of crashing on it. Timestamps are
`time.monotonic()` (CLOCK_MONOTONIC, comparable across processes on Linux); uvloop's
`loop.time()` is not used for measurement because it has millisecond resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["ChunkSink", "HttpClient", "Response", "Target", "is_loopback", "parse_target"]

ChunkSink = Callable[[bytes, float], None]
_now = time.monotonic


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: host, port and the base path every request path is joined to."""

    host: str
    port: int
    base_path: str = ""

    @property
    def url(self) -> str:
        """The target as a URL."""
        return f"http://{self.host}:{self.port}{self.base_path}"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': the only targets allowed by default."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_target(url: str) -> Target:
    """`http://host:port[/base]` -> Target. Raises ValueError for anything else (no TLS: the
    engine only talks to the lab's plain-HTTP services and to local tunnels)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"target must be an http://host:port URL, got {url!r}")
    return Target(parts.hostname, parts.port or 80, parts.path.rstrip("/"))


@dataclass(slots=True)
class Response:
    """One request's outcome. Times are monotonic seconds; `status` 0 means no HTTP answer."""

    status: int
    body: bytes
    sent: float
    first_byte: float
    done: float
    bytes_sent: int
    bytes_received: int
    error: str | None = None


@functools.lru_cache(maxsize=512)
def _head(method: str, path: str, host: str, ctype: str, length: int) -> bytes:
    """The request head; cached because a load test repeats the same few requests."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: phasegate-loadtest",
             "Accept: */*"]
    if length or method in ("POST", "PUT", "PATCH"):
        lines += [f"Content-Type: {ctype}", f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Conn(asyncio.Protocol):
    """One TCP connection; at most one request in flight (no pipelining, as browsers and k6)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.chunks: list[bytes] = []
        self.sink: ChunkSink | None = None
        self.first_byte = 0.0
        self.received = 0
        self.open = False
        self.reusable = True

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones.
        self.transport, self.open = cast(asyncio.Transport, transport), True

    def data_received(self, data: bytes) -> None:
        if not self.first_byte:
            self.first_byte = _now()
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"bad HTTP response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail("connection closed by peer" if exc is None else f"connection lost: {exc}")

    # -- httptools callbacks
    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink(body, _now())
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- ours
    def _fail(self, reason: str) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(reason))

    def start(self, data: bytes, sink: ChunkSink | None) -> asyncio.Future[None]:
        """Send one request; the future completes when its whole response has arrived."""
        assert self.transport is not None
        self.chunks, self.sink, self.first_byte, self.received = [], sink, 0.0, 0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        """Close the socket now (reset rather than linger: it may be mid-response)."""
        self.open = False
        if self.transport is not None:
            self.transport.abort()


class HttpClient:
    """A VU's client for one target: one keep-alive connection, reopened when needed."""

    def __init__(self, target: Target, timeout_s: float = 60.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._host = f"{target.host}:{target.port}"
        self._conn: _Conn | None = None

    async def request(self, method: str, path: str, body: bytes = b"", *,
                      content_type: str = "application/json", sink: ChunkSink | None = None,
                      timeout_s: float | None = None) -> Response:
        """Send one request and read its whole response (into `body`, or piecewise to `sink`).

        Never raises for network or HTTP problems: they give `status=0` and `error`.
        """
        head = _head(method, self.target.base_path + path, self._host, content_type, len(body))
        data = head + body if body else head
        sent = _now()
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                conn, sent = await self._exchange(method, data, sink)
        except (OSError, TimeoutError) as exc:
            return self._failed(exc, sent, len(data))
        status = conn.parser.get_status_code()
        if not conn.reusable:
            self.close()
        return Response(status, b"".join(conn.chunks), sent, conn.first_byte or _now(), _now(),
                        len(data), conn.received)

    async def _exchange(self, method: str, data: bytes,
                        sink: ChunkSink | None) -> tuple[_Conn, float]:
        """Send on the kept-alive connection, or a new one. A server may close an idle
        keep-alive connection just as we reuse it; a GET/HEAD that got no byte back is then
        sent once more on a fresh connection (as browsers and Go's client do); anything
        else reports the failure."""
        reused = self._conn is not None and self._conn.open
        conn = self._conn if reused and self._conn is not None else await self._connect()
        sent = _now()
        try:
            await conn.start(data, sink)
        except ConnectionError:
            if not (reused and conn.received == 0 and method in ("GET", "HEAD")):
                raise
            conn = await self._connect()
            sent = _now()
            await conn.start(data, sink)
        return conn, sent

    async def _connect(self) -> _Conn:
        self.close()
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.target.host, self.target.port)
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            # Small requests must leave at once (Nagle + delayed ACK would add 40 ms).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        return conn

    def _failed(self, exc: BaseException, sent: float, size: int) -> Response:
        received = self._conn.received if self._conn is not None else 0
        self.close()  # the connection's state is unknown after a failure: never reuse it
        reason = "request timeout" if isinstance(exc, TimeoutError) else str(exc) or type(
            exc).__name__
        now = _now()
        return Response(0, b"", sent, now, now, size, received, reason)

    def close(self) -> None:
        """Drop the connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
