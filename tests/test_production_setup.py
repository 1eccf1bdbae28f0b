"""docs/production.md's path, tried against the lab's systems under a second prefix: an estate
file without secrets, `phasegate blocks save`, then `phasegate doctor --prefix staging`, each
as a plain shell would run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker


def _estate(lab: dict[str, Any]) -> dict[str, Any]:
    """The estate file a team would write for the lab's systems (secrets as references)."""
    host, port = lab["redis"]["url"].split("//", 1)[1].split("/", 1)[0].split(":")
    gcp = lab["gcp"]
    return {
        "prefix": "staging",
        "postgres": {"host": lab["postgres"]["host"], "port": lab["postgres"]["port"],
                     "user": lab["postgres"]["user"], "sslmode": "disable"},
        "redis": {"host": host, "port": int(port)},
        "prometheus": {"url": lab["prometheus"]["url"]},
        "alertmanager": {"url": lab["alertmanager"]["url"], "health_path": "/-/healthy"},
        "api": {"url": lab["api"]["url"], "health_path": "/healthz"},
        "gcp": {"project": gcp["project"], "region": gcp["region"], "zone": gcp["zone"],
                "cloud_run_service": gcp["cloud_run_service"].rsplit("/", 1)[1],
                "api_endpoint": gcp["endpoint"]},
        "reports": {"reports_dir": str(Path(lab["dir"]) / "staging" / "reports"),
                    "backups_dir": str(Path(lab["dir"]) / "staging" / "backups")},
        "gpu_hosts": {h["name"]: {"host": h["host"], "port": h["port"], "user": h["user"],
                                  "private_key": {"file": h["key_path"]},
                                  "known_hosts": {"file": h["known_hosts"]},
                                  "vllm_port": h["vllm_port"], "models_dir": h["models_dir"]}
                      for h in lab["gpu_hosts"]},
        "notifications": {"kind": "webhook", "name": "staging",
                          "url": lab["receiver"]["url"] + "/slack/staging",
                          "json_data": {"text": "{{subject}}\n{{body}}"}},
    }


def _cli(lab: dict[str, Any], *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phasegate.cli", *argv], capture_output=True,
                          text=True, timeout=120,
                          env={"PHASEGATE_LAB": lab["dir"], "PATH": "/usr/bin:/bin", **env})


def test_estate_file_blocks_save_then_doctor(lab: dict[str, Any], tmp_path: Path) -> None:
    estate = tmp_path / "estate.yaml"
    estate.write_text(yaml.safe_dump(_estate(lab), sort_keys=False))
    saved = _cli(lab, "blocks", "save", "--file", str(estate))
    assert saved.returncode == 0, saved.stderr
    assert "10 Blocks saved under prefix 'staging'; notifications parameter: " \
        "custom-webhook/staging-notifications" in saved.stdout
    assert "BEGIN OPENSSH PRIVATE KEY" not in saved.stdout + saved.stderr
    doctor = _cli(lab, "doctor", "--prefix", "staging", "--json",
                  "--notifications", "custom-webhook/staging-notifications")
    doc = json.loads(doctor.stdout)
    assert doctor.returncode == 0, [c for c in doc["checks"] if not c["ok"]]
    assert any(c["name"] == "reports dir" and "staging/reports: writable" in c["why"]
               for c in doc["checks"])


def test_a_secret_written_in_the_file_is_refused_and_nothing_saved(
        lab: dict[str, Any], tmp_path: Path) -> None:
    doc = _estate(lab) | {"prefix": "leaky"}
    doc["redis"]["password"] = "hunter2"
    estate = tmp_path / "estate.yaml"
    estate.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = _cli(lab, "blocks", "save", "--file", str(estate))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: leaky-redis.password is a secret: give it as {env: NAME}, {file: PATH} or "
        "{prompt: true}, never in the file"]
    assert "hunter2" not in out.stdout + out.stderr
    listed = _cli(lab, "doctor", "--prefix", "leaky", "--json")
    assert "no PostgresConnection Block 'leaky-postgres'" in listed.stdout


REPO = Path(__file__).resolve().parent.parent


def _prefect(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "prefect")
    return subprocess.run([exe, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240, stdin=subprocess.DEVNULL)


def test_deploy_for_the_estate_and_a_worker_runs_it(lab: dict[str, Any], tmp_path: Path) -> None:
    """docs/production.md section 3 on a pool of its own: render prefect.yaml for the estate,
    create the pool, deploy, start a worker, press Run (doctor): a worker completes it."""
    from phasegate.lab.procs import spawn
    from phasegate.lab.services import stop_prefect_worker

    estate = tmp_path / "estate.yaml"
    estate.write_text(yaml.safe_dump(_estate(lab), sort_keys=False))
    assert _cli(lab, "blocks", "save", "--file", str(estate)).returncode == 0
    rendered = tmp_path / "prefect.staging.yaml"
    subprocess.run([sys.executable, "-m", "phasegate.deployments.render", "--prefix", "staging",
                    "--notifications", "custom-webhook/staging-notifications", "--pool",
                    "staging", "--suffix=-staging", "--out", str(rendered)],
                   check=True, cwd=REPO, timeout=60)
    env = {"PATH": "/usr/bin:/bin", "PREFECT_API_URL": lab["prefect"]["api_url"],
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    created = _prefect(env, "work-pool", "create", "staging", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(env, "--no-prompt", "deploy", "-n", "doctor-staging",
                        "--prefect-file", str(rendered))
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    worker = spawn([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool",
                    "staging", "--name", "staging-worker"], tmp_path / "worker.log", env=env)
    try:
        state = _run_and_wait("doctor/doctor-staging", 180)
    finally:
        assert stop_prefect_worker(worker)
        _prefect(env, "work-pool", "delete", "staging")
    assert state.is_completed(), (state.message, (tmp_path / "worker.log").read_text()[-3000:])
    assert state.message.endswith("checks, all ok")


def _run_and_wait(name: str, timeout_s: float) -> Any:
    """Create a run of deployment `name` as the UI's Run button does; its final state."""
    import time

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(name)
        run = client.create_flow_run_from_deployment(dep.id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                client.delete_deployment(dep.id)
                return state
            time.sleep(1)
        client.delete_deployment(dep.id)
    raise TimeoutError(f"{name}: no final state within {timeout_s} s")
