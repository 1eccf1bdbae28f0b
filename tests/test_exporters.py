"""lab.exporters: the real Debian exporters against real Redis and PostgreSQL, as the lab runs
them, exporting the names the plan's queries read (and postgres_exporter's datname="" row)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import _services as svc  # tests/ has no __init__.py: pytest puts tests/ itself on sys.path
import psycopg
import pytest
import redis

from phasegate.lab import exporters
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, stop_pid, wait_for

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in (exporters.REDIS_EXPORTER, exporters.POSTGRES_EXPORTER,
                                      exporters.NODE_EXPORTER)),
    reason="the Debian exporters are not installed (./dev setup installs them)")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class World:
    """Redis, PostgreSQL and the three exporters (metrics URLs by exporter)."""

    redis: redis.Redis
    pg: svc.Postgres
    urls: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("lab")
    layout = LabLayout(root)
    layout.ensure()
    with svc.postgres_server() as pg, svc.redis_server(root) as rd:
        svc.create_app_db(pg)
        ports = {name: free_port() for name in ("redis", "postgres", "node")}
        pids = [exporters.start_redis_exporter(layout, ports["redis"], rd.url),
                exporters.start_postgres_exporter(layout, ports["postgres"], pg.dsn()),
                exporters.start_node_exporter(layout, ports["node"])]
        client = redis.Redis(port=rd.port)
        try:
            yield World(client, pg, {k: f"http://127.0.0.1:{p}/metrics"
                                     for k, p in ports.items()})
        finally:
            client.close()
            for pid in pids:
                stop_pid(pid)


def scrape(url: str) -> Samples:
    status, body = svc.http_get(url)
    assert status == 200
    return svc.parse_metrics(body.decode())


def find(samples: Samples, name: str, **labels: str) -> list[float]:
    """Values of every series `name` whose labels include `labels`."""
    return [v for (n, lbl), v in samples.items()
            if n == name and labels.items() <= dict(lbl).items()]


def test_exporters_bind_loopback_only(world: World) -> None:
    assert all(url.startswith("http://127.0.0.1:") for url in world.urls.values())
    listening = Path("/proc/net/tcp").read_text()
    for url in world.urls.values():
        port = f":{int(url.rsplit(':', 1)[1].split('/')[0]):04X} "
        rows = [r for r in listening.splitlines() if port in r.split()[1] + " "]
        assert rows and all(r.split()[1].startswith("0100007F") for r in rows), url


def test_redis_exporter_follows_real_memory_and_maxmemory(world: World) -> None:
    assert find(scrape(world.urls["redis"]), "redis_up") == [1.0]
    used = find(scrape(world.urls["redis"]), "redis_memory_used_bytes")[0]
    world.redis.set("big", b"x" * 2_000_000)
    world.redis.config_set("maxmemory", "100mb")
    try:
        after = scrape(world.urls["redis"])
        assert find(after, "redis_memory_used_bytes")[0] > used + 1_500_000
        assert find(after, "redis_memory_max_bytes") == [100 * 1024 * 1024]
    finally:
        world.redis.config_set("maxmemory", "0")
        world.redis.delete("big")


def test_postgres_exporter_counts_real_commits_per_database(world: World) -> None:
    def commits() -> float:
        return sum(find(scrape(world.urls["postgres"]), "pg_stat_database_xact_commit",
                        datname="dreamseed"))

    before = commits()
    with psycopg.connect(world.pg.dsn("dreamseed"), autocommit=True) as conn:
        for _ in range(3):
            conn.execute("INSERT INTO questions(subject, body) VALUES ('math', 'new')")
    # a backend flushes its statistics at most once a second (or when it exits)
    wait_for(lambda: commits() >= before + 3, timeout=10, interval=0.3, what="xact_commit")
    samples = scrape(world.urls["postgres"])
    assert find(samples, "pg_up") == [1.0]
    assert find(samples, "pg_database_size_bytes", datname="dreamseed")[0] > 1_000_000


def test_postgres_exporter_has_a_shared_row_without_datname(world: World) -> None:
    """The trap the plan's queries avoid by naming the database: the shared-catalog row."""
    rows = [dict(lbl) for n, lbl in scrape(world.urls["postgres"])
            if n == "pg_stat_database_xact_commit"]
    assert any(r.get("datid") == "0" and not r.get("datname") for r in rows), rows


def test_node_exporter_reports_filesystems_and_network(world: World) -> None:
    samples = scrape(world.urls["node"])
    assert find(samples, "node_filesystem_avail_bytes", mountpoint="/")[0] > 0
    assert find(samples, "node_filesystem_size_bytes", mountpoint="/")[0] > 0
    devices = {dict(lbl)["device"] for n, lbl in samples
               if n == "node_network_receive_bytes_total"}
    assert exporters.primary_net_device() in devices and "lo" not in devices


def test_primary_net_device_skips_loopback_and_virtual(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.write_text("h1\nh2\n    lo: 900 0\n docker0: 800 0\n  ens4: 10 0\n  eth1: 20 0\n")
    assert exporters.primary_net_device(dev) == "eth1"
    assert exporters.primary_net_device(tmp_path / "missing") == "eth0"
