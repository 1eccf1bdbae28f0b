"""`phasegate doctor` and the preflight against the lab: it passes on the lab; a wrong job label
in a plan copy is named; a system that never answers is a FAIL at the deadline, not a hang; a
missing Block is named. Through the CLI in a plain environment and through the flow."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from phasegate.blocks.systems import PrometheusConnection
from phasegate.flows.doctor import Scope, doctor, preflight
from phasegate.policy.doctor import plan_queries
from phasegate.policy.plan import DEFAULT_PLAN_PATH, load_plan

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker


def _cli(lab: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PHASEGATE_LAB": lab["dir"], "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "phasegate.cli", "doctor", *argv], env=env,
                          capture_output=True, text=True, timeout=120)


def test_doctor_passes_on_the_lab(lab: dict[str, Any]) -> None:
    out = _cli(lab, "--json")
    doc = json.loads(out.stdout)
    failed = [c for c in doc["checks"] if not c["ok"]]
    assert out.returncode == 0 and doc["ok"], failed
    systems = {c["system"] for c in doc["checks"]}
    assert systems >= {"postgres", "redis", "prometheus", "alertmanager", "gpu-1", "gpu-2",
                       "vllm", "api", "cloud run", "compute", "notifications", "reports",
                       "prefect"}
    queries = [c for c in doc["checks"] if c["name"].startswith(("promql ", "sql "))]
    assert len(queries) == len(plan_queries(load_plan())) and all(c["ok"] for c in queries)


def test_a_wrong_job_label_is_named(lab: dict[str, Any], tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_PLAN_PATH.read_text())
    cond = next(c for c in data["transitions"][0]["conditions"] if c["id"] == "cache-miss-30")
    query = cond["source"]["query"]
    good_job = query.split('job="', 1)[1].split('"', 1)[0]
    cond["source"]["query"] = query.replace(f'job="{good_job}"', 'job="apix"')
    path = tmp_path / "wrong-label.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    out = _cli(lab, "--plan", str(path))
    assert out.returncode == 1
    fails = [line for line in out.stdout.splitlines() if " FAIL " in line]
    assert len(fails) == 1, out.stdout
    assert "promql 1->2 condition cache-miss-30" in fails[0]
    assert 'job="apix"} matches nothing' in fails[0]
    assert f"exists with job={good_job}" in fails[0]
    assert out.stdout.rstrip().endswith("FAIL: prometheus promql 1->2 condition cache-miss-30")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_a_system_that_never_answers_fails_at_the_deadline(lab: dict[str, Any],
                                                           silent_server: str) -> None:
    PrometheusConnection(url=silent_server, timeout_s=30).save("silent-prometheus",
                                                               overwrite=True)
    start = time.monotonic()
    verdict = preflight(load_plan(), "lab", "custom-webhook/lab-slack",
                        Scope(phases=(1, 2), transitions=((1, 2),), current_phase=1),
                        deadline_s=4.0, prometheus_block="silent-prometheus")
    took = time.monotonic() - start
    assert took < 12, took  # the deadline (4 s) plus loading the Blocks
    prom = [c for c in verdict.checks if c.system == "prometheus"]
    assert prom and all(not c.ok and c.why == "no answer within 4 s" for c in prom)
    # The rest answered (on a loaded machine an SSH login may itself miss 4 s: then it says so).
    others = [c for c in verdict.checks if c.system != "prometheus"]
    assert others and all(c.ok or c.why == "no answer within 4 s" for c in others), others
    assert sum(c.ok for c in others) >= len(others) - 2


def test_missing_blocks_are_named(lab: dict[str, Any]) -> None:
    verdict = preflight(load_plan(), "nosuch", "custom-webhook/nosuch-slack", deadline_s=5)
    assert not verdict.ok
    missing = {c.name for c in verdict.checks if c.system == "prefect" and not c.ok}
    assert {"Block nosuch-postgres", "Block nosuch-prometheus", "Block nosuch-gpu-1",
            "Block nosuch-api"} <= missing
    why = next(c.why for c in verdict.checks if c.name == "Block nosuch-redis")
    assert why == ("no RedisConnection Block 'nosuch-redis' (docs/production.md says how to "
                   "save it)")


def test_the_flow_ends_failed_with_the_summary(lab: dict[str, Any]) -> None:
    state = doctor(prefix="nosuch", deadline_s=5, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("") and "FAIL: prefect Block nosuch-" in state.message
