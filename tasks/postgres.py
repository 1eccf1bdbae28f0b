"""PostgreSQL: read-only checks on the app database (backups come with the transition flow)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import sql

from phasegate.blocks.systems import PostgresConnection
from phasegate.errors import SourceUnavailable
from phasegate.tasks.retrying import retried

__all__ = ["TABLES_SQL", "app_tables", "count_rows", "count_sql_rows", "count_tables",
           "monthly_revenue", "server_version",
           "sql_day_rows"]

# Every ordinary table of the database's own schemas (what pg_dump dumps), not the catalogs;
# partitions are tables of their own, so their parents (relkind 'p') are not counted twice.
TABLES_SQL = (
    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind = 'r' AND n.nspname <> 'information_schema'"
    " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2"
)


def app_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(schema, table) of every table of the connected database (discovered, not listed)."""
    return [(str(r[0]), str(r[1])) for r in conn.execute(TABLES_SQL).fetchall()]


def count_tables(conn: psycopg.Connection[Any],
                 tables: Sequence[tuple[str, str]]) -> dict[str, int]:
    """{"schema.table": row count} of `tables`, in the connection's current snapshot."""
    counts = {}
    for schema, table in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, table))).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


@retried
def count_rows(pg: PostgresConnection) -> dict[str, int]:
    """Row count of every table of the app database ({"schema.table": rows})."""
    try:
        with pg.get_connection() as conn:
            return count_tables(conn, app_tables(conn))
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
def monthly_revenue(pg: PostgresConnection, query: str | None) -> float | None:
    """The seed's "monthly revenue" (USD): the plan's `business.monthly_revenue_sql`, one row
    and one number, run read-only on the app database. None without a query or a value."""
    if query is None:
        return None
    try:
        with pg.get_connection() as conn:
            conn.read_only = True
            row = conn.execute(query).fetchone()
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
