"""phasegate's own state and audit store (the `phasegate` database).

The current phase is read from here, never assumed; every step, approval and verdict is
appended to `audit_log`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from phasegate.errors import TransitionLocked
from phasegate.policy.outcomes import RunOutcome

__all__ = ["SCHEMA_SQL", "TRANSITION_LOCK_KEY", "Snapshot", "append_audit",
           "create_state_schema", "last_trigger_report", "last_trigger_state",
           "Interrupted", "close_snapshots", "last_forecast", "interrupted_run", "latest_snapshot",
           "mark_slot_released", "record_slot_lease", "unreleased_slot_leases",
           "list_approvals",
           "read_current_phase", "record_approval", "save_forecast", "save_postmortem",
           "save_snapshot", "save_trigger_evaluation", "set_phase", "lock_held",
           "transition_lock"]

# pg_try_advisory_lock key of "a phase transition runs" (any fixed bigint; this one is
# int.from_bytes(b"phasegat") so that it cannot collide with small ad-hoc keys).
TRANSITION_LOCK_KEY = 0x7068617365676174

_OUTCOMES = ", ".join(f"'{o.value}'" for o in RunOutcome)

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
CREATE INDEX IF NOT EXISTS snapshots_component ON snapshots (component, at DESC);
-- to_phase: where the run was going. outcome: NULL while its run has not ended (a run whose
-- process died leaves it NULL: the next run from the same phase resumes from this snapshot),
-- then a policy.outcomes.RunOutcome value; outcome_detail says more (who resumed, problems).
ALTER TABLE snapshots ADD COLUMN IF NOT EXISTS to_phase int;
ALTER TABLE snapshots ADD COLUMN IF NOT EXISTS outcome text;
ALTER TABLE snapshots ADD COLUMN IF NOT EXISTS outcome_detail text;

-- The Prefect concurrency-slot leases transitions took: a run that dies keeps its slot until
-- the lease expires; the next run (holding the transition lock, so sure the holder is dead)
-- releases it by id instead of waiting.
CREATE TABLE IF NOT EXISTS slot_leases (
    lease_id    text PRIMARY KEY,
    flow_run_id text NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    released_by text
);

CREATE TABLE IF NOT EXISTS approvals (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    flow_run_id text NOT NULL,
    role        text NOT NULL,
    name        text NOT NULL,
    approved    boolean NOT NULL,
    comment     text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS approvals_run ON approvals (flow_run_id, at);

CREATE TABLE IF NOT EXISTS postmortems (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    flow_run_id text,
    from_phase  int NOT NULL,
    to_phase    int NOT NULL,
    outcome     text NOT NULL,      -- a policy.outcomes.RunOutcome value
    markdown    text NOT NULL,
    facts       jsonb NOT NULL      -- policy.postmortem.PostmortemFacts.to_dict()
);

-- Outcomes are RunOutcome values. NOT VALID: rows written before the enum are left as they
-- are; every new row is checked.
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'snapshots_outcome_known') THEN
    ALTER TABLE snapshots ADD CONSTRAINT snapshots_outcome_known
      CHECK (outcome IS NULL OR outcome IN (%(outcomes)s)) NOT VALID;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'postmortems_outcome_known') THEN
    ALTER TABLE postmortems ADD CONSTRAINT postmortems_outcome_known
      CHECK (outcome IN (%(outcomes)s)) NOT VALID;
  END IF;
END $$;
""".replace("%(outcomes)s", _OUTCOMES)


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


def last_trigger_report(conn: psycopg.Connection[Any], to_phase: int) -> dict[str, Any] | None:
    """The report of the latest evaluation of the transition to `to_phase` (its evidence)."""
    row = conn.execute("SELECT report FROM trigger_evaluations WHERE to_phase = %s"
                       " ORDER BY at DESC, id DESC LIMIT 1", (to_phase,)).fetchone()
    return None if row is None else dict(row[0])


def last_trigger_state(conn: psycopg.Connection[Any], to_phase: int) -> dict[str, Any] | None:
    """The alert state saved by the latest evaluation of the transition to `to_phase`."""
    row = conn.execute("SELECT state FROM trigger_evaluations WHERE to_phase = %s"
                       " ORDER BY at DESC, id DESC LIMIT 1", (to_phase,)).fetchone()
    return None if row is None else dict(row[0])


def last_forecast(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """The newest stored capacity forecast result, or None."""
    row = conn.execute("SELECT result FROM forecasts ORDER BY at DESC, id DESC LIMIT 1").fetchone()
    conn.commit()
    return None if row is None else dict(row[0])


def save_forecast(conn: psycopg.Connection[Any], result: dict[str, Any],
                  flow_run_id: str | None = None) -> int:
    """Store one capacity forecast (JSON); returns its id."""
    row = conn.execute("INSERT INTO forecasts (flow_run_id, result) VALUES (%s, %s) RETURNING id",
                       (flow_run_id, Jsonb(result))).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


@contextmanager
def transition_lock(conn: psycopg.Connection[Any],
                    key: int = TRANSITION_LOCK_KEY) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock `key` for the duration of the block.

    Non-blocking: raises TransitionLocked when another session holds it. `conn` should be
    dedicated to the lock: the lock lives as long as its session, so a crashed flow releases
    it with its connection. Released on exit, also when the block raises."""
    if conn.info.server_version >= 140000:
        # The lock's session sits idle for the whole run: a server-wide idle timeout must
        # not end it (lock_held would notice, but the run would have to roll back).
        conn.execute("SET idle_session_timeout = 0")
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    conn.commit()  # a session lock outlives the transaction; do not sit idle in one
    if not (got and got[0]):
        raise TransitionLocked("another phase transition holds the lock")
    try:
        yield
    finally:
        if not (conn.closed or conn.broken):  # a gone session released the lock already
            if conn.info.transaction_status == TransactionStatus.INERROR:
                conn.rollback()
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            conn.commit()


def lock_held(conn: psycopg.Connection[Any], key: int = TRANSITION_LOCK_KEY) -> bool:
    """Whether `conn`'s session still holds advisory lock `key`: False when the session is
    gone (dropped connection, failover, terminated backend) or the lock was released."""
    if conn.closed or conn.broken:
        return False
    try:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid = pg_backend_pid() AND objsubid = 1"
            " AND ((classid::bigint << 32) | objid::bigint) = %s)", (key,)).fetchone()
        conn.commit()
    except psycopg.Error:
        return False
    return bool(row and row[0])


def record_slot_lease(conn: psycopg.Connection[Any], lease_id: str, flow_run_id: str) -> None:
    """Remember that `flow_run_id` holds the transition slot under `lease_id`."""
    conn.execute("INSERT INTO slot_leases (lease_id, flow_run_id) VALUES (%s, %s)"
                 " ON CONFLICT DO NOTHING", (lease_id, flow_run_id))
    conn.commit()


def mark_slot_released(conn: psycopg.Connection[Any], lease_id: str, by: str) -> None:
    """Record that the slot of `lease_id` was given back (`by`: its own run, or who freed it)."""
    conn.execute("UPDATE slot_leases SET released_at = now(), released_by = %s"
                 " WHERE lease_id = %s AND released_at IS NULL", (by, lease_id))
    conn.commit()


def unreleased_slot_leases(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(lease_id, flow_run_id) of slots taken and never given back, newest first. Under the
    transition lock, each belongs to a run whose process died."""
    rows = conn.execute("SELECT lease_id, flow_run_id FROM slot_leases WHERE released_at IS NULL"
                        " ORDER BY taken_at DESC").fetchall()
    conn.commit()
    return [(r[0], r[1]) for r in rows]


@dataclass(frozen=True)
class Snapshot:
    """The live state of one component, saved before a transition changed it."""

    id: int
    at: datetime
    flow_run_id: str
    phase: int
    component: str
    payload: dict[str, Any]


def save_snapshot(conn: psycopg.Connection[Any], flow_run_id: str, phase: int, component: str,
                  payload: dict[str, Any], to_phase: int | None = None) -> int:
    """Store the state of `component` (e.g. "containers", "cloud_run", "redis") as it was in
    `phase`, before the run towards `to_phase` changed it; its id."""
    row = conn.execute(
        "INSERT INTO snapshots (flow_run_id, phase, component, payload, to_phase)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (flow_run_id, phase, component, Jsonb(payload), to_phase)).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def close_snapshots(conn: psycopg.Connection[Any], flow_run_id: str, outcome: RunOutcome,
                    detail: str = "") -> int:
    """Record how the run that took these snapshots ended (`detail`: who resumed or restored
    it, what could not be restored); how many rows it closed. Closed snapshots are never
    resumed from."""
    cur = conn.execute("UPDATE snapshots SET outcome = %s, outcome_detail = %s"
                       " WHERE flow_run_id = %s AND outcome IS NULL",
                       (RunOutcome(outcome).value, detail, flow_run_id))
    conn.commit()
    return cur.rowcount


@dataclass(frozen=True)
class Interrupted:
    """A transition that saved its snapshot and then never ended (its process died)."""

    flow_run_id: str
    phase: int
    to_phase: int | None
    at: datetime
    payloads: dict[str, dict[str, Any]]


def interrupted_run(conn: psycopg.Connection[Any], phase: int) -> Interrupted | None:
    """The newest run from `phase` whose snapshots are still open, with every component it
    saved; None when every run from `phase` ended. Call it under the transition lock: then no
    live run can own open snapshots."""
    row = conn.execute("SELECT flow_run_id FROM snapshots WHERE phase = %s AND outcome IS NULL"
                       " ORDER BY at DESC, id DESC LIMIT 1", (phase,)).fetchone()
    if row is None:
        conn.commit()
        return None
    rows = conn.execute("SELECT component, payload, to_phase, at FROM snapshots"
                        " WHERE flow_run_id = %s AND outcome IS NULL ORDER BY id",
                        (row[0],)).fetchall()
    conn.commit()
    return Interrupted(row[0], phase, rows[0][2], rows[0][3],
                       {r[0]: dict(r[1]) for r in rows})


def latest_snapshot(conn: psycopg.Connection[Any], component: str,
                    flow_run_id: str | None = None) -> Snapshot | None:
    """The newest snapshot of `component` (of one flow run when `flow_run_id` is given)."""
    row = conn.execute(
        "SELECT id, at, flow_run_id, phase, component, payload FROM snapshots"
        " WHERE component = %s AND (%s::text IS NULL OR flow_run_id = %s)"
        " ORDER BY at DESC, id DESC LIMIT 1", (component, flow_run_id, flow_run_id)).fetchone()
    conn.commit()
    return None if row is None else Snapshot(int(row[0]), row[1], row[2], int(row[3]), row[4],
                                             dict(row[5]))


def set_phase(conn: psycopg.Connection[Any], phase: int, by: str) -> None:
    """Record that the system is now in `phase` (`by`: who or which flow run said so)."""
    conn.execute("UPDATE phase_state SET phase = %s, updated_at = now(), updated_by = %s",
                 (phase, by))
    conn.commit()


def record_approval(conn: psycopg.Connection[Any], flow_run_id: str, role: str, name: str,
                    approved: bool, comment: str = "") -> int:
    """Store one approval answer (a rejection or expiry is approved=False); its id."""
    row = conn.execute(
        "INSERT INTO approvals (flow_run_id, role, name, approved, comment)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (flow_run_id, role, name, approved, comment)).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def list_approvals(conn: psycopg.Connection[Any], flow_run_id: str) -> list[dict[str, Any]]:
    """The approval answers of one flow run, oldest first."""
    rows = conn.execute("SELECT at, role, name, approved, comment FROM approvals"
                        " WHERE flow_run_id = %s ORDER BY at, id", (flow_run_id,)).fetchall()
    conn.commit()
    return [{"at": r[0], "role": r[1], "name": r[2], "approved": r[3], "comment": r[4]}
            for r in rows]


def save_postmortem(conn: psycopg.Connection[Any], flow_run_id: str | None, from_phase: int,
                    to_phase: int, outcome: RunOutcome, markdown: str,
                    facts: dict[str, Any]) -> int:
    """Store one postmortem (or incident report) with the facts it was rendered from."""
    row = conn.execute(
        "INSERT INTO postmortems (flow_run_id, from_phase, to_phase, outcome, markdown, facts)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (flow_run_id, from_phase, to_phase, RunOutcome(outcome).value, markdown,
         Jsonb(facts))).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])
