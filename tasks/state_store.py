"""phasegate's own state and audit store (the `phasegate` database).

The current phase is read from here, never assumed; every step, approval and verdict is
appended to `audit_log`.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

__all__ = ["SCHEMA_SQL", "append_audit", "create_state_schema", "last_trigger_state",
           "read_current_phase", "save_forecast", "save_trigger_evaluation"]

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS phase_state (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),   -- exactly one row
    phase       int NOT NULL CHECK (phase BETWEEN 1 AND 99),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL
);
INSERT INTO phase_state (phase, updated_by) VALUES (1, 'initial') ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    flow_run_id text,
    actor       text NOT NULL,
    action      text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_run ON audit_log (flow_run_id, at);

CREATE TABLE IF NOT EXISTS trigger_evaluations (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    flow_run_id text,
    from_phase  int NOT NULL,
    to_phase    int NOT NULL,
    due         boolean NOT NULL,
    report      jsonb NOT NULL,     -- the whole evaluation: every condition with its evidence
    state       jsonb NOT NULL      -- alert state carried to the next scheduled run
);
CREATE INDEX IF NOT EXISTS trigger_evaluations_at ON trigger_evaluations (to_phase, at DESC);

CREATE TABLE IF NOT EXISTS forecasts (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    flow_run_id text,
    result      jsonb NOT NULL
);

CREATE TABLE IF NOT EXISTS snapshots (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    flow_run_id text NOT NULL,
    phase       int NOT NULL,
    component   text NOT NULL,
    payload     jsonb NOT NULL
);
"""


def create_state_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the state tables if missing (idempotent); the first phase is 1."""
    with conn.transaction():
        conn.execute(SCHEMA_SQL)


def read_current_phase(conn: psycopg.Connection[Any]) -> int:
    """The phase the system is in, as recorded by the last successful transition."""
    row = conn.execute("SELECT phase FROM phase_state").fetchone()
    if row is None:
        raise LookupError("phase_state is empty: run create_state_schema first")
    return int(row[0])


def append_audit(conn: psycopg.Connection[Any], actor: str, action: str,
                 detail: dict[str, Any] | None = None, flow_run_id: str | None = None) -> int:
    """Append one audit record; returns its id."""
    row = conn.execute(
        "INSERT INTO audit_log (flow_run_id, actor, action, detail) VALUES (%s, %s, %s, %s)"
        " RETURNING id", (flow_run_id, actor, action, Jsonb(detail or {}))).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def save_trigger_evaluation(conn: psycopg.Connection[Any], from_phase: int, to_phase: int,
                            due: bool, report: dict[str, Any], state: dict[str, Any],
                            flow_run_id: str | None = None) -> int:
    """Store one trigger evaluation with the alert state for the next run; returns its id."""
    row = conn.execute(
        "INSERT INTO trigger_evaluations (flow_run_id, from_phase, to_phase, due, report, state)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (flow_run_id, from_phase, to_phase, due, Jsonb(report), Jsonb(state))).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def last_trigger_state(conn: psycopg.Connection[Any], to_phase: int) -> dict[str, Any] | None:
    """The alert state saved by the latest evaluation of the transition to `to_phase`."""
    row = conn.execute("SELECT state FROM trigger_evaluations WHERE to_phase = %s"
                       " ORDER BY at DESC, id DESC LIMIT 1", (to_phase,)).fetchone()
    return None if row is None else dict(row[0])


def save_forecast(conn: psycopg.Connection[Any], result: dict[str, Any],
                  flow_run_id: str | None = None) -> int:
    """Store one capacity forecast (JSON); returns its id."""
    row = conn.execute("INSERT INTO forecasts (flow_run_id, result) VALUES (%s, %s) RETURNING id",
                       (flow_run_id, Jsonb(result))).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])
