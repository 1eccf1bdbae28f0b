"""Test session setup: quiet, fast Prefect; one lab for the tests that need the whole world.

The `lab` fixture starts the real lab once per session (PostgreSQL, Redis, Prometheus,
Alertmanager, sshd per GPU host, the simulators and a Prefect server) in a private temp dir and
stops it by PID at the end, checking that nothing it started is left behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Before Prefect is imported anywhere: no telemetry, no heartbeat thread, quiet logs.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
# Under pytest-xdist each worker gets its own Prefect home (the temporary server's SQLite
# database), so two workers never share one database file.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(
        prefix=f"prefect-{os.environ['PYTEST_XDIST_WORKER']}-")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The running lab's status document (lab.json + `running`)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from phasegate.lab.layout import LabLayout
    from phasegate.lab.supervisor import UpOptions, down, up

    layout = LabLayout(tmp_path_factory.mktemp("lab"))
    # Schedules off: in the suite no run starts unless a test starts it.
    doc = up(layout, UpOptions(traffic_rate=2.0, vllm_load_seconds=1.0, schedules=False))
    try:
        with temporary_settings(updates={PREFECT_API_URL: doc["prefect"]["api_url"]}):
            yield doc
    finally:
        # Send the logs still queued for the lab's Prefect API while it still answers.
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
        pids = [int(p) for p in doc["processes"].values()]
        pids += list(doc.get("containers", {}).values())
        marks = [doc["dir"], doc["postgres"]["data_dir"]]
        down(layout, purge=True)
        from phasegate.lab.procs import pid_alive

        left = [p for p in pids if pid_alive(p)]
        assert not left, f"lab down left processes behind: {left}"
        assert not processes_mentioning(marks), processes_mentioning(marks)


def processes_mentioning(marks: list[str]) -> list[str]:
    """Live (non-zombie) processes whose command line or environment contains one of `marks`
    (paths of a lab): what `lab down` must not leave behind, grandchildren included (the
    Prefect workers' flow runs, in sessions of their own, have the lab's PREFECT_HOME)."""
    from phasegate.lab.procs import pid_alive

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd or m in env for m in marks) and pid_alive(int(proc.name)):
            found.append(f"{proc.name}: {cmd[:160]}")
    return found


@pytest.fixture(scope="session")
def lab_layout(lab: dict[str, Any]) -> Any:
    """The LabLayout of the session's lab."""
    from phasegate.lab.layout import LabLayout

    return LabLayout(Path(lab["dir"]))


@pytest.fixture
def gpu2_installed(lab: dict[str, Any], lab_layout: Any) -> Iterator[None]:
    """gpu-1 with its second GPU (the seed's D-Day 10:00 step): phase 2 needs it, and the
    transition's preflight refuses a run the hosts cannot carry."""
    from phasegate.lab import control

    control.set_gpu_count(lab_layout, "gpu-1", 2)
    yield
    control.set_gpu_count(lab_layout, "gpu-1", 1)
