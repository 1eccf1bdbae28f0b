"""Child processes of the lab: free ports, start detached, wait until ready, stop by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["free_port", "pid_alive", "port_free", "spawn", "stop_pid", "wait_for", "wait_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """True if 127.0.0.1:`port` can be bound now. SO_REUSEADDR as servers set it, so a port
    whose old connections sit in TIME_WAIT counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def spawn(
    argv: Sequence[str],
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start `argv` in its own session (so terminal signals do not reach it); return its PID.

    stdout and stderr go to `log_file`. `user` runs it as another Unix user (root only).
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
            user=user,
        )
    return proc.pid


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: int) -> None:
    """Signal `pid`; when it leads its own process group (spawn() makes it so), the whole
    group, so that helpers it forked (uvicorn workers, sshd sessions) go with it."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send `sig` to `pid` (and its group, if it leads one), wait up to `timeout` s, then
    SIGKILL. True if it is gone."""
    if not pid_alive(pid):
        return True
    _signal(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    _signal(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.1,
              what: str = "condition") -> None:
    """Poll `check` until it returns True (exceptions count as False); TimeoutError after
    `timeout` seconds. Bounded: never a fixed sleep standing in for readiness."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s" + (f": {last}" if last else ""))


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on host:port."""
    def _open() -> bool:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    wait_for(_open, timeout, what=f"port {port}")
