"""The real Debian exporters, as the lab runs them: each a child process on 127.0.0.1.

prometheus-redis-exporter (1.45), prometheus-postgres-exporter (0.11.1) and
prometheus-node-exporter (1.5.0) read the lab's real Redis, PostgreSQL and this machine's
kernel, exactly as they read production's. Packages: `./dev setup` installs them without
starting their systemd units (the units would bind every interface on the standard ports).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import spawn, stop_pid, wait_port

__all__ = ["NODE_EXPORTER", "POSTGRES_EXPORTER", "REDIS_EXPORTER", "node_exporter_argv",
           "primary_net_device", "start_node_exporter", "start_postgres_exporter",
           "start_redis_exporter"]

REDIS_EXPORTER = "prometheus-redis-exporter"
POSTGRES_EXPORTER = "prometheus-postgres-exporter"
NODE_EXPORTER = "prometheus-node-exporter"
_READY_S = 15.0
Record = Callable[[int], None]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_SOURCE_NAME", "REDIS_ADDR",
                                                           "REDIS_PASSWORD")}
    env.update(extra)
    return env


def _start(layout: LabLayout, name: str, argv: Sequence[str], env: Mapping[str, str],
           port: int, record: Record | None) -> int:
    """Spawn, hand the PID to `record` at once (so `lab down` can stop it even when it never
    listens), then wait for the port; without `record` a failed start is stopped here."""
    pid = spawn(argv, layout.logs_dir / f"{name}.log", env=env)
    if record is not None:
        record(pid)
    try:
        wait_port(port, _READY_S)
    except TimeoutError:
        if record is None:
            stop_pid(pid)
        raise
    return pid


def start_redis_exporter(layout: LabLayout, port: int, redis_url: str,
                         record: Record | None = None) -> int:
    """redis_exporter against `redis_url`, serving 127.0.0.1:`port`; returns its PID."""
    argv = [REDIS_EXPORTER, f"-web.listen-address=127.0.0.1:{port}"]
    # The address in the environment, as a password would be (REDIS_PASSWORD): never argv.
    return _start(layout, "redis_exporter", argv, _env(REDIS_ADDR=redis_url), port, record)


def start_postgres_exporter(layout: LabLayout, port: int, dsn: str,
                            record: Record | None = None) -> int:
    """postgres_exporter with DATA_SOURCE_NAME=`dsn` (sslmode added if missing)."""
    if "sslmode=" not in dsn:  # the lab's server has no TLS; lib/pq defaults to require
        dsn += ("&" if "?" in dsn else "?") + "sslmode=disable"
    argv = [POSTGRES_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"]
    return _start(layout, "postgres_exporter", argv, _env(DATA_SOURCE_NAME=dsn), port, record)


def node_exporter_argv(port: int) -> list[str]:
    """node_exporter's command line: every default collector but systemd (no D-Bus here: it
    would log an error on every scrape)."""
    return [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--no-collector.systemd"]


def start_node_exporter(layout: LabLayout, port: int, record: Record | None = None) -> int:
    """node_exporter for this machine, serving 127.0.0.1:`port`; returns its PID."""
    return _start(layout, "node_exporter", node_exporter_argv(port), _env(), port, record)


def primary_net_device(proc_net_dev: Path = Path("/proc/net/dev"),
                       default: str = "eth0") -> str:
    """The interface with the most received bytes, loopback and virtual ones aside: the NIC
    node_exporter reports and the backfilled history must name too."""
    try:
        lines = proc_net_dev.read_text().splitlines()[2:]
    except OSError:
        return default
    best, most = default, -1
    for line in lines:
        name, _, rest = line.partition(":")
        name, cols = name.strip(), rest.split()
        if name == "lo" or name.startswith(("ifb", "veth", "docker", "br-")) or not cols:
            continue
        if int(cols[0]) > most:
            best, most = name, int(cols[0])
    return best
