"""The lab's Prefect: its server on the lab's PostgreSQL, every deployment of prefect.yaml
registered on the `process` work pool, two workers, and a Run that a worker completes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun

from phasegate.deployments.serve import read_deployments, work_pools

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker


def wait_final(run_id: UUID, timeout: float = 120) -> FlowRun:
    """The flow run once its state is final (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(0.3)
    raise TimeoutError(f"flow run {run_id} not final after {timeout:.0f} s")


def test_the_server_keeps_its_data_in_its_own_postgres_database(lab: dict[str, Any]) -> None:
    pg = lab["postgres"]
    assert lab["prefect"]["database"] == f"postgresql://prefect@127.0.0.1:{pg['port']}/prefect"
    with psycopg.connect(pg["dsn"]) as conn:
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database"
                             " WHERE datname = 'prefect'").fetchone()
    with psycopg.connect(pg["dsn"].rsplit("/", 1)[0] + "/prefect") as conn:
        deployments = conn.execute("SELECT count(*) FROM deployment").fetchone()
    assert owner == ("prefect",)
    assert deployments is not None and deployments[0] == len(read_deployments())
    assert not list(Path(lab["dir"], "prefect").glob("*.db")), "no SQLite database"


def test_the_database_password_stays_in_the_lab_dir(lab: dict[str, Any]) -> None:
    secret = Path(lab["dir"], "prefect", "db-password")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    password = secret.read_text().strip()
    assert len(password) >= 24
    printed = subprocess.run([sys.executable, "-m", "phasegate.cli", "lab", "status", "--json",
                              "--dir", lab["dir"]], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert password not in printed.stdout + Path(lab["dir"], "lab.json").read_text()
    assert all(password not in p.read_text(errors="replace")
               for p in Path(lab["dir"], "logs").glob("*.log"))


def test_every_deployment_is_registered_on_the_work_pool(lab: dict[str, Any]) -> None:
    with get_client(sync_client=True) as client:
        listed = {d.name: d for d in client.read_deployments()}
    for spec in read_deployments():
        dep = listed[spec.name]
        assert dep.work_pool_name == spec.work_pool == "local"
        assert dep.entrypoint == spec.entrypoint
        # The pull step names this checkout: where the workers find the code.
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
            "directory": str(Path(__file__).resolve().parents[1])}}]


def test_two_workers_poll_the_pool(lab: dict[str, Any]) -> None:
    pools = work_pools()
    assert lab["prefect"]["workers"] == {p: [f"{p}-worker-1", f"{p}-worker-2"] for p in pools}
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("local")
        online = {w.name for w in client.read_workers_for_work_pool("local")
                  if w.status == "ONLINE"}
    assert pool.type == "process"
    assert online == {"local-worker-1", "local-worker-2"}
    for name in online:
        assert lab["running"][f"prefect-worker:{name}"]


def test_run_button_starts_a_run_that_a_lab_worker_completes(lab: dict[str, Any]) -> None:
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("lab-smoke/lab-smoke")
        run = client.create_flow_run_from_deployment(dep.id)  # what the UI's Run button does
    done = wait_final(run.id)
    assert done.state is not None and done.state.is_completed(), done.state
    assert done.labels["prefect.worker.name"] in {"local-worker-1", "local-worker-2"}
    assert done.labels["prefect.work-pool.name"] == "local"
    # It ran in a child process of that worker, not in this one, and reported what it saw.
    assert done.infrastructure_pid and int(done.infrastructure_pid) != os.getpid()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[run.id])))
    assert [a.key for a in artifacts] == ["lab-smoke"]
