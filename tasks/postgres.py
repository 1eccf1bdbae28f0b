"""PostgreSQL: read-only checks on the app database (backups come with the transition flow)."""

from __future__ import annotations

from datetime import date, datetime

import psycopg
from psycopg import sql

from phasegate.blocks.systems import PostgresConnection
from phasegate.errors import SourceUnavailable
from phasegate.tasks.retrying import retried

__all__ = ["MAIN_TABLES", "count_rows", "count_sql_rows", "monthly_revenue", "server_version",
           "sql_day_rows"]

MAIN_TABLES = ("users", "daily_active_users", "subscriptions", "payments", "feedback",
               "nps_responses")


@retried
def count_rows(pg: PostgresConnection, tables: tuple[str, ...] = MAIN_TABLES) -> dict[str, int]:
    """Row count of each table of the app database."""
    try:
        with pg.get_connection() as conn:
            return {t: int(conn.execute(  # type: ignore[index]
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0])
                for t in tables}
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(f"PostgreSQL {pg.host}:{pg.port}: {exc}") from exc


@retried
def sql_day_rows(pg: PostgresConnection, query: str, start: datetime, end: datetime,
                 tz: str) -> list[tuple[date, float | None]]:
    """Run one of the plan's SQL conditions: rows (local day, value) for [start, end).

    The query takes the named parameters start, end (timestamptz) and tz, and runs in a
    read-only transaction: a condition can never change the business database."""
    try:
        with pg.get_connection() as conn:
            conn.read_only = True
            rows = conn.execute(query, {"start": start, "end": end, "tz": tz}).fetchall()
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(f"PostgreSQL {pg.host}:{pg.port}: {exc}") from exc
    return [(r[0], None if r[1] is None else float(r[1])) for r in rows]


@retried
def monthly_revenue(pg: PostgresConnection) -> float | None:
    """Succeeded payments of the last 30 days (USD), the seed's "monthly revenue"."""
    try:
        with pg.get_connection() as conn:
            row = conn.execute("SELECT sum(amount_usd) FROM payments WHERE status = 'succeeded'"
                               " AND paid_at >= now() - interval '30 days'").fetchone()
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(f"PostgreSQL {pg.host}:{pg.port}: {exc}") from exc
    return None if row is None or row[0] is None else float(row[0])


# ---------------------------------------------------------------- preflight probes
# Plain functions (no task, no retry): the preflight wants the first answer, within its deadline.


def server_version(pg: PostgresConnection, database: str) -> str:
    """`server_version` of the server, connecting to `database`; raises SourceUnavailable."""
    try:
        with pg.get_connection(database) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        raise SourceUnavailable(f"PostgreSQL {pg.host}:{pg.port}/{database}: "
                                f"{str(exc).strip()}") from exc
    return str(row[0]) if row else "?"


def count_sql_rows(pg: PostgresConnection, query: str, start: datetime, end: datetime,
                   tz: str, timeout_s: float) -> int:
    """How many rows one of the plan's SQL conditions returns for [start, end): read-only and
    cut off by `statement_timeout`, so a probe never loads the business database for long.
    Raises SourceUnavailable with the server's first line (a missing table, a wrong column)."""
    try:
        with pg.get_connection() as conn:
            conn.read_only = True
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                    sql.Literal(f"{int(timeout_s * 1000)}ms")))
                rows = conn.execute(query, {"start": start, "end": end, "tz": tz}).fetchall()
    except psycopg.Error as exc:
        raise SourceUnavailable(str(exc).strip().splitlines()[0]) from exc
    return len(rows)
