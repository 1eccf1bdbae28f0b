"""`lab-smoke`: touch every system through its Block and report what was seen.

It changes nothing. It proves the wiring (Blocks -> clients -> real servers) before any flow
that changes the world relies on it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from phasegate.blocks.systems import (
    GcpConnection,
    GpuHost,
    PostgresConnection,
    PrometheusConnection,
    RedisConnection,
    load_block,
)
from phasegate.tasks.cloud_run import read_service_settings
from phasegate.tasks.gpu_hosts import detect_gpus
from phasegate.tasks.postgres import count_rows
from phasegate.tasks.prometheus import query_instant, query_range
from phasegate.tasks.redis_cache import read_memory_config
from phasegate.tasks.state_store import read_current_phase
from phasegate.tasks.vllm import check_completion, is_healthy

__all__ = ["smoke"]


@task
def current_phase(pg: PostgresConnection) -> int:
    """The phase recorded in phasegate's state database."""
    with pg.get_connection(pg.state_database) as conn:
        return read_current_phase(conn)


@flow(name="lab-smoke", log_prints=True)
def smoke(prefix: str = "lab", hosts: list[str] | None = None,
          served_model: str = "Llama-2-13b-chat-hf") -> dict[str, Any]:
    """Read every system once and return (and publish) what was seen."""
    hosts = hosts or ["gpu-1", "gpu-2"]
    pg = load_block(PostgresConnection, f"{prefix}-postgres")
    prom = load_block(PrometheusConnection, f"{prefix}-prometheus")
    now = datetime.now(UTC)
    gpu = {h: load_block(GpuHost, f"{prefix}-{h}") for h in hosts}
    first = gpu[hosts[0]]
    seen: dict[str, Any] = {
        "phase": current_phase(pg),
        "app_rows": count_rows(pg),
        "redis": read_memory_config(load_block(RedisConnection, f"{prefix}-redis")),
        "targets_up": query_instant(prom, 'count(up == 1)').value,
        "gpu_util_7d_points": len(query_range(prom, "avg(DCGM_FI_DEV_GPU_UTIL)",
                                              now - timedelta(days=7), now,
                                              timedelta(hours=1)).points),
        "gpus": {h: [g.name for g in detect_gpus(b)] for h, b in gpu.items()},
        "vllm_healthy": is_healthy(first.vllm_url),
        "completion": check_completion(first.vllm_url, served_model).text,
        "cloud_run": read_service_settings(load_block(GcpConnection, f"{prefix}-gcp")),
    }
    create_markdown_artifact(key="lab-smoke", markdown=_markdown(seen),
                             description="What the smoke flow saw")
    return seen


def _markdown(seen: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in seen.items())
    return f"# Lab smoke\n\n| what | seen |\n|---|---|\n{rows}\n"
