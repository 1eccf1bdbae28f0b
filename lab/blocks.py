"""Blocks that point at the lab, saved by `lab up` when the lab's Prefect server runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

from phasegate.blocks.systems import (
    GcpConnection,
    GpuHost,
    HttpEndpoint,
    PostgresConnection,
    PrometheusConnection,
    RedisConnection,
    ReportStore,
)
from phasegate.tasks.transitions import TRANSITION_LIMIT

__all__ = ["LAB_BLOCK_NAME", "lab_blocks", "save_lab_blocks"]

LAB_BLOCK_NAME = "lab"


def lab_blocks(state: dict[str, Any]) -> dict[str, Block]:
    """Blocks for every system of the lab described by `state` (lab.json), by block name."""
    pg, gcp = state["postgres"], state["gcp"]
    redis_url = state["redis"]["url"]  # redis://127.0.0.1:PORT/0
    r_host, r_port = redis_url.split("//", 1)[1].split("/", 1)[0].split(":")
    blocks: dict[str, Block] = {
        LAB_BLOCK_NAME + "-postgres": PostgresConnection(
            host=pg["host"], port=pg["port"], user=pg["user"], sslmode="disable"),
        LAB_BLOCK_NAME + "-redis": RedisConnection(host=r_host, port=int(r_port)),
        LAB_BLOCK_NAME + "-prometheus": PrometheusConnection(url=state["prometheus"]["url"]),
        LAB_BLOCK_NAME + "-api": HttpEndpoint(url=state["api"]["url"], health_path="/healthz"),
        LAB_BLOCK_NAME + "-alertmanager": HttpEndpoint(url=state["alertmanager"]["url"],
                                                       health_path="/-/healthy"),
        LAB_BLOCK_NAME + "-reports": ReportStore(reports_dir=str(Path(state["dir"]) / "reports"),
                                                 backups_dir=str(Path(state["dir"]) / "backups")),
        LAB_BLOCK_NAME + "-gcp": GcpConnection(
            project=gcp["project"], region=gcp["region"], zone=gcp["zone"],
            cloud_run_service=gcp["cloud_run_service"].rsplit("/", 1)[1],
            api_endpoint=gcp["endpoint"]),
        # Slack's webhook URL cannot be pointed elsewhere (apprise fixes the host), so the lab
        # uses a generic webhook with Slack's payload, sent to the lab's receiver.
        LAB_BLOCK_NAME + "-slack": CustomWebhookNotificationBlock(
            name="lab-slack", url=state["receiver"]["url"] + "/slack/lab",
            json_data={"text": "{{subject}}\n{{body}}"}),
    }
    for h in state["gpu_hosts"]:
        blocks[f"{LAB_BLOCK_NAME}-{h['name']}"] = gpu_host_block(h)
    return blocks


def gpu_host_block(h: dict[str, Any]) -> GpuHost:
    """A GpuHost block from one `gpu_hosts[]` entry of lab.json."""
    port = int(h["port"])
    lines = [line for line in Path(h["known_hosts"]).read_text().splitlines()
             if line.startswith(f"[127.0.0.1]:{port} ")]
    return GpuHost(name=h["name"], host=h["host"], port=port, user=h["user"],
                   private_key=SecretStr(Path(h["key_path"]).read_text()),
                   known_hosts="\n".join(lines),
                   vllm_port=int(h["vllm_port"]), models_dir=h["models_dir"])


def save_lab_blocks(state: dict[str, Any]) -> list[str]:
    """Save the lab's blocks to the lab's Prefect server, and make sure the global concurrency
    limit that allows one phase transition at a time exists; returns the block names saved."""
    api_url = state["prefect"]["api_url"]
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        names = []
        for name, block in lab_blocks(state).items():
            block.save(name, overwrite=True)
            names.append(name)
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(TRANSITION_LIMIT, 1)
    return names
