"""Start the lab's real servers (PostgreSQL, Redis, Prometheus, Alertmanager, Prefect and
its workers).

Each `start_*` spawns one child process bound to 127.0.0.1, waits until it really answers
(bounded polling, never a fixed sleep) and returns its PID. Stopping is by PID (lab.procs).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from phasegate.errors import LabError
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import pid_alive, spawn, stop_pid, wait_for, wait_port

__all__ = [
    "PG_BIN",
    "PREFECT_DB",
    "client_env",
    "current_user",
    "deactivate_schedules",
    "delete_missed_runs",
    "deploy_all",
    "descendants",
    "ensure_work_pool",
    "pg_data_root",
    "prefect_env",
    "prepare_prefect_database",
    "sqlite_database_url",
    "start_alertmanager",
    "start_postgres",
    "start_prefect",
    "start_prefect_worker",
    "start_prometheus",
    "start_redis",
    "stop_prefect_worker",
    "wait_prefect",
    "wait_workers",
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


PREFECT_DB = "prefect"  # the Prefect server's own database and its owner role, in the lab's PG
WORKER_QUERY_SECONDS = 1  # the lab's workers poll every second: a run starts in seconds


def prefect_env(layout: LabLayout, database_url: str) -> dict[str, str]:
    """Environment for the lab's Prefect server and its clients: home inside the lab, the
    server's database at `database_url`, no telemetry."""
    return {
        **os.environ,
        "PREFECT_HOME": str(layout.prefect_dir),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # Expired concurrency leases (a transition whose process died) are freed within 2 s
        # of expiry instead of 15 s: the lab's compressed time.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2",
    }


def sqlite_database_url(layout: LabLayout) -> str:
    """A SQLite database inside the lab (what the lab used before; bench/prefect_bench.py)."""
    return f"sqlite+aiosqlite:///{layout.prefect_dir / 'prefect.db'}"


def _prefect_db_password(layout: LabLayout) -> str:
    """The `prefect` role's password: generated once, kept in the lab (0600), never printed."""
    path = layout.prefect_dir / "db-password"
    if not path.exists():
        layout.prefect_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def prepare_prefect_database(layout: LabLayout, admin_dsn: str, host: str, port: int) -> str:
    """Create (once) the `prefect` role and its own database in the lab's PostgreSQL, set the
    role's password, and return the server's asyncpg URL (it holds the password: pass it in
    the environment only)."""
    import psycopg
    from psycopg import sql

    password = _prefect_db_password(layout)
    role, db = sql.Identifier(PREFECT_DB), sql.Identifier(PREFECT_DB)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PREFECT_DB,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(password)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (PREFECT_DB,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
    return (f"postgresql+asyncpg://{PREFECT_DB}:{quote(password, safe='')}@{host}:{port}"
            f"/{PREFECT_DB}")


def _prefect_cli() -> str:
    exe = Path(sys.executable).parent / "prefect"
    return str(exe) if exe.exists() else (shutil.which("prefect") or "prefect")


def start_prefect(layout: LabLayout, port: int, database_url: str) -> int:
    """Start `prefect server start` on `port` with its database at `database_url`; the
    caller waits with `wait_prefect`."""
    layout.prefect_dir.mkdir(parents=True, exist_ok=True)
    argv = [_prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = prefect_env(layout, database_url)
    env.pop("PREFECT_API_URL", None)
    # The UI asks its API at this URL; the default (port 4200) is not the lab's.
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    return spawn(argv, layout.logs_dir / "prefect.log", env=env)


def wait_prefect(port: int, timeout: float = 90) -> None:
    """Wait until the Prefect API answers /api/health."""
    url = f"http://127.0.0.1:{port}/api/health"
    wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, timeout, interval=0.25,
             what="prefect server")


def client_env(layout: LabLayout, api_url: str) -> dict[str, str]:
    """Environment for a Prefect client of the lab (deploy, workers and their flow runs): the
    lab's API, a home inside the lab (the user's ~/.prefect is left alone)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_SERVER_", "PREFECT_API_DATABASE"))}
    env.update({"PREFECT_HOME": str(layout.prefect_dir / "client"), "PREFECT_API_URL": api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
                "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_SECONDS)})
    return env


def deploy_all(layout: LabLayout, api_url: str, project_dir: Path, timeout: float = 300) -> None:
    """`prefect --no-prompt deploy --all` in `project_dir` (where prefect.yaml is): every
    deployment it defines, with its pull step resolved to this checkout. Raises LabError."""
    log = layout.logs_dir / "prefect-deploy.log"
    with open(log, "ab") as out:
        res = subprocess.run([_prefect_cli(), "--no-prompt", "deploy", "--all"], cwd=project_dir,
                             env=client_env(layout, api_url), stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             timeout=timeout, check=False)
    if res.returncode != 0:
        raise LabError(f"prefect deploy --all failed (exit {res.returncode}; log: {log})")


@contextlib.contextmanager
def _client(api_url: str) -> Iterator[Any]:
    """A sync Prefect client of the server at `api_url`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), \
            get_client(sync_client=True) as client:
        yield client


def _delete_scheduled_runs(client: Any, before: datetime | None = None) -> int:
    """Delete the auto-scheduled runs not yet started (due before `before`, if given)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=before) if before else None))
    doomed = [r.id for r in runs if r.auto_scheduled]
    for run_id in doomed:
        client.delete_flow_run(run_id)
    return len(doomed)


def delete_missed_runs(api_url: str) -> int:
    """Delete the scheduled runs whose time passed while the lab was down (a warm `lab up`
    would otherwise start all of them at once); how many."""
    with _client(api_url) as client:
        return _delete_scheduled_runs(client, before=datetime.now(UTC))


def deactivate_schedules(api_url: str) -> int:
    """Switch off every deployment schedule and delete the runs already scheduled by them
    (the test suite's lab: no run starts unless a test starts it). Returns how many."""
    with _client(api_url) as client:
        count = 0
        for dep in client.read_deployments():
            for schedule in dep.schedules or []:
                client.update_deployment_schedule(dep.id, schedule.id, active=False)
                count += 1
        _delete_scheduled_runs(client)
    return count


def ensure_work_pool(api_url: str, pool: str) -> None:
    """Create the `process` work pool `pool` unless it exists (its default job template)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    # A pool kept from the previous `lab up` is left as it is.
    with _client(api_url) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=pool, type=ProcessWorker.type,
                                               base_job_template=template))


def start_prefect_worker(layout: LabLayout, api_url: str, pool: str, name: str) -> int:
    """Start `prefect worker start` on `pool` as `name`; flow runs it picks up run as its
    own child processes (each in a session of its own)."""
    argv = [_prefect_cli(), "worker", "start", "--pool", pool, "--type", "process",
            "--name", name]
    return spawn(argv, layout.logs_dir / f"{name}.log", env=client_env(layout, api_url))


def wait_workers(api_url: str, pool: str, names: list[str], timeout: float = 60) -> None:
    """Wait until every worker in `names` has sent a heartbeat to `pool`."""
    def online() -> bool:
        with _client(api_url) as client:
            seen = {w.name for w in client.read_workers_for_work_pool(pool)
                    if w.status == "ONLINE"}
        return set(names) <= seen

    wait_for(online, timeout, interval=0.5, what=f"prefect workers {names}")


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), children first."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 10_000:  # bounded
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def stop_prefect_worker(pid: int, timeout: float = 10) -> bool:
    """Stop a worker and the flow runs it started (their own sessions: not in its process
    group). A worker's first SIGTERM only starts a graceful shutdown, the second one ends it;
    whatever is left after `timeout` is SIGKILLed. True if all are gone."""
    runs = descendants(pid)
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
    gone = stop_pid(pid, signal.SIGTERM, timeout=timeout)
    return all([stop_pid(p, signal.SIGTERM, timeout=5) for p in runs]) and gone


def current_user() -> str:
    """The Unix user running the lab (SSH logins use it)."""
    return getpass.getuser()
