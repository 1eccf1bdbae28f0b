"""Seed a real throwaway PostgreSQL from the world and check it agrees with the world."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import psycopg
import pytest
from _pg import PG_BIN, pg_server  # tests/ has no __init__.py: pytest puts tests/ on sys.path

from phasegate.lab.seed_app import QUESTIONS, create_app_schema, seed_app_db
from phasegate.lab.world import TZ, World

NOW = datetime(2025, 11, 20, 15, 0, tzinfo=TZ)

pytestmark = pytest.mark.skipif(not (PG_BIN / "postgres").exists(), reason="no PostgreSQL 15")


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(NOW)


@pytest.fixture(scope="module")
def seeded(world: World) -> Iterator[tuple[psycopg.Connection, dict[str, int], float]]:
    with pg_server() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        create_app_schema(conn)
        t = time.perf_counter()
        counts = seed_app_db(conn, world)
        yield conn, counts, time.perf_counter() - t


def _daily(conn: psycopg.Connection, sql: str, world: World) -> list[int]:
    days = world.daily["day"].tolist()
    rows = conn.execute(sql, {"start": days[0], "end": days[-1], "tz": "Asia/Seoul"}).fetchall()
    return [int(r[1]) for r in rows]


def test_row_counts_match_world(seeded, world: World) -> None:
    conn, counts, elapsed = seeded
    print(f"seed: {elapsed:.2f}s {counts}")
    assert elapsed < 20
    assert counts["users"] == len(world.users) == int(world.daily["users_total"].iloc[-1])
    assert counts["user_sessions"] == len(world.sessions)
    assert counts["daily_active_users"] == world.days
    assert counts["questions"] == len(QUESTIONS) >= 50
    for table, n in counts.items():
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (n,)


def test_cumulative_users_per_local_day(seeded, world: World) -> None:
    conn = seeded[0]
    got = _daily(conn, """
        SELECT t::date, (SELECT count(*) FROM users
                         WHERE created_at < ((t::date + 1)::timestamp AT TIME ZONE %(tz)s))
        FROM generate_series(%(start)s::date, %(end)s::date, '1 day') AS g(t)
        ORDER BY t""", world)
    assert got == world.daily["users_total"].tolist()


def test_dau_rollup_and_sessions(seeded, world: World) -> None:
    conn = seeded[0]
    rollup = _daily(conn, "SELECT day, active_users FROM daily_active_users "
                          "WHERE day BETWEEN %(start)s AND %(end)s ORDER BY day", world)
    assert rollup == world.daily["dau"].tolist()
    distinct = _daily(conn, """
        SELECT (started_at AT TIME ZONE %(tz)s)::date AS d, count(DISTINCT user_id)
        FROM user_sessions GROUP BY d HAVING (started_at AT TIME ZONE %(tz)s)::date
        BETWEEN %(start)s AND %(end)s ORDER BY d""", world)
    assert distinct == world.daily["dau"].tolist()


def test_business_tables(seeded, world: World) -> None:
    conn = seeded[0]
    per_month = conn.execute("SELECT month, sum(amount_usd) FROM infra_costs GROUP BY month")
    assert all(float(total) == 100.0 for _, total in per_month.fetchall())
    peak = conn.execute("""
        SELECT count(*) FROM feedback WHERE category = 'connection_failure'
        AND extract(hour FROM created_at AT TIME ZONE 'Asia/Seoul') BETWEEN 19 AND 22""")
    assert peak.fetchone()[0] > 0
    later = conn.execute("SELECT count(*) FROM payments p JOIN subscriptions s "
                         "ON s.id = p.subscription_id WHERE p.paid_at < s.started_at")
    assert later.fetchone() == (0,)
    latest = conn.execute("SELECT max(created_at) FROM users").fetchone()[0]
    assert latest < NOW


def test_reseed_is_idempotent_and_sequences_advance(seeded, world: World) -> None:
    conn, counts, _ = seeded
    digest = "SELECT md5(string_agg(id || ':' || created_at::text, ',' ORDER BY id)) FROM users"
    before = conn.execute(digest).fetchone()
    assert seed_app_db(conn, world) == counts
    assert conn.execute(digest).fetchone() == before
    with conn.transaction(force_rollback=True):
        new = conn.execute("INSERT INTO users (created_at) VALUES (now()) RETURNING id")
        assert new.fetchone() == (counts["users"] + 1,)
