"""The tasks a phase transition changes the world with, against the running lab: backups,
docker over SSH, vLLM readiness, Redis and Cloud Run settings, the state store's lock and
snapshots. Every test leaves the shared session lab exactly as it found it."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from phasegate.blocks.systems import (
    GcpConnection,
    GpuHost,
    PostgresConnection,
    RedisConnection,
    load_block,
)
from phasegate.errors import (
    PreconditionFailed,
    RemoteTimeout,
    SafetyStop,
    SourceUnavailable,
    TransitionLocked,
)
from phasegate.lab import control
from phasegate.lab.blocks import gpu_host_block
from phasegate.lab.procs import free_port
from phasegate.lab.supervisor import phase1_container
from phasegate.policy.containers import Container, Gpus, LiveContainer
from phasegate.policy.outcomes import RunOutcome
from phasegate.policy.plan import load_plan
from phasegate.policy.transition import vllm_containers
from phasegate.tasks.backup import _scratch_database, archive_models, backup_database, sha256_file
from phasegate.tasks.cloud_run import apply_service_settings, read_service_settings
from phasegate.tasks.gpu_hosts import (
    inspect_container,
    remove_container,
    run_container,
    stop_container,
    wait_vllm_ready,
)
from phasegate.tasks.postgres import count_rows, monthly_revenue
from phasegate.tasks.redis_cache import apply_memory_config, read_memory_config
from phasegate.tasks.state_store import (
    close_snapshots,
    create_state_schema,
    interrupted_run,
    latest_snapshot,
    list_approvals,
    mark_slot_released,
    record_approval,
    record_slot_lease,
    save_postmortem,
    save_snapshot,
    transition_lock,
    unreleased_slot_leases,
)

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker

MODEL = "Llama-2-13b-chat-hf"
PHASE1_CLOUD_RUN = {"min_instances": 0, "max_instances": 3, "max_concurrency": 80,
                    "timeout_s": 300.0, "cpu": "1", "memory": "2Gi"}


def _host(lab: dict[str, Any], name: str) -> GpuHost:
    return gpu_host_block(next(h for h in lab["gpu_hosts"] if h["name"] == name))


def _verify_databases(pg: PostgresConnection) -> list[str]:
    with pg.get_connection() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            ("%\\_verify\\_%",)).fetchall()
    return [r[0] for r in rows]


# ----------------------------------------------------------------------------- backups


def test_database_backup_is_restored_counted_and_checksummed(lab: dict[str, Any],
                                                             tmp_path: Path) -> None:
    pg = load_block(PostgresConnection, "lab-postgres")
    backup = backup_database.fn(pg, tmp_path / "backups")
    dump = Path(backup.path)
    assert dump.parent == tmp_path / "backups" and dump.stat().st_size == backup.bytes > 0
    assert sha256_file(dump) == backup.sha256
    assert backup.sha256 == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert backup.row_counts == count_rows.fn(pg) and sum(backup.row_counts.values()) > 0
    assert {"public.users", "public.payments", "public.questions"} <= set(backup.row_counts)
    assert backup.verified_in.startswith("dreamseed_verify_")
    assert _verify_databases(pg) == []


def test_backup_counts_every_table_of_the_dump_any_schema(lab: dict[str, Any],
                                                         tmp_path: Path) -> None:
    pg = load_block(PostgresConnection, "lab-postgres")
    with pg.get_connection() as conn:
        conn.execute("CREATE SCHEMA extra")
        conn.execute("CREATE TABLE extra.ledger AS SELECT g AS n FROM generate_series(1, 7) g")
    try:
        backup = backup_database.fn(pg, tmp_path)
    finally:
        with pg.get_connection() as conn:
            conn.execute("DROP SCHEMA extra CASCADE")
    assert backup.row_counts["extra.ledger"] == 7
    assert "extra.ledger" not in count_rows.fn(pg)


def test_monthly_revenue_runs_the_plans_query(lab: dict[str, Any]) -> None:
    pg = load_block(PostgresConnection, "lab-postgres")
    query = load_plan().business.monthly_revenue_sql
    assert query is not None
    with pg.get_connection() as conn:
        want = conn.execute("SELECT sum(amount_usd) FROM payments WHERE status = 'succeeded'"
                            " AND paid_at >= now() - interval '30 days'").fetchone()[0]  # type: ignore[index]
    assert monthly_revenue.fn(pg, query) == pytest.approx(float(want)) and want > 0
    assert monthly_revenue.fn(pg, None) is None


def test_failed_backup_raises_and_leaves_no_scratch_database(lab: dict[str, Any],
                                                             tmp_path: Path) -> None:
    pg = load_block(PostgresConnection, "lab-postgres")
    missing = pg.model_copy(update={"app_database": "no_such_database"})
    # Unreachable is transient (the task retries once: each attempt writes a new file).
    with pytest.raises(SourceUnavailable, match="does not exist"):
        backup_database.fn(missing, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half-written dump passes for a backup
    # The scratch database is dropped even when verification fails midway.
    with pytest.raises(RuntimeError, match="midway"), _scratch_database(pg, "dreamseed_verify_t"):
        assert _verify_databases(pg) == ["dreamseed_verify_t"]
        raise RuntimeError("midway")
    assert _verify_databases(pg) == []


def test_model_archive_over_ssh_and_the_free_space_refusal(lab: dict[str, Any],
                                                           tmp_path: Path) -> None:
    host = _host(lab, "gpu-1")
    dest = tmp_path / "backup"
    first = archive_models.fn(host, host.models_dir, str(dest), archive_name="models.tar.gz")
    local = dest / "models.tar.gz"
    assert first.path == str(local) and not first.reused
    assert first.bytes == local.stat().st_size > 0 and first.sha256 == sha256_file(local)
    assert first.free_bytes > first.source_bytes > 0
    again = archive_models.fn(host, host.models_dir, str(dest), archive_name="models.tar.gz")
    assert again.reused and again.sha256 == first.sha256
    # An honest shortage: the real df/du numbers against a requirement no disk meets.
    with pytest.raises(PreconditionFailed, match="bytes free"):
        archive_models.fn(host, host.models_dir, str(dest), archive_name="big.tar.gz",
                          required_factor=1e12)
    assert sorted(p.name for p in dest.iterdir()) == ["models.tar.gz"]


# ----------------------------------------------------------------------------- containers


@pytest.fixture
def gpu2(lab: dict[str, Any], lab_layout: Any) -> Iterator[GpuHost]:
    """gpu-2 with two GPUs for the test; back to none (and no test containers) after."""
    before = len(control.read_gpus(lab_layout, "gpu-2"))
    control.set_gpu_count(lab_layout, "gpu-2", 2)
    host = _host(lab, "gpu-2")
    try:
        yield host
    finally:
        for name in ("phasegate-test-vllm",):
            remove_container.fn(host, name)
        control.set_gpu_count(lab_layout, "gpu-2", before)


def test_the_labs_phase1_container_reads_back_as_the_plan_lays_it_out(
        lab: dict[str, Any]) -> None:
    host = _host(lab, "gpu-1")
    live = inspect_container(host, "vllm-server")  # a real task run (retry predicate and all)
    planned = vllm_containers(load_plan(), 1, {"gpu-1": host.vllm_port})[0]
    # `lab up` starts it through the same model a transition uses: identical, `--ipc host`
    # and `-v /models:/models` included (whichever of the two created it last).
    assert phase1_container("gpu-1", host.vllm_port) == planned
    assert live == LiveContainer(planned, running=True)
    assert (planned.gpus, planned.ipc, planned.restart) == (Gpus.of(0), "host", "always")


def _test_container(port: int, devices: tuple[int, ...], tp: int) -> Container:
    """The phase-1 container under another name, on other GPUs and port, with TP `tp`."""
    base = phase1_container("gpu-2", port)
    args = list(base.args)
    args[args.index("--tensor-parallel-size") + 1] = str(tp)
    return Container("gpu-2", "phasegate-test-vllm", base.image, tuple(args),
                     Gpus.of(*devices), port)


def test_container_lifecycle_is_idempotent_over_ssh(gpu2: GpuHost) -> None:
    port, name = free_port(), "phasegate-test-vllm"
    assert inspect_container.fn(gpu2, name) is None
    tp2 = _test_container(port, (0, 1), 2)
    started = run_container.fn(gpu2, tp2)
    assert started == {"name": name, "action": "started", "replaced": None}
    # What docker (the lab's shim, its own parser) started reads back as the model asked.
    assert inspect_container.fn(gpu2, name) == LiveContainer(tp2, running=True)
    ready = wait_vllm_ready.fn(f"http://127.0.0.1:{port}", MODEL, timeout_s=30, interval_s=0.2)
    assert ready["completion"]["text"] and ready["polls"] >= 1

    assert run_container.fn(gpu2, tp2)["action"] == "unchanged"
    tp1 = _test_container(port, (0,), 1)
    replaced = run_container.fn(gpu2, tp1)
    assert (replaced["action"], replaced["replaced"]) == ("replaced", "differs in args, gpus")
    assert inspect_container.fn(gpu2, name) == LiveContainer(tp1, running=True)

    assert stop_container.fn(gpu2, name)["action"] == "stopped"
    assert stop_container.fn(gpu2, name)["action"] == "already-stopped"
    assert inspect_container.fn(gpu2, name) == LiveContainer(tp1, running=False)
    assert run_container.fn(gpu2, tp1)["replaced"] == "was stopped"

    assert remove_container.fn(gpu2, name)["action"] == "removed"
    assert remove_container.fn(gpu2, name)["action"] == "absent"
    assert stop_container.fn(gpu2, name)["action"] == "absent"
    assert inspect_container.fn(gpu2, name) is None


def test_wait_vllm_ready_succeeds_and_times_out_with_the_last_status(
        lab: dict[str, Any], lab_layout: Any) -> None:
    url = lab["vllm"]["url"]
    assert wait_vllm_ready.fn(url, MODEL, timeout_s=10, interval_s=0.2)["polls"] == 1
    before = control.read_faults(lab_layout)
    control.set_fault(lab_layout, "vllm", "never-healthy")
    try:
        started = time.monotonic()
        with pytest.raises(RemoteTimeout, match="last /health status 503"):
            wait_vllm_ready.fn(url, MODEL, timeout_s=1.0, interval_s=0.2)
        assert time.monotonic() - started < 3
    finally:
        control.write_json_atomic(lab_layout.faults_file, before)
    assert wait_vllm_ready.fn(url, MODEL, timeout_s=10, interval_s=0.2)["completion"]


# ----------------------------------------------------------------------------- Redis, Cloud Run


def test_redis_memory_config_is_applied_verified_and_idempotent(lab: dict[str, Any]) -> None:
    rc = load_block(RedisConnection, "lab-redis")
    original = read_memory_config.fn(rc)
    try:
        first = apply_memory_config.fn(rc, 6 * 1024**3, "allkeys-lfu")
        assert first["changed"] == ["maxmemory", "maxmemory_policy"]
        assert first["before"]["maxmemory"] == original["maxmemory"]
        raw = redis.Redis.from_url(lab["redis"]["url"], decode_responses=True)
        cfg = raw.config_get("maxmemory*")
        assert (cfg["maxmemory"], cfg["maxmemory-policy"]) == (str(6 * 1024**3), "allkeys-lfu")
        second = apply_memory_config.fn(rc, 6 * 1024**3, "allkeys-lfu")
        assert second["changed"] == [] and second["after"] == first["after"]
        with pytest.raises(PreconditionFailed, match="refused"):
            apply_memory_config.fn(rc, 6 * 1024**3, "keep-everything")
    finally:
        apply_memory_config.fn(rc, original["maxmemory"], original["maxmemory_policy"])
    assert read_memory_config.fn(rc)["maxmemory"] == original["maxmemory"]


def _fields(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in PHASE1_CLOUD_RUN}


def test_cloud_run_settings_are_applied_read_back_and_idempotent(lab: dict[str, Any]) -> None:
    gcp = load_block(GcpConnection, "lab-gcp")
    original = _fields(read_service_settings.fn(gcp))
    assert original == PHASE1_CLOUD_RUN
    target = {"min_instances": 1, "max_instances": 10, "max_concurrency": 100,
              "timeout_s": 600, "cpu": "2", "memory": "4Gi"}
    first: dict[str, Any] | None = None
    try:
        first = apply_service_settings.fn(gcp, target)
        assert sorted(first["changed"]) == sorted(target)
        assert first["mask"] == ["template.containers", "template.max_instance_request_concurrency",
                                 "template.scaling.max_instance_count",
                                 "template.scaling.min_instance_count", "template.timeout"]
        assert _fields(first["after"]) == {**target, "timeout_s": 600.0}
        second = apply_service_settings.fn(gcp, target)
        assert second["changed"] == [] and second["mask"] == []
        assert second["after"]["generation"] == first["after"]["generation"]
        with pytest.raises(PreconditionFailed, match="refused"):  # 400: over 32Gi
            apply_service_settings.fn(gcp, {"memory": "64Gi", "cpu": "8"})
    finally:
        # min_instances 0 is the proto3 case: absent from the body, cleared by the mask.
        # `before` (with its etag and generation) is accepted as is: that is the undo step.
        restored = apply_service_settings.fn(gcp, first["before"] if first else original)
    assert _fields(restored["after"]) == PHASE1_CLOUD_RUN


def test_vllm_urls_route_the_api_once_the_rollout_is_serving(lab: dict[str, Any],
                                                             lab_layout: Any) -> None:
    """`vllm_urls` is the API container's VLLM_BASE_URLS; the lab's API follows the serving
    revision, so a route to a dead server fails its AI feedback until it is routed back."""
    import httpx

    gcp = load_block(GcpConnection, "lab-gcp")
    original = read_service_settings.fn(gcp)["vllm_urls"]
    assert original == [lab["vllm"]["url"]]
    nowhere = f"http://127.0.0.1:{free_port()}"
    feedback = f"{lab['api']['url']}/v1/feedback"
    body = {"question_id": 1, "user_answer": "56"}
    try:
        out = apply_service_settings.fn(gcp, {"vllm_urls": [nowhere]})
        assert out["changed"] == ["vllm_urls"] and out["mask"] == ["template.containers"]
        assert out["after"]["vllm_urls"] == [nowhere]
        assert _fields(out["after"]) == PHASE1_CLOUD_RUN  # nothing else moved
        serving = json.loads(lab_layout.cloud_run_serving_file.read_text())
        assert [r["env"]["VLLM_BASE_URLS"] for r in serving.values()] == [nowhere]
        assert httpx.post(feedback, json=body, timeout=10).status_code == 502
    finally:
        apply_service_settings.fn(gcp, {"vllm_urls": original})
    assert httpx.post(feedback, json=body, timeout=10).status_code == 200


# ----------------------------------------------------------------------------- state store


def test_transition_lock_refuses_a_second_holder(lab: dict[str, Any]) -> None:
    dsn = lab["postgres"]["state_dsn"]
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        with transition_lock(first):
            with pytest.raises(TransitionLocked, match="another phase transition holds"), \
                    transition_lock(second):
                pass
            # A concurrent attempt from another thread is refused the same way.
            seen: list[BaseException] = []

            def attempt() -> None:
                try:
                    with psycopg.connect(dsn) as conn, transition_lock(conn):
                        pass
                except TransitionLocked as exc:
                    seen.append(exc)
            worker = threading.Thread(target=attempt)
            worker.start()
            worker.join(10)
            assert len(seen) == 1
        with pytest.raises(ValueError, match="boom"), transition_lock(first):
            raise ValueError("boom")
        with transition_lock(second):  # released on exit, also after the error
            pass


def test_an_open_snapshot_is_an_interrupted_run_until_closed(lab: dict[str, Any]) -> None:
    """A run that saved its snapshot and never ended is found (newest first); closing it, or
    an outcome, hides it. Phase 97 keeps real runs' rows out of the way."""
    from phasegate.flows.snapshot import _take_over

    dead, older = f"test-{uuid.uuid4()}", f"test-{uuid.uuid4()}"
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        create_state_schema(conn)
        assert interrupted_run(conn, 97) is None
        save_snapshot(conn, older, 97, "redis", {"value": 1}, to_phase=98)
        for component in ("containers", "cloud_run", "redis"):
            save_snapshot(conn, dead, 97, component, {"value": component}, to_phase=98)
        found = interrupted_run(conn, 97)
        assert found is not None and (found.flow_run_id, found.to_phase) == (dead, 98)
        assert sorted(found.payloads) == ["cloud_run", "containers", "redis"]
        # A rerun towards another phase must not adopt it: refused before touching anything.
        with pytest.raises(SafetyStop, match=r"phase 97 -> 98\).*rollback deployment"):
            _take_over(None, found, 96)  # type: ignore[arg-type]
        assert close_snapshots(conn, dead, RunOutcome.RESUMED, "by test") == 3
        assert close_snapshots(conn, dead, RunOutcome.RESUMED, "again") == 0
        assert interrupted_run(conn, 97).flow_run_id == older  # type: ignore[union-attr]
        close_snapshots(conn, older, RunOutcome.ROLLED_BACK)
        assert conn.execute("SELECT DISTINCT outcome, outcome_detail FROM snapshots"
                            " WHERE flow_run_id = %s", (dead,)).fetchall() == [
            ("resumed", "by test")]
        with pytest.raises(psycopg.errors.CheckViolation):  # the database knows the enum too
            conn.execute("UPDATE snapshots SET outcome = 'success' WHERE flow_run_id = %s",
                         (older,))
        conn.rollback()
        assert interrupted_run(conn, 97) is None
        conn.execute("DELETE FROM snapshots WHERE phase = 97")
        conn.commit()


def test_slot_leases_are_listed_until_released(lab: dict[str, Any]) -> None:
    lease, run_id = str(uuid.uuid4()), f"test-{uuid.uuid4()}"
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        create_state_schema(conn)
        record_slot_lease(conn, lease, run_id)
        record_slot_lease(conn, lease, run_id)  # idempotent
        assert (lease, run_id) in unreleased_slot_leases(conn)
        mark_slot_released(conn, lease, "test")
        assert (lease, run_id) not in unreleased_slot_leases(conn)
        conn.execute("DELETE FROM slot_leases WHERE lease_id = %s", (lease,))
        conn.commit()


def test_snapshots_approvals_and_postmortems_round_trip(lab: dict[str, Any]) -> None:
    run_id = f"test-{uuid.uuid4()}"
    payload = {"name": "vllm-server", "gpus": "all", "args": ["--model", "/models/x"]}
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        create_state_schema(conn)
        assert latest_snapshot(conn, f"vllm:{run_id}") is None
        save_snapshot(conn, run_id, 1, f"vllm:{run_id}", {"old": True})
        sid = save_snapshot(conn, run_id, 1, f"vllm:{run_id}", payload)
        snap = latest_snapshot(conn, f"vllm:{run_id}", flow_run_id=run_id)
        assert snap is not None and (snap.id, snap.phase, snap.payload) == (sid, 1, payload)
        assert latest_snapshot(conn, f"vllm:{run_id}", flow_run_id="other") is None
        record_approval(conn, run_id, "CTO", "Kim", True, "ok")
        record_approval(conn, run_id, "CFO", "Lee", False, "too soon")
        assert [(a["role"], a["approved"]) for a in list_approvals(conn, run_id)] == \
            [("CTO", True), ("CFO", False)]
        pid = save_postmortem(conn, run_id, 1, 2, RunOutcome.ROLLED_BACK, "# x",
                              {"reason": "p95"})
        row = conn.execute("SELECT outcome, facts FROM postmortems WHERE id = %s",
                           (pid,)).fetchone()
        assert row is not None and (row[0], row[1]) == ("rolled-back", {"reason": "p95"})
        for table in ("snapshots", "approvals", "postmortems"):  # leave no test rows behind
            conn.execute(sql.SQL("DELETE FROM {} WHERE flow_run_id = %s").format(
                sql.Identifier(table)), (run_id,))
        conn.commit()
