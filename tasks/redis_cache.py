"""Redis: read the cache server's memory settings."""

from __future__ import annotations

from typing import Any

import redis
from prefect import task

from blocks.systems import RedisConnection
from phasegate.errors import SourceUnavailable
from tasks.retrying import only_transient

__all__ = ["read_memory_config"]


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=only_transient)
def read_memory_config(rc: RedisConnection) -> dict[str, Any]:
    """{version, maxmemory (bytes), maxmemory_policy, used_memory (bytes)} via CONFIG GET/INFO."""
    try:
        client = rc.get_client()
        info = client.info("memory")
        server = client.info("server")
        cfg = client.config_get("maxmemory*")
    except redis.exceptions.ConnectionError as exc:
        raise SourceUnavailable(f"Redis {rc.host}:{rc.port}: {exc}") from exc
    return {"version": server["redis_version"], "maxmemory": int(cfg.get("maxmemory") or 0),
            "maxmemory_policy": cfg["maxmemory-policy"], "used_memory": int(info["used_memory"])}
