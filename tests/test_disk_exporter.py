"""lab.disk_exporter: the lab-only PostgreSQL data volume under node_exporter's names."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass

import _services as svc  # tests/ has no __init__.py: pytest puts tests/ itself on sys.path
import psycopg
import pytest

from phasegate.lab.disk_exporter import GIB, PG_DEVICE, PG_FSTYPE, PG_MOUNTPOINT, set_disk
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, stop_pid
from phasegate.policy.metrics import is_known_metric

LABELS = {"device": PG_DEVICE, "fstype": PG_FSTYPE, "mountpoint": PG_MOUNTPOINT}


@dataclass
class World:
    """The exporter and the server it reads."""

    layout: LabLayout
    url: str
    pg: svc.Postgres
    pid: int


def _start(layout: LabLayout, pg_dsn: str) -> tuple[int, str]:
    port = free_port()
    pid = svc.start_module("phasegate.lab.disk_exporter", [
        "--port", str(port), "--lab-dir", str(layout.root), "--pg-dsn", pg_dsn],
        layout.logs_dir / f"disk-{port}.log", port=port)
    return pid, f"http://127.0.0.1:{port}/metrics"


@pytest.fixture()
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    layout = LabLayout(tmp_path_factory.mktemp("lab"))
    layout.ensure()
    with svc.postgres_server() as pg:
        svc.create_app_db(pg)
        pid, url = _start(layout, pg.dsn())
        try:
            yield World(layout, url, pg, pid)
        finally:
            stop_pid(pid)


def scrape(url: str) -> dict[str, float]:
    status, body = svc.http_get(url)
    assert status == 200
    samples = svc.parse_metrics(body.decode())
    assert all(is_known_metric(n) and dict(lbl) == LABELS for n, lbl in samples), samples
    return {n: v for (n, _), v in samples.items()}


def _db_bytes(pg: svc.Postgres) -> int:
    with psycopg.connect(pg.dsn()) as conn:
        return int(conn.execute("SELECT sum(pg_database_size(datname)) FROM pg_database"
                                " WHERE datallowconn").fetchone()[0])  # type: ignore[index]


def test_volume_is_base_plus_real_database_sizes_and_fills_on_demand(world: World) -> None:
    got = scrape(world.url)
    size = got["node_filesystem_size_bytes"]
    assert size == 100 * GIB
    assert got["node_filesystem_avail_bytes"] == pytest.approx(
        size - 40 * GIB - _db_bytes(world.pg), abs=1_000_000)
    set_disk(world.layout, base_used_gib=75)
    assert 1 - scrape(world.url)["node_filesystem_avail_bytes"] / size > 0.75
    with pytest.raises(ValueError):
        set_disk(world.layout, base_used_gib=200)


def test_database_down_exports_no_filesystem_series(world: World) -> None:
    assert scrape(world.url)
    stop_pid(world.pg.pid, signal.SIGINT)
    assert scrape(world.url) == {}
