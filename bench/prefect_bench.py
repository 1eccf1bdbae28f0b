"""Benchmark: the Prefect server on PostgreSQL vs SQLite, deploying, and runs through workers.

Prints two tables.
1. Server: `prefect server start` until /api/health answers, and its resident memory once
   ready (process tree), on a fresh and on a warm database, SQLite file vs the PostgreSQL 15
   the lab uses (a throwaway cluster in a temp dir); then `prefect --no-prompt deploy --all`
   against the PostgreSQL server.
2. Workers (needs a running lab, `phasegate lab up`, or --no-lab): a lab-smoke run created as
   the UI's Run button does, until Running and until Completed, N times; the workers' RSS.

    .venv/bin/python bench/prefect_bench.py [--runs 2] [--flow-runs 5] [--dir .lab] [--no-lab]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from lab_up import rss_mib

from phasegate.deployments.serve import PREFECT_YAML
from phasegate.lab import services
from phasegate.lab.layout import LabLayout, lab_dir_from_env
from phasegate.lab.procs import free_port, stop_pid


def server_run(layout: LabLayout, url: str) -> tuple[float, float]:
    """(seconds until the API answers, MiB resident once ready) of one server start."""
    port = free_port()
    started = time.perf_counter()
    pid = services.start_prefect(layout, port, url)
    try:
        services.wait_prefect(port, timeout=180)
        ready = time.perf_counter() - started
        time.sleep(2)  # its services have started too
        return ready, rss_mib([pid])
    finally:
        stop_pid(pid, signal.SIGTERM, timeout=15)


def deploy_seconds(layout: LabLayout, url: str) -> float:
    """`prefect --no-prompt deploy --all` (every deployment of prefect.yaml), seconds."""
    port = free_port()
    pid = services.start_prefect(layout, port, url)
    try:
        services.wait_prefect(port, timeout=180)
        api = f"http://127.0.0.1:{port}/api"
        services.ensure_work_pool(api, "local")
        started = time.perf_counter()
        services.deploy_all(layout, api, PREFECT_YAML.parent)
        return time.perf_counter() - started
    finally:
        stop_pid(pid, signal.SIGTERM, timeout=15)


def server_table(runs: int) -> list[tuple[str, list[float], list[float]]]:
    """Rows (label, ready seconds, MiB) for SQLite and PostgreSQL, fresh and warm."""
    root = Path(tempfile.mkdtemp(prefix="prefect-bench-"))
    layout = LabLayout(root)
    layout.ensure()
    pg_port = free_port()
    pg_pid, _, _ = services.start_postgres(layout, pg_port)
    admin = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
    rows: list[tuple[str, list[float], list[float]]] = []
    try:
        def fresh_pg() -> str:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS prefect")
            return services.prepare_prefect_database(layout, admin, "127.0.0.1", pg_port)

        def fresh_sqlite() -> str:
            for f in layout.prefect_dir.glob("prefect.db*"):
                f.unlink()
            return services.sqlite_database_url(layout)

        for label, fresh in (("SQLite", fresh_sqlite), ("PostgreSQL", fresh_pg)):
            rows += _fresh_and_warm(layout, label, fresh, runs)
        deploys = [deploy_seconds(layout, fresh_pg()) for _ in range(runs)]
        rows.append(("deploy --all (PostgreSQL)", deploys, []))
    finally:
        stop_pid(pg_pid, signal.SIGINT, timeout=15)
    return rows


def _fresh_and_warm(layout: LabLayout, label: str, fresh: Callable[[], str],
                    runs: int) -> list[tuple[str, list[float], list[float]]]:
    cold_s: list[float] = []
    cold_m: list[float] = []
    warm_s: list[float] = []
    warm_m: list[float] = []
    for _ in range(runs):
        url = fresh()
        secs, mem = server_run(layout, url)  # a new database: migrations run first
        cold_s.append(secs)
        cold_m.append(mem)
        secs, mem = server_run(layout, url)
        warm_s.append(secs)
        warm_m.append(mem)
    return [(f"server {label}, fresh db", cold_s, cold_m),
            (f"server {label}, warm db", warm_s, warm_m)]


def worker_table(lab_dir: Path, flow_runs: int) -> list[tuple[str, list[float], list[float]]]:
    """Rows for runs of lab-smoke through the running lab's workers, and the workers' RSS."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    doc: dict[str, Any] = json.loads((lab_dir / "lab.json").read_text())
    running, completed = [], []
    with temporary_settings(updates={PREFECT_API_URL: doc["prefect"]["api_url"]}), \
            get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("lab-smoke/lab-smoke")
        for _ in range(flow_runs):
            started = time.perf_counter()
            run = client.create_flow_run_from_deployment(dep.id)
            to_running, total = _follow(client, run.id, started)
            running.append(to_running)
            completed.append(total)
    workers = [int(p) for c, p in doc["processes"].items() if c.startswith("prefect-worker:")]
    return [("lab-smoke: created -> Running", running, []),
            ("lab-smoke: created -> Completed", completed, []),
            ("worker (each, idle, own RSS)", [], [_own_rss_mib(p) for p in workers])]


def _own_rss_mib(pid: int) -> float:
    """The process's own resident memory (not its flow runs'), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _follow(client: Any, run_id: Any, started: float) -> tuple[float, float]:
    to_running = None
    deadline = started + 180
    while time.perf_counter() < deadline:
        state = client.read_flow_run(run_id).state
        if to_running is None and state is not None and (state.is_running() or
                                                         state.is_final()):
            to_running = time.perf_counter() - started
        if state is not None and state.is_final():
            if not state.is_completed():
                raise SystemExit(f"lab-smoke ended {state.name}: {state.message}")
            return float(to_running or 0.0), time.perf_counter() - started
        time.sleep(0.1)
    raise SystemExit("lab-smoke did not finish within 180 s")


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    """Run the benchmark and print its tables."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2, help="server starts per row")
    ap.add_argument("--flow-runs", type=int, default=5)
    ap.add_argument("--dir", help="the running lab (default $PHASEGATE_LAB or .lab)")
    ap.add_argument("--no-lab", action="store_true", help="skip the worker table")
    args = ap.parse_args()
    rows = server_table(args.runs)
    if not args.no_lab:
        rows += worker_table(lab_dir_from_env(args.dir), args.flow_runs)
    print(f"{'what':<34} {'seconds, median (min-max)':>28} {'RSS MiB, median (min-max)':>28}")
    for label, secs, mem in rows:
        print(f"{label:<34} {_cell(secs, '.1f'):>28} {_cell(mem, '.0f'):>28}")


if __name__ == "__main__":
    main()
