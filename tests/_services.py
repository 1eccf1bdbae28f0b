"""Real throwaway servers for the lab simulator tests: Redis, PostgreSQL, a vLLM stub, and the
lab's own Python processes. Everything binds 127.0.0.1 on free ports and is stopped by PID."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg

from phasegate.lab.procs import free_port, spawn, stop_pid, wait_for, wait_port

REPO = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")

APP_TABLES = """
CREATE TABLE users(id bigserial PRIMARY KEY, created_at timestamptz NOT NULL,
                   country text, acquisition_channel text);
CREATE TABLE daily_active_users(day date PRIMARY KEY, active_users int NOT NULL);
CREATE TABLE questions(id bigserial PRIMARY KEY, subject text, body text, answer text);
INSERT INTO users(created_at, country, acquisition_channel)
  SELECT now() - g * interval '1 day', 'KR', 'organic' FROM generate_series(1, 5) g;
INSERT INTO daily_active_users VALUES ('2026-01-01', 2), ('2026-01-02', 3);
INSERT INTO questions(subject, body, answer) VALUES
  ('math', '2x + 3 = 13. x = ?', '5'), ('math', '7 * 8 = ?', '56'),
  ('math', 'sqrt(81) = ?', '9'), ('physics', 'F = m * ?', 'a'),
  ('physics', 'Unit of force?', 'newton');
"""


@dataclass(frozen=True)
class Redis:
    """A running redis-server."""

    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass(frozen=True)
class Postgres:
    """A running throwaway PostgreSQL cluster (trust auth, user postgres)."""

    pid: int
    port: int

    def dsn(self, db: str = "postgres") -> str:
        """libpq URL of database `db`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[Redis]:
    """redis-server on a free port; stopped with SIGTERM on exit."""
    port = free_port()
    pid = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"],
                workdir / f"redis-{port}.log")
    try:
        wait_port(port, timeout=10)
        yield Redis(pid, port)
    finally:
        stop_pid(pid, signal.SIGTERM, timeout=5)


def _pg_user() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb + postgres in a private temp dir; stopped with SIGINT (fast shutdown) on exit."""
    base = Path(tempfile.mkdtemp(prefix="phasegate-test-pg-"))
    user = _pg_user()
    if user:
        shutil.chown(base, user, user)
    data = base / "data"
    subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--locale=C.UTF-8", "-N"], check=True, user=user, cwd=base,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    pid = 0
    try:
        pid, port = _start_postgres(base, data, user)
        yield Postgres(pid, port)
    finally:
        if pid:
            stop_pid(pid, signal.SIGINT, timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def _start_postgres(base: Path, data: Path, user: str | None) -> tuple[int, int]:
    """Start postgres on a free port, retrying the (rare) port race; (pid, port)."""
    for _attempt in range(3):
        port = free_port()
        pid = spawn([str(PG_BIN / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
                     "-p", str(port), "-k", str(base), "-c", "fsync=off",
                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                    base / f"postgres-{port}.log", cwd=base, user=user)
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        try:
            wait_for(functools.partial(_pg_ready, dsn), timeout=15, interval=0.05,
                     what="postgres")
            return pid, port
        except TimeoutError:
            stop_pid(pid, signal.SIGINT, timeout=5)
    raise RuntimeError("postgres did not start")


def _pg_ready(dsn: str) -> bool:
    with psycopg.connect(dsn, connect_timeout=2):
        return True


def create_app_db(pg: Postgres, name: str = "dreamseed") -> str:
    """Create the app database with users, daily_active_users and questions; return its DSN."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(pg.dsn(name), autocommit=True) as conn:
        conn.execute(APP_TABLES)
    return pg.dsn(name)


def start_module(module: str, args: list[str], log_file: Path, port: int | None = None) -> int:
    """`python -m <module> args` from the repo; waits for `port` when given; returns the PID."""
    pid = spawn([sys.executable, "-m", module, *args], log_file, cwd=REPO)
    if port is not None:
        try:
            wait_port(port, timeout=15)
        except TimeoutError:
            stop_pid(pid)
            raise RuntimeError(f"{module} did not listen:\n{log_file.read_text()}") from None
    return pid


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET `url`; (status, body) also for error statuses."""
    return http_request("GET", url, None, timeout)


def http_request(method: str, url: str, payload: Any = None,
                 timeout: float = 5.0, raw: bytes | None = None) -> tuple[int, bytes]:
    """One request with an optional JSON payload (or raw body); (status, body)."""
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None
                                        else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class VllmStub:
    """A minimal OpenAI-compatible /v1/completions server, like vLLM's (rejects other models)."""

    model: str = "Llama-2-13b-chat-hf"
    delay_s: float = 0.0
    status: int = 200
    calls: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VllmStub:
        """Serve in a daemon thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()


def _make_handler(stub: VllmStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            stub.calls.append(body)
            time.sleep(stub.delay_s)
            if self.path != "/v1/completions":
                return self._reply(404, {"detail": "Not Found"})
            if body.get("model") != stub.model:
                return self._reply(404, {"object": "error", "type": "NotFoundError",
                                         "message": f"The model `{body.get('model')}` does "
                                                    "not exist."})
            if stub.status != 200:
                return self._reply(stub.status, {"object": "error", "message": "stub error"})
            self._reply(200, {"id": "cmpl-1", "object": "text_completion", "model": stub.model,
                              "choices": [{"index": 0, "text": f"정답입니다! port {stub.port}",
                                           "finish_reason": "length"}],
                              "usage": {"prompt_tokens": 40, "completion_tokens": 96}})

        def _reply(self, status: int, data: Any) -> None:
            raw = json.dumps(data).encode()
            with contextlib.suppress(OSError):  # the client may have timed out already
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

    return Handler


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition, names exactly as
    exposed (prometheus_client's parser renames counters without _total, Prometheus does not)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or line.startswith("#"):
            continue
        labels = tuple(sorted((k, bytes(v, "utf-8").decode("unicode_escape"))
                              for k, v in _LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float | None:
    """The value of one series (labels must match exactly), None when absent."""
    return samples.get((name, tuple(sorted(labels.items()))))
