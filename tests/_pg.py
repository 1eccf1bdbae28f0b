"""A throwaway real PostgreSQL 15 for tests: initdb into a /tmp dir as user postgres, start on a
free 127.0.0.1 port, stop by PID with SIGINT (fast shutdown), remove the directory."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from phasegate.lab.procs import free_port, spawn, stop_pid, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_user() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


def _initdb(root: Path) -> Path:
    data = root / "data"
    user = _as_user()
    if user:
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--locale=C.UTF-8", "-N"], check=True, user=user,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    return data


def _can_connect(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                             connect_timeout=1):
            return True
    return check


def _start(root: Path, data: Path) -> tuple[int, int]:
    """Start postgres; retry on a port race. Returns (pid, port)."""
    for _ in range(3):
        port = free_port()
        pid = spawn([str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                    root / "pg.log", user=_as_user())
        try:
            wait_for(_can_connect(port), timeout=15, what="postgres")
            return pid, port
        except TimeoutError:
            stop_pid(pid, signal.SIGINT)
    raise RuntimeError("postgres did not start: " + (root / "pg.log").read_text()[-2000:])


@contextmanager
def pg_server(dbname: str = "dreamseed") -> Iterator[str]:
    """Yield the DSN of database `dbname` on a fresh server; everything is removed after."""
    root = Path(tempfile.mkdtemp(prefix="pgtest-", dir="/tmp"))
    os.chmod(root, 0o755)
    pid = None
    try:
        pid, port = _start(root, _initdb(root))
        base = f"host=127.0.0.1 port={port} user=postgres"
        with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {dbname}")
        yield f"{base} dbname={dbname}"
    finally:
        if pid is not None:
            stop_pid(pid, signal.SIGINT, timeout=15)
        shutil.rmtree(root, ignore_errors=True)
