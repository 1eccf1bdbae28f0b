"""The engine's HTTP/1.1 client: one keep-alive connection per VU, asyncio Protocol + httptools.

Chosen by measurement (bench/loadtest_bench.py, case "client"): on these 2-core machines this
client reached several times aiohttp's throughput per CPU second, because a request is one
`transport.write` of pre-built bytes and one C-parser pass, with no per-request Python objects
beyond the `Response`. It does only what a load generator needs:

- HTTP/1.1 with keep-alive (reconnects when the server closes or a request failed), over TCP
  or TLS (`https://`: TLS 1.2/1.3, SNI, the certificate verified against the system CA store,
  `SSL_CERT_FILE`, or a given CA file; see `tls_context`); a kept-alive TLS connection is
  reused like a plain one, so a handshake costs once per VU, not once per request;
- Content-Length and chunked bodies (httptools decodes both), bodies kept or streamed;
- a per-request timeout covering connect + send + full response;
- streaming reads: `on_chunk(data, t)` receives each body piece with its arrival time
  (SSE for the LLM mode), instead of buffering the body.

Failures never raise: they come back as `Response(status=0, error=...)`, as k6 reports them,
so a run measures a failing target instead of crashing on it. (The engine checks the TLS
certificate once before the run, `tls_preflight`: a target whose certificate cannot be
verified ends the run with one error, not with a failed request per iteration.) Timestamps are
`time.monotonic()` (CLOCK_MONOTONIC, comparable across processes on Linux); uvloop's
`loop.time()` is not used for measurement because it has millisecond resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from phasegate.errors import ConfigError, TlsVerificationFailed

__all__ = ["ChunkSink", "HttpClient", "Response", "Target", "parse_target", "tls_context",
           "tls_preflight"]

ChunkSink = Callable[[bytes, float], None]
_now = time.monotonic


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: host, port and the base path every request path is joined to."""

    host: str
    port: int
    base_path: str = ""
    tls: bool = False

    @property
    def url(self) -> str:
        """The target as a URL."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{self.base_path}"


def parse_target(url: str) -> Target:
    """`http(s)://host[:port][/base]` -> Target (port 80 or 443 by default). Raises
    ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"target must be an http(s)://host[:port] URL, got {url!r}")
    tls = parts.scheme == "https"
    return Target(parts.hostname, parts.port or (443 if tls else 80), parts.path.rstrip("/"),
                  tls)


def tls_context(ca_file: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """The client TLS context: TLS 1.2 or 1.3, ALPN http/1.1, hostname and certificate
    verified against the system CA store (which honours `SSL_CERT_FILE`/`SSL_CERT_DIR`, as
    Python's ssl does), or against `ca_file` only when given (curl's --cacert). `insecure`
    turns verification off (never the default; the callers warn). Raises ConfigError for an
    unreadable CA file."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {ca_file}: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or exc.reason or str(exc)
    return exc.reason or str(exc)


async def tls_preflight(target: Target, ctx: ssl.SSLContext, ca_file: str | None = None,
                        timeout_s: float = 10.0) -> None:
    """One TLS handshake with `target` before the load starts. Raises TlsVerificationFailed
    naming the host and the reason (untrusted issuer, hostname mismatch, expired, no TLS) so a
    bad certificate ends the run at once. A target that does not answer at all is not an
    error here: the run measures it (its requests fail, as k6's would). `ca_file` only names
    where the trusted CAs came from, in the message."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            transport, _ = await loop.create_connection(
                asyncio.Protocol, target.host, target.port, ssl=ctx,
                server_hostname=target.host)
    except ssl.SSLError as exc:
        untrusted = getattr(exc, "verify_code", None) in _UNTRUSTED
        hint = _ca_hint(ca_file) if untrusted else ""
        raise TlsVerificationFailed(
            f"TLS to {target.host}:{target.port} failed: {_tls_reason(exc)}{hint}") from exc
    except (OSError, TimeoutError):
        return
    transport.abort()


# OpenSSL verify codes meaning "no trusted CA signed this" (where the hint helps).
_UNTRUSTED = frozenset({2, 18, 19, 20, 21})


def _ca_hint(ca_file: str | None) -> str:
    where = os.environ.get("SSL_CERT_FILE")
    if ca_file:
        return f" (trusted CAs: {ca_file} only)"
    return (f" (trusted CAs from SSL_CERT_FILE={where}; --ca-file PATH for a private CA)"
            if where else " (trusted CAs: the system store; --ca-file PATH for a private CA)")


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
    connecting: float = 0.0  # seconds spent opening the connection (TCP + TLS); 0 if reused


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
    """A VU's client for one target: one keep-alive connection, reopened when needed.

    `ssl_context` is required for an https target (`tls_context()`); `connects` counts the
    connections opened (keep-alive reuse shows as few connects for many requests)."""

    def __init__(self, target: Target, timeout_s: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        default_port = 443 if target.tls else 80
        self._host = target.host if target.port == default_port else \
            f"{target.host}:{target.port}"
        self._conn: _Conn | None = None
        self._ssl = (ssl_context or tls_context()) if target.tls else None
        self.connects = 0
        self._connecting = 0.0

    async def request(self, method: str, path: str, body: bytes = b"", *,
                      content_type: str = "application/json", sink: ChunkSink | None = None,
                      timeout_s: float | None = None) -> Response:
        """Send one request and read its whole response (into `body`, or piecewise to `sink`).

        Never raises for network or HTTP problems: they give `status=0` and `error`.
        """
        head = _head(method, self.target.base_path + path, self._host, content_type, len(body))
        data = head + body if body else head
        sent = _now()
        self._connecting = 0.0
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                conn, sent = await self._exchange(method, data, sink)
        except (OSError, TimeoutError) as exc:
            return self._failed(exc, sent, len(data))
        status = conn.parser.get_status_code()
        if not conn.reusable:
            self.close()
        return Response(status, b"".join(conn.chunks), sent, conn.first_byte or _now(), _now(),
                        len(data), conn.received, None, self._connecting)

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
        began = _now()
        _, conn = await loop.create_connection(
            _Conn, self.target.host, self.target.port, ssl=self._ssl,
            server_hostname=self.target.host if self._ssl is not None else None)
        self._connecting += _now() - began
        self.connects += 1
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
        if isinstance(exc, TimeoutError):
            reason = "request timeout"
        elif isinstance(exc, ssl.SSLError):
            reason = f"TLS: {_tls_reason(exc)}"
        else:
            reason = str(exc) or type(exc).__name__
        now = _now()
        return Response(0, b"", sent, now, now, size, received, reason, self._connecting)

    def close(self) -> None:
        """Drop the connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
