"""Redis: read and (idempotently) apply the cache server's memory settings."""

from __future__ import annotations

from typing import Any

import redis

from phasegate.blocks.systems import RedisConnection
from phasegate.errors import (
    PreconditionFailed,
    RemoteTimeout,
    SourceUnavailable,
    VerificationFailed,
)
from phasegate.tasks.retrying import retried

__all__ = ["apply_memory_config", "ping", "read_memory_config"]


@retried
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


def _memory_settings(client: redis.Redis) -> dict[str, Any]:
    cfg = client.config_get("maxmemory*")
    return {"maxmemory": int(cfg.get("maxmemory") or 0),
            "maxmemory_policy": cfg["maxmemory-policy"]}


@retried
def apply_memory_config(rc: RedisConnection, maxmemory_bytes: int,
                        policy: str) -> dict[str, Any]:
    """Make Redis's maxmemory `maxmemory_bytes` and maxmemory-policy `policy`.

    CONFIG GET first and CONFIG SET only what differs (a rerun changes nothing), then CONFIG
    GET again. Returns {before, after, changed}. Raises VerificationFailed when the values do
    not read back, PreconditionFailed when Redis refuses a value, RemoteTimeout when Redis
    cannot be reached (safe to retry: the call is idempotent)."""
    wanted: dict[str, int | str] = {"maxmemory": int(maxmemory_bytes), "maxmemory_policy": policy}
    try:
        client = rc.get_client()
        before = _memory_settings(client)
        changed = [k for k, v in wanted.items() if before[k] != v]
        for key in changed:
            client.config_set(key.replace("_", "-"), wanted[key])
        after = _memory_settings(client)
    except redis.exceptions.ResponseError as exc:
        raise PreconditionFailed(f"Redis {rc.host}:{rc.port} refused CONFIG SET: {exc}") from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise RemoteTimeout(f"Redis {rc.host}:{rc.port}: {exc}") from exc
    if after != wanted:
        raise VerificationFailed(f"Redis {rc.host}:{rc.port}: CONFIG GET reads {after} after "
                                 f"setting {wanted}")
    return {"before": before, "after": after, "changed": changed}


def ping(rc: RedisConnection) -> str:
    """PING, then the version and memory limit, for the preflight (no retry); raises
    SourceUnavailable."""
    try:
        client = rc.get_client()
        client.ping()
        version = client.info("server")["redis_version"]
        maxmemory = int(client.config_get("maxmemory").get("maxmemory") or 0)
    except redis.exceptions.RedisError as exc:
        raise SourceUnavailable(f"Redis {rc.host}:{rc.port}: {exc}") from exc
    return f"Redis {version}, maxmemory {maxmemory} bytes"
