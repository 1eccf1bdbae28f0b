"""Lab-only disk source: the PostgreSQL data volume, which no real exporter here can report.

`python -m lab.disk_exporter --port P --lab-dir D --pg-dsn DSN` (Prometheus job `lab-disk`)

In production node_exporter on the database host reports the data disk
(`node_filesystem_{size,avail}_bytes{mountpoint="/var/lib/postgresql"}`). The lab's cluster
lives in a directory on this machine's root filesystem, and a scenario must be able to fill
the volume on purpose, so this endpoint simulates it under node_exporter's names and labels
(device, fstype, mountpoint): 100 GiB, used = a base of 40 GiB plus the real sum of all
database sizes. `<lab>/control/disk.json` `{"size_gib": 100, "base_used_gib": 40}` changes both
(`set_disk`), so a scenario can push the volume over 70 % full. When PostgreSQL does not answer,
the endpoint exports no filesystem series (no stale or invented values). Everything else
(Redis, PostgreSQL statistics, the network) comes from the real exporters (lab.exporters).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import psycopg
import uvicorn

from phasegate.lab.control import JsonFile, write_json_atomic
from phasegate.lab.layout import LabLayout

__all__ = ["DISK_DEFAULTS", "PG_DEVICE", "PG_FSTYPE", "PG_MOUNTPOINT", "DiskExporter",
           "disk_file", "main", "render_disk", "set_disk"]

log = logging.getLogger("phasegate.lab.disk_exporter")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

GIB = 1024**3
# The labels node_exporter gives a data disk mounted where Debian's PostgreSQL keeps its data.
PG_MOUNTPOINT, PG_DEVICE, PG_FSTYPE = "/var/lib/postgresql", "/dev/sdb", "ext4"
DISK_DEFAULTS = {"size_gib": 100.0, "base_used_gib": 40.0}
TIMEOUT_S = 1.5
_DB_BYTES = "SELECT sum(pg_database_size(datname)) FROM pg_database WHERE datallowconn"
_HELP = {"node_filesystem_size_bytes": "Filesystem size in bytes.",
         "node_filesystem_avail_bytes": "Filesystem space available to non-root users in bytes."}


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


class PgSource:
    """One autocommit connection to PostgreSQL, reopened after any failure."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def database_bytes(self) -> float:
        """The sum of all database sizes; psycopg errors propagate."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True,
                                         connect_timeout=int(TIMEOUT_S + 0.5))
            self._conn.execute(f"SET statement_timeout = {int(TIMEOUT_S * 1000)}")
        try:
            row = self._conn.execute(_DB_BYTES).fetchone()
        except psycopg.Error:
            self._conn.close()
            raise
        return float(row[0] or 0) if row else 0.0

    def close(self) -> None:
        """Close the connection if open."""
        if self._conn is not None:
            self._conn.close()


def render_disk(db_bytes: float | None, disk: dict[str, float]) -> str:
    """Prometheus text format 0.0.4 of the simulated volume; empty when `db_bytes` is None."""
    if db_bytes is None:
        return ""
    size = disk["size_gib"] * GIB
    values = {"node_filesystem_size_bytes": size,
              "node_filesystem_avail_bytes": max(0.0, size - disk["base_used_gib"] * GIB
                                                 - db_bytes)}
    labels = f'{{device="{PG_DEVICE}",fstype="{PG_FSTYPE}",mountpoint="{PG_MOUNTPOINT}"}}'
    out = []
    for name, value in values.items():
        out += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge",
                f"{name}{labels} {value!r}"]
    return "\n".join(out) + "\n"


class DiskExporter:
    """Reads the database sizes on each scrape (in a worker thread; psycopg is synchronous)."""

    def __init__(self, layout: LabLayout, pg_dsn: str) -> None:
        self.pg = PgSource(pg_dsn)
        self.disk = JsonFile(disk_file(layout), {})
        self._lock = threading.Lock()  # one scrape at a time: the connection is not shared

    def scrape(self) -> str:
        """The whole exposition text."""
        with self._lock:
            disk = {**DISK_DEFAULTS, **(self.disk.read() or {})}
            try:
                db_bytes: float | None = self.pg.database_bytes()
            except (psycopg.Error, OSError) as exc:
                log.warning("postgres scrape failed: %s", exc)
                db_bytes = None
        return render_disk(db_bytes, disk)

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
    p = argparse.ArgumentParser(prog="python -m lab.disk_exporter",
                                description="the lab's simulated PostgreSQL data volume")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lab-dir", required=True)
    p.add_argument("--pg-dsn", required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serve /metrics on 127.0.0.1 until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    exporter = DiskExporter(LabLayout(Path(args.lab_dir).resolve()), args.pg_dsn)
    log.info("disk_exporter on 127.0.0.1:%d", args.port)
    try:
        uvicorn.run(exporter, host="127.0.0.1", port=args.port, loop="uvloop",
                    http="httptools", lifespan="off", access_log=False, log_level="warning",
                    timeout_graceful_shutdown=2)
    finally:
        exporter.pg.close()


if __name__ == "__main__":
    main()
