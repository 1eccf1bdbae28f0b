"""Backups taken before a phase transition changes anything: the app database (pg_dump -Fc,
verified by a real restore) and the GPU host's model directory (tar over SSH).

A backup that cannot be verified is a failed backup: the transition stops with nothing changed.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from phasegate.blocks.systems import GpuHost, PostgresConnection
from phasegate.errors import (
    PreconditionFailed,
    RemoteTimeout,
    SourceUnavailable,
    VerificationFailed,
)
from phasegate.tasks.gpu_hosts import run_remote
from phasegate.tasks.postgres import app_tables, count_tables
from phasegate.tasks.retrying import transient_retries

__all__ = ["DatabaseBackup", "ModelArchive", "archive_models", "backup_database",
           "check_writable"]


@dataclass(frozen=True)
class DatabaseBackup:
    """A verified dump of the app database."""

    path: str
    bytes: int
    sha256: str
    database: str
    row_counts: dict[str, int]  # {"schema.table": rows} of every table of the dump
    verified_in: str  # the scratch database the dump was restored into (dropped since)
    seconds: float


@dataclass(frozen=True)
class ModelArchive:
    """A tar.gz of a GPU host's model directory, on that host."""

    host: str
    path: str
    bytes: int
    sha256: str
    source_bytes: int
    free_bytes: int
    reused: bool  # the archive already existed (a rerun): it was checksummed, not rewritten


def _utc_stamp() -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime())


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pg_env(pg: PostgresConnection) -> dict[str, str]:
    """The child's environment: the password only here (never argv, never logs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    env.update(PGSSLMODE=pg.sslmode, PGCONNECT_TIMEOUT=str(pg.connect_timeout_s))
    if pg.password is not None:
        env["PGPASSWORD"] = pg.password.get_secret_value()
    return env


def _pg_tool(pg: PostgresConnection, argv: Sequence[str], timeout_s: float) -> None:
    """Run pg_dump / pg_restore against `pg`; VerificationFailed with its stderr on failure."""
    full = [argv[0], "--no-password", "-h", pg.host, "-p", str(pg.port), "-U", pg.user,
            *argv[1:]]
    try:
        out = subprocess.run(full, env=_pg_env(pg), capture_output=True, text=True,
                             timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RemoteTimeout(f"{argv[0]} timed out after {timeout_s:g}s") from exc
    if out.returncode != 0:
        raise VerificationFailed(f"{argv[0]} exited {out.returncode}: {out.stderr.strip()[:500]}")


def _count_all(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Row counts of every table the database holds (discovered from pg_catalog)."""
    return count_tables(conn, app_tables(conn))


def _dump(pg: PostgresConnection, path: Path, timeout_s: float) -> dict[str, int]:
    """pg_dump -Fc of the app database into `path`; returns the row counts of every table in
    the very snapshot the dump saw (an exported snapshot), so live writes cannot fake a
    mismatch and a table created meanwhile is in both or in neither."""
    try:
        conn = pg.get_connection()
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(f"PostgreSQL {pg.host}:{pg.port}/{pg.app_database}: "
                                f"{exc}") from exc
    with conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
        counts = _count_all(conn)
        _pg_tool(pg, ["pg_dump", "-Fc", "--snapshot", snapshot, "-f", str(path),
                      "-d", pg.app_database], timeout_s)
        conn.rollback()
    return counts


@contextmanager
def _scratch_database(pg: PostgresConnection, name: str) -> Iterator[PostgresConnection]:
    """Create database `name`, yield a Block pointing at it, drop it on exit (also on error)."""
    with pg.get_connection() as admin:
        admin.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
            sql.Identifier(name)))
        try:
            yield pg.model_copy(update={"app_database": name})
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


# Above its own pg_dump/restore budget (timeout_s, 30 min by default).
@transient_retries(1, [3], timeout_s=2 * 3600.0)
def backup_database(pg: PostgresConnection, dest_dir: Path,
                    timeout_s: float = 1800.0) -> DatabaseBackup:
    """Dump the app database (pg_dump -Fc) into `dest_dir`, checksum it, restore it into a
    scratch database `<app>_verify_<ts>` and compare the row counts of every table (the
    source's tables in the dump's snapshot against the restored database's: a table missing on
    either side is a mismatch too); the scratch database is always dropped.

    Raises VerificationFailed when a tool fails or the counts differ; SourceUnavailable when
    the database cannot be reached (each attempt writes a new file: a retry is safe)."""
    started, ts = time.monotonic(), _utc_stamp()
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{pg.app_database}-{ts}.dump"
    try:
        source = _dump(pg, path, timeout_s)
    except BaseException:
        path.unlink(missing_ok=True)  # a partial dump must never pass for a backup
        raise
    digest = sha256_file(path)
    scratch = f"{pg.app_database}_verify_{ts}"[:63]
    with _scratch_database(pg, scratch) as target:
        _pg_tool(target, ["pg_restore", "--no-owner", "--no-acl", "--exit-on-error",
                          "-d", scratch, str(path)], timeout_s)
        with target.get_connection() as conn:
            restored = _count_all(conn)
    if restored != source:
        raise VerificationFailed(f"backup {path}: restored row counts differ from the "
                                 f"source's: {_differences(source, restored)}")
    return DatabaseBackup(str(path), path.stat().st_size, digest, pg.app_database, source,
                          scratch, round(time.monotonic() - started, 3))


def _differences(source: dict[str, int], restored: dict[str, int]) -> str:
    """'public.t: 5 -> 4, public.u: 3 -> missing' for the tables whose counts differ."""
    diff = [f"{t}: {source.get(t, 'missing')} -> {restored.get(t, 'missing')}"
            for t in sorted(source.keys() | restored.keys()) if source.get(t) != restored.get(t)]
    return ", ".join(diff)


def _remote_int(host: GpuHost, argv: list[str], column: int) -> int:
    """One integer column of the last output line of a remote command (du, df, stat)."""
    line = run_remote(host, argv, timeout_s=600).stdout.strip().splitlines()[-1]
    return int(line.split()[column])


# Above its own tar budget (timeout_s, 1 h by default).
@transient_retries(1, [3], timeout_s=2 * 3600.0)
def archive_models(host: GpuHost, models_dir: str, dest: str, archive_name: str | None = None,
                   required_factor: float = 1.1, timeout_s: float = 3600.0) -> ModelArchive:
    """Archive `models_dir` on `host` as `dest`/`archive_name` (default
    `<dir>-<utc ts>.tar.gz`) after checking that `dest` has `required_factor` x the
    directory's size free (`df -P` against `du -sb`); then sha256sum it.

    tar writes a temporary name that is renamed when complete, so an archive that already
    exists is whole: a rerun checksums it instead of writing it again. Raises
    PreconditionFailed when space is short, RemoteCommandFailed when a command fails."""
    src = models_dir.rstrip("/") or "/"
    name = archive_name or f"{posixpath.basename(src)}-{_utc_stamp()}.tar.gz"
    path = posixpath.join(dest, name)
    run_remote(host, ["mkdir", "-p", dest], timeout_s=60)
    source_bytes = _remote_int(host, ["du", "-sb", src], 0)
    free = _remote_int(host, ["df", "-P", "-k", dest], 3) * 1024
    reused = run_remote(host, ["test", "-f", path], timeout_s=60, check=False).exit_status == 0
    if not reused:
        need = int(source_bytes * required_factor)
        if free < need:
            raise PreconditionFailed(f"{host.name}: {dest} has {free} bytes free; archiving "
                                     f"{src} ({source_bytes} bytes) needs {need} "
                                     f"(x{required_factor:g})")
        tmp = path + ".partial"
        run_remote(host, ["tar", "-czf", tmp, "-C", posixpath.dirname(src) or "/",
                          posixpath.basename(src)], timeout_s=timeout_s)
        run_remote(host, ["mv", "-f", tmp, path], timeout_s=60)
    digest = run_remote(host, ["sha256sum", path], timeout_s=timeout_s).stdout.split()[0]
    size = _remote_int(host, ["stat", "-c", "%s", path], 0)
    return ModelArchive(host.name, path, size, digest, source_bytes, free, reused)


def check_writable(directory: Path) -> str:
    """The preflight's check of a directory a run writes to (reports, database dumps): it can
    be created and written; returns its free space. Raises OSError otherwise."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".phasegate-write-check-{os.getpid()}"
    probe.write_bytes(b"ok")
    probe.unlink()
    free_gb = shutil.disk_usage(directory).free / 1e9
    return f"{directory}: writable, {free_gb:.1f} GB free"
