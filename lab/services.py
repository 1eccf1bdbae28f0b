"""Start the lab's real servers (PostgreSQL, Redis, Prometheus, Alertmanager, Prefect).

Each `start_*` spawns one child process bound to 127.0.0.1, waits until it really answers
(bounded polling, never a fixed sleep) and returns its PID. Stopping is by PID (lab.procs).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import spawn, wait_for, wait_port

__all__ = [
    "PG_BIN",
    "pg_data_root",
    "prefect_env",
    "start_alertmanager",
    "start_postgres",
    "start_prefect",
    "start_prometheus",
    "start_redis",
    "wait_prefect",
    "current_user",
]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _is_root() -> bool:
    return os.geteuid() == 0


def _reachable_by_others(path: Path) -> bool:
    """True if every ancestor of `path` is traversable by other users (o+x)."""
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents] if p.exists())


def pg_data_root(layout: LabLayout) -> Path:
    """Where the cluster lives. As root, initdb/postgres run as `postgres`, which cannot enter a
    0700 lab directory (/root, mktemp): then the cluster goes to a per-lab directory in the
    system temp dir, named after the lab path so that `lab up` finds it again."""
    inside = layout.root / "postgres"
    if not _is_root() or _reachable_by_others(layout.root):
        return inside
    digest = hashlib.sha256(str(layout.root).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"phasegate-pg-{digest}"


def _pg_user() -> str | None:
    return "postgres" if _is_root() else None


def _as_pg_user(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, user=_pg_user(),
                          check=False)


def _init_cluster(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if _is_root():
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    root.chmod(0o700)
    res = _as_pg_user([str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres",
                       "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "-N"])
    if res.returncode != 0:
        raise RuntimeError(f"initdb failed: {res.stderr.strip()}")
    (root / "sock").mkdir(exist_ok=True)
    if _is_root():
        os.chown(root / "sock", pw.pw_uid, pw.pw_gid)


def start_postgres(layout: LabLayout, port: int) -> tuple[int, Path, bool]:
    """Start PostgreSQL 15 on `port`; initdb first if needed.

    Returns (pid, cluster root, created) where created is True for a brand-new cluster."""
    root = pg_data_root(layout)
    created = not (root / "data" / "PG_VERSION").exists()
    if created:
        _init_cluster(root)
    # fsync off: a throwaway lab cluster trades durability for speed.
    argv = [str(PG_BIN / "postgres"), "-D", str(root / "data"), "-p", str(port),
            "-k", str(root / "sock"), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200"]
    pid = spawn(argv, layout.logs_dir / "postgres.log", user=_pg_user())
    wait_for(lambda: _pg_ready(port), 30, what="postgres")
    return pid, root, created


def _pg_ready(port: int) -> bool:
    res = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
                         capture_output=True, timeout=5, check=False)
    return res.returncode == 0


def start_redis(layout: LabLayout, port: int) -> int:
    """Start Redis on `port` with no persistence (the lab's cache is disposable)."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(layout.redis_dir), "--daemonize", "no",
            "--maxmemory", "4gb", "--maxmemory-policy", "volatile-lru"]
    pid = spawn(argv, layout.logs_dir / "redis.log")
    wait_port(port, 10)
    return pid


def start_prometheus(layout: LabLayout, port: int, config: Path) -> int:
    """Start Prometheus (history must already be loaded into its TSDB)."""
    # Retention far beyond the 90-day history, or old blocks are deleted at start.
    argv = ["prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={layout.prometheus_dir / 'data'}",
            "--storage.tsdb.retention.time=400d", f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle", "--log.level=warn"]
    pid = spawn(argv, layout.logs_dir / "prometheus.log")
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200,
             30, what="prometheus")
    return pid


def start_alertmanager(layout: LabLayout, port: int, config: Path) -> int:
    """Start Alertmanager; an empty cluster address keeps it off 0.0.0.0:9094."""
    argv = ["prometheus-alertmanager", f"--config.file={config}",
            f"--storage.path={layout.alertmanager_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
            "--log.level=warn"]
    pid = spawn(argv, layout.logs_dir / "alertmanager.log")
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200,
             30, what="alertmanager")
    return pid


def prefect_env(layout: LabLayout) -> dict[str, str]:
    """Environment for the lab's Prefect server: SQLite inside the lab, no telemetry."""
    home = layout.prefect_dir
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # Expired concurrency leases (a transition whose process died) are freed within 2 s
        # of expiry instead of 15 s: the lab's compressed time.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2",
    }


def start_prefect(layout: LabLayout, port: int) -> int:
    """Start `prefect server start` on `port`; the caller waits with `wait_prefect`."""
    layout.prefect_dir.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "prefect"
    cmd = str(exe) if exe.exists() else (shutil.which("prefect") or "prefect")
    argv = [cmd, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = prefect_env(layout)
    env.pop("PREFECT_API_URL", None)
    # The UI asks its API at this URL; the default (port 4200) is not the lab's.
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    return spawn(argv, layout.logs_dir / "prefect.log", env=env)


def wait_prefect(port: int, timeout: float = 90) -> None:
    """Wait until the Prefect API answers /api/health."""
    url = f"http://127.0.0.1:{port}/api/health"
    wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, timeout, interval=0.25,
             what="prefect server")


def current_user() -> str:
    """The Unix user running the lab (SSH logins use it)."""
    return getpass.getuser()
