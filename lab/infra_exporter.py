"""Infra exporter: real Redis, PostgreSQL and network readings under the standard exporter names.

`python -m lab.infra_exporter --port P --lab-dir D --redis-url U --pg-dsn DSN`

One /metrics endpoint stands in for redis_exporter, postgres_exporter and node_exporter. Every
scrape collects afresh with short timeouts. A source that fails exports `redis_up 0` / `pg_up 0`
and none of its other series (no stale or invented values).

The PostgreSQL data volume is simulated (the lab's cluster lives on the host's disk):
`node_filesystem_size_bytes{mountpoint="/var/lib/postgresql"}` is 100 GiB and the used space is a
base of 40 GiB plus the real sum of all database sizes. `<lab>/control/disk.json`
`{"size_gib": 100, "base_used_gib": 40}` changes both (`set_disk`), so a scenario can push the
volume over 70 % full. The network counters are the real ones of one interface (default `lo`)
from /proc/net/dev.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
import uvicorn

from phasegate.lab.control import JsonFile, write_json_atomic
from phasegate.lab.layout import LabLayout

__all__ = ["DISK_DEFAULTS", "PG_MOUNTPOINT", "Exporter", "Sample", "disk_file", "main",
           "render", "set_disk"]

log = logging.getLogger("phasegate.lab.infra_exporter")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

GIB = 1024**3
PG_MOUNTPOINT = "/var/lib/postgresql"
DISK_DEFAULTS = {"size_gib": 100.0, "base_used_gib": 40.0}
TIMEOUT_S = 1.5

# Redis INFO field -> (metric, type, help)
REDIS_FIELDS = {
    "used_memory": ("redis_memory_used_bytes", "gauge", "Redis used_memory"),
    "maxmemory": ("redis_memory_max_bytes", "gauge", "Redis maxmemory (0 = unlimited)"),
    "connected_clients": ("redis_connected_clients", "gauge", "Redis connected_clients"),
    "keyspace_hits": ("redis_keyspace_hits_total", "counter", "Redis keyspace_hits"),
    "keyspace_misses": ("redis_keyspace_misses_total", "counter", "Redis keyspace_misses"),
    "total_commands_processed": ("redis_commands_processed_total", "counter",
                                 "Redis total_commands_processed"),
}
# pg_stat_database column -> (metric, type, help); postgres_exporter's counters have no _total
PG_FIELDS = {
    "xact_commit": ("pg_stat_database_xact_commit", "counter", "Transactions committed"),
    "xact_rollback": ("pg_stat_database_xact_rollback", "counter", "Transactions rolled back"),
    "tup_returned": ("pg_stat_database_tup_returned", "counter", "Rows returned by queries"),
    "numbackends": ("pg_stat_database_numbackends", "gauge", "Backends connected"),
    "size": ("pg_database_size_bytes", "gauge", "Disk space used by the database"),
}
PG_QUERY = (
    "SELECT d.datname, s.xact_commit, s.xact_rollback, s.tup_returned, s.numbackends,"
    " pg_database_size(d.datname) FROM pg_database d"
    " JOIN pg_stat_database s ON s.datid = d.oid WHERE NOT d.datistemplate ORDER BY d.datname"
)


@dataclass
class Sample:
    """One series value: metric name, labels, value (TYPE/HELP come from `meta`)."""

    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


Meta = dict[str, tuple[str, str]]  # metric -> (type, help)


def disk_file(layout: LabLayout) -> Path:
    """control/disk.json: the simulated PostgreSQL volume (size_gib, base_used_gib)."""
    return layout.control_dir / "disk.json"


def set_disk(layout: LabLayout, size_gib: float | None = None,
             base_used_gib: float | None = None) -> None:
    """Change the simulated DB volume; omitted values keep their current setting."""
    current = {**DISK_DEFAULTS, **(JsonFile(disk_file(layout), {}).read() or {})}
    if size_gib is not None:
        current["size_gib"] = float(size_gib)
    if base_used_gib is not None:
        current["base_used_gib"] = float(base_used_gib)
    if current["size_gib"] <= 0 or not 0 <= current["base_used_gib"] <= current["size_gib"]:
        raise ValueError("need size_gib > 0 and 0 <= base_used_gib <= size_gib")
    write_json_atomic(disk_file(layout), current)


def _up_meta(name: str, what: str) -> Meta:
    return {name: ("gauge", f"Whether the last scrape of {what} succeeded")}


def collect_redis(client: redis.Redis) -> tuple[list[Sample], Meta]:
    """redis_up and, when reachable, the INFO readings."""
    meta: Meta = _up_meta("redis_up", "Redis")
    meta.update({m: (t, h) for m, t, h in REDIS_FIELDS.values()})
    try:
        info: dict[str, Any] = client.info()
    except (redis.RedisError, OSError) as exc:
        log.warning("redis scrape failed: %s", exc)
        return [Sample("redis_up", 0.0)], meta
    samples = [Sample("redis_up", 1.0)]
    samples += [Sample(m, float(info.get(k, 0))) for k, (m, _, _) in REDIS_FIELDS.items()]
    return samples, meta


class PgSource:
    """One autocommit connection to PostgreSQL, reopened after any failure."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def rows(self) -> list[tuple[Any, ...]]:
        """pg_stat_database rows of every non-template database; psycopg errors propagate."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True,
                                         connect_timeout=int(TIMEOUT_S + 0.5))
            self._conn.execute(f"SET statement_timeout = {int(TIMEOUT_S * 1000)}")
        try:
            return self._conn.execute(PG_QUERY).fetchall()
        except psycopg.Error:
            self._conn.close()
            raise

    def close(self) -> None:
        """Close the connection if open."""
        if self._conn is not None:
            self._conn.close()


def collect_pg(source: PgSource, disk: dict[str, float]) -> tuple[list[Sample], Meta]:
    """pg_up, per-database stats and the simulated DB volume derived from database sizes."""
    meta: Meta = _up_meta("pg_up", "PostgreSQL")
    meta.update({m: (t, h) for m, t, h in PG_FIELDS.values()})
    meta["node_filesystem_size_bytes"] = ("gauge", "Filesystem size in bytes")
    meta["node_filesystem_avail_bytes"] = ("gauge", "Filesystem space available in bytes")
    try:
        rows = source.rows()
    except (psycopg.Error, OSError) as exc:
        log.warning("postgres scrape failed: %s", exc)
        return [Sample("pg_up", 0.0)], meta
    samples = [Sample("pg_up", 1.0)]
    for datname, *values in rows:
        samples += [Sample(m, float(v), {"datname": datname})
                    for (m, _, _), v in zip(PG_FIELDS.values(), values, strict=True)]
    return samples + _disk_samples(sum(float(r[5]) for r in rows), disk), meta


def _disk_samples(db_bytes: float, disk: dict[str, float]) -> list[Sample]:
    size = disk["size_gib"] * GIB
    avail = max(0.0, size - disk["base_used_gib"] * GIB - db_bytes)
    labels = {"mountpoint": PG_MOUNTPOINT}
    return [Sample("node_filesystem_size_bytes", size, labels),
            Sample("node_filesystem_avail_bytes", avail, labels)]


def collect_network(device: str, label: str,
                    proc_net_dev: Path = Path("/proc/net/dev")) -> tuple[list[Sample], Meta]:
    """Receive/transmit byte counters of `device` (exported as device=`label`)."""
    meta: Meta = {"node_network_receive_bytes_total": ("counter", "Network bytes received"),
                  "node_network_transmit_bytes_total": ("counter", "Network bytes sent")}
    try:
        lines = proc_net_dev.read_text().splitlines()[2:]
    except OSError as exc:
        log.warning("network scrape failed: %s", exc)
        return [], meta
    for line in lines:
        name, _, rest = line.partition(":")
        if name.strip() == device:
            cols = rest.split()
            labels = {"device": label}
            return [Sample("node_network_receive_bytes_total", float(cols[0]), labels),
                    Sample("node_network_transmit_bytes_total", float(cols[8]), labels)], meta
    return [], meta


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = {k: v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
           for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc.items()) + "}"


def render(samples: list[Sample], meta: Meta) -> str:
    """Prometheus text format 0.0.4; TYPE/HELP only for metrics that have samples."""
    out: list[str] = []
    for name, (mtype, help_) in meta.items():
        mine = [s for s in samples if s.name == name]
        if not mine:
            continue
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {mtype}"]
        out += [f"{name}{_labels(s.labels)} {s.value!r}" for s in mine]
    return "\n".join(out) + "\n"


class Exporter:
    """Collects every source on each scrape (in a worker thread; sources are synchronous)."""

    def __init__(self, layout: LabLayout, redis_url: str, pg_dsn: str,
                 net_device: str = "lo", net_label: str | None = None) -> None:
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=TIMEOUT_S,
                                          socket_connect_timeout=TIMEOUT_S)
        self.pg = PgSource(pg_dsn)
        self.disk = JsonFile(disk_file(layout), {})
        self.net_device, self.net_label = net_device, net_label or net_device
        self._lock = threading.Lock()  # one scrape at a time: the sources are not thread-safe

    def scrape(self) -> str:
        """The whole exposition text."""
        with self._lock:
            disk = {**DISK_DEFAULTS, **(self.disk.read() or {})}
            parts = [collect_redis(self.redis), collect_pg(self.pg, disk),
                     collect_network(self.net_device, self.net_label)]
        samples = [s for ss, _ in parts for s in ss]
        meta: Meta = {k: v for _, m in parts for k, v in m.items()}
        return render(samples, meta)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics":
            status, body = 200, (await asyncio.to_thread(self.scrape)).encode()
            ctype = b"text/plain; version=0.0.4; charset=utf-8"
        elif scope["path"] in ("/", "/healthz"):
            status, body, ctype = 200, b"ok", b"text/plain"
        else:
            status, body, ctype = 404, b"not found", b"text/plain"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.infra_exporter",
                                description="Redis/PostgreSQL/node metrics for the lab")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lab-dir", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--pg-dsn", required=True)
    p.add_argument("--net-device", default="lo", help="interface read from /proc/net/dev")
    p.add_argument("--net-label", default=None,
                   help="value of the device label (default: the interface name)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serve /metrics on 127.0.0.1 until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    layout = LabLayout(Path(args.lab_dir).resolve())
    exporter = Exporter(layout, args.redis_url, args.pg_dsn, args.net_device, args.net_label)
    log.info("infra_exporter on 127.0.0.1:%d", args.port)
    try:
        uvicorn.run(exporter, host="127.0.0.1", port=args.port, loop="uvloop",
                    http="httptools", lifespan="off", access_log=False, log_level="warning",
                    timeout_graceful_shutdown=2)
    finally:
        exporter.pg.close()


if __name__ == "__main__":
    main()
