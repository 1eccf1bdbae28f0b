"""The Blocks with their client libraries imported where a client is built: on the lab, in a
fresh interpreter, each saved Block loads with its fields' types, loading imports no client
library, and every client it builds then talks to the real lab system."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from pydantic import SecretStr

from phasegate.blocks.systems import GcpConnection, load_block

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]

CLIENTS = ("google", "paramiko", "psycopg", "redis", "prometheus_api_client")

_PROBE = """
import json, sys
from phasegate.blocks.systems import (GcpConnection, GpuHost, PostgresConnection,
                                      PrometheusConnection, RedisConnection, load_block)
pg = load_block(PostgresConnection, "lab-postgres")
rd = load_block(RedisConnection, "lab-redis")
prom = load_block(PrometheusConnection, "lab-prometheus")
gcp = load_block(GcpConnection, "lab-gcp")
host = load_block(GpuHost, "lab-gpu-1")
out = {"after_load": sorted({m.split(".")[0] for m in sys.modules} & set(CLIENTS))}
with pg.get_connection(pg.state_database) as conn:
    out["postgres"] = conn.execute("SELECT 1").fetchone()[0]
out["redis"] = rd.get_client().ping()
out["prometheus"] = prom.get_client().check_prometheus_connection()
out["cloud_run"] = gcp.get_run_client().get_service(name=gcp.service_name).name
out["compute"] = type(gcp.get_instances_client()).__name__
ssh = host.get_client()
try:
    _, stdout, _ = ssh.exec_command("echo ok", timeout=30)
    out["ssh"] = stdout.read().decode().strip()
finally:
    ssh.close()
print(json.dumps(out))
"""


def test_blocks_load_without_clients_then_build_working_ones(lab: dict[str, Any]) -> None:
    code = f"CLIENTS = {CLIENTS!r}\n{_PROBE}"
    env_api = {"PREFECT_API_URL": lab["prefect"]["api_url"]}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**_inherited(), **env_api})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    gcp = load_block(GcpConnection, "lab-gcp")
    assert out == {"after_load": [], "postgres": 1, "redis": True, "prometheus": True,
                   "cloud_run": gcp.service_name, "compute": "InstancesClient", "ssh": "ok"}


def test_a_saved_block_keeps_its_field_types(lab: dict[str, Any]) -> None:
    saved = GcpConnection(project="p-1", cloud_run_service="svc", api_endpoint="http://x",
                          service_account_info=SecretStr('{"type": "service_account"}'))
    saved.save("lazy-imports-gcp", overwrite=True)
    loaded = load_block(GcpConnection, "lazy-imports-gcp")
    assert isinstance(loaded.service_account_info, SecretStr)
    assert loaded.service_account_info.get_secret_value() == '{"type": "service_account"}'
    assert loaded.model_dump(exclude={"service_account_info"}) == \
        saved.model_dump(exclude={"service_account_info"})


def _inherited() -> dict[str, str]:
    """This process's environment (quiet Prefect settings of conftest), without its API URL."""
    return {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
