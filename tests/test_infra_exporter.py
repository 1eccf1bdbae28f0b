"""lab.infra_exporter: real Redis/PostgreSQL/network readings under the standard exporter names."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import _services as svc  # tests/ has no __init__.py: pytest puts tests/ itself on sys.path
import psycopg
import pytest
import redis

from phasegate.lab.infra_exporter import GIB, PG_MOUNTPOINT, set_disk
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, stop_pid, wait_for
from phasegate.policy.metrics import is_known_metric

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class World:
    """The exporter and the servers it reads."""

    layout: LabLayout
    url: str
    redis: redis.Redis
    pg: svc.Postgres


def _start_exporter(layout: LabLayout, redis_url: str, pg_dsn: str) -> tuple[int, str]:
    port = free_port()
    pid = svc.start_module("phasegate.lab.infra_exporter", [
        "--port", str(port), "--lab-dir", str(layout.root), "--redis-url", redis_url,
        "--pg-dsn", pg_dsn], layout.logs_dir / f"infra-{port}.log", port=port)
    return pid, f"http://127.0.0.1:{port}/metrics"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("lab")
    layout = LabLayout(root)
    layout.ensure()
    with svc.postgres_server() as pg, svc.redis_server(root) as rd:
        svc.create_app_db(pg)
        pid, url = _start_exporter(layout, rd.url, pg.dsn())
        client = redis.Redis(port=rd.port)
        try:
            yield World(layout, url, client, pg)
        finally:
            client.close()
            stop_pid(pid)


def scrape(url: str) -> Samples:
    status, body = svc.http_get(url)
    assert status == 200
    return svc.parse_metrics(body.decode())


def value(url: str, name: str, **labels: str) -> float | None:
    return svc.metric(scrape(url), name, **labels)


def test_names_are_the_catalog_names(world: World) -> None:
    samples = scrape(world.url)
    names = {n for n, _ in samples}
    assert all(is_known_metric(n) for n in names), names
    assert svc.metric(samples, "redis_up") == 1 and svc.metric(samples, "pg_up") == 1
    datnames = {dict(lbl)["datname"] for n, lbl in samples if n == "pg_database_size_bytes"}
    assert datnames == {"postgres", "dreamseed"}
    assert svc.metric(samples, "node_network_receive_bytes_total", device="lo") is not None


def test_redis_memory_and_maxmemory_follow_real_changes(world: World) -> None:
    assert value(world.url, "redis_memory_max_bytes") == 0
    used = value(world.url, "redis_memory_used_bytes") or 0
    world.redis.set("big", b"x" * 2_000_000)
    assert (value(world.url, "redis_memory_used_bytes") or 0) > used + 1_500_000
    world.redis.config_set("maxmemory", "100mb")
    try:
        assert value(world.url, "redis_memory_max_bytes") == 100 * 1024 * 1024
    finally:
        world.redis.config_set("maxmemory", "0")
        world.redis.delete("big")


def test_redis_counters(world: World) -> None:
    world.redis.set("k", "v")
    before = scrape(world.url)
    world.redis.get("k")
    world.redis.get("missing-key")
    after = scrape(world.url)
    for name in ("redis_keyspace_hits_total", "redis_keyspace_misses_total"):
        assert (svc.metric(after, name) or 0) == (svc.metric(before, name) or 0) + 1
    assert (svc.metric(after, "redis_commands_processed_total") or 0) > \
        (svc.metric(before, "redis_commands_processed_total") or 0)
    assert (svc.metric(after, "redis_connected_clients") or 0) >= 2


def test_pg_stats_follow_real_writes(world: World) -> None:
    commits = value(world.url, "pg_stat_database_xact_commit", datname="dreamseed") or 0
    backends = value(world.url, "pg_stat_database_numbackends", datname="dreamseed") or 0
    with psycopg.connect(world.pg.dsn("dreamseed"), autocommit=True) as conn:
        for _ in range(3):
            conn.execute("INSERT INTO questions(subject, body) VALUES ('math', 'new')")
        assert value(world.url, "pg_stat_database_numbackends", datname="dreamseed") \
            == backends + 1
    # a busy backend flushes its statistics at most once a second (or when it exits)
    wait_for(lambda: (value(world.url, "pg_stat_database_xact_commit",
                            datname="dreamseed") or 0) >= commits + 3,
             timeout=5, interval=0.2, what="xact_commit to grow")


def test_simulated_db_volume(world: World) -> None:
    samples = scrape(world.url)
    db_bytes = sum(v for (n, _), v in samples.items() if n == "pg_database_size_bytes")
    size = svc.metric(samples, "node_filesystem_size_bytes", mountpoint=PG_MOUNTPOINT)
    avail = svc.metric(samples, "node_filesystem_avail_bytes", mountpoint=PG_MOUNTPOINT)
    assert size == 100 * GIB
    assert avail == pytest.approx(size - 40 * GIB - db_bytes, abs=1_000_000)
    set_disk(world.layout, base_used_gib=75)
    try:
        avail = value(world.url, "node_filesystem_avail_bytes", mountpoint=PG_MOUNTPOINT)
        assert avail is not None and 1 - avail / size > 0.75
    finally:
        set_disk(world.layout, base_used_gib=40)
    with pytest.raises(ValueError):
        set_disk(world.layout, base_used_gib=200)


def test_network_counters_are_real(world: World) -> None:
    before = value(world.url, "node_network_transmit_bytes_total", device="lo") or 0
    assert (value(world.url, "node_network_transmit_bytes_total", device="lo") or 0) > before


def test_sources_down_export_up_zero_and_nothing_else(tmp_path: Path) -> None:
    layout = LabLayout(tmp_path)
    layout.ensure()
    with svc.postgres_server() as pg, svc.redis_server(tmp_path) as rd:
        pid, url = _start_exporter(layout, rd.url, pg.dsn())
        try:
            assert value(url, "pg_up") == 1 and value(url, "redis_up") == 1
            stop_pid(pg.pid, signal.SIGINT)
            stop_pid(rd.pid)
            samples = scrape(url)
            assert svc.metric(samples, "pg_up") == 0 and svc.metric(samples, "redis_up") == 0
            names = {n for n, _ in samples}
            assert not {n for n in names if n.startswith(("pg_stat", "pg_database",
                                                          "redis_memory", "node_filesystem"))}
        finally:
            stop_pid(pid)
