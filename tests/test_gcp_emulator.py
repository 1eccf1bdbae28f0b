"""The Google Cloud REST emulator, driven by the unmodified google-cloud-run / -compute clients.

The emulator runs as a real process on 127.0.0.1 (lab.procs); each test starts from the seeded
state (POST /_lab/reset). Over REST, google.api_core picks the exception class from the HTTP
status alone, so a 400 INVALID_ARGUMENT surfaces as BadRequest and a 409 ABORTED as Conflict.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1, run_v2
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, field_mask_pb2

from phasegate.lab import gcp_cloudrun, gcp_compute
from phasegate.lab.control import clear_faults, set_fault, write_json_atomic
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, spawn, stop_pid, wait_port

PROJECT, REGION, ZONE = "dreamseed-prod", "asia-northeast3", "asia-northeast3-a"
SERVICE = f"projects/{PROJECT}/locations/{REGION}/services/dreamseed-api"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Emu:
    """One running emulator process and clients pointed at it."""

    pid: int
    port: int
    layout: LabLayout

    @property
    def url(self) -> str:
        """Base URL, also the clients' api_endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def run(self) -> run_v2.ServicesClient:
        """Cloud Run v2 client over REST."""
        return run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                     client_options={"api_endpoint": self.url})

    def instances(self) -> compute_v1.InstancesClient:
        """Compute instances client."""
        return compute_v1.InstancesClient(credentials=AnonymousCredentials(),
                                          client_options={"api_endpoint": self.url})

    def zone_ops(self) -> compute_v1.ZoneOperationsClient:
        """Compute zone operations client."""
        return compute_v1.ZoneOperationsClient(credentials=AnonymousCredentials(),
                                               client_options={"api_endpoint": self.url})

    def requests(self) -> list[dict[str, Any]]:
        """The emulator's request log."""
        return list(httpx.get(f"{self.url}/_lab/requests", timeout=5).json()["requests"])


def _start(lab: Path) -> Emu:
    port = free_port()
    argv = [sys.executable, "-m", "phasegate.lab.gcp_emulator", "--port", str(port), "--lab-dir",
            str(lab), "--rollout-delay", "0.3", "--compute-delay", "0.4", "--wait-max", "2"]
    pid = spawn(argv, lab / "logs" / "gcp_emulator.log", cwd=REPO)
    try:
        wait_port(port, timeout=15)
    except TimeoutError:
        stop_pid(pid)
        raise
    return Emu(pid, port, LabLayout(lab))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emu]:
    emu = _start(tmp_path_factory.mktemp("lab"))
    yield emu
    stop_pid(emu.pid)


@pytest.fixture()
def emu(server: Emu) -> Iterator[Emu]:
    clear_faults(server.layout)
    httpx.post(f"{server.url}/_lab/reset", timeout=5).raise_for_status()
    yield server
    clear_faults(server.layout)


def _update(client: run_v2.ServicesClient, svc: run_v2.Service, *paths: str) -> Any:
    mask = field_mask_pb2.FieldMask(paths=list(paths))
    return client.update_service(request=run_v2.UpdateServiceRequest(service=svc,
                                                                     update_mask=mask))


# ---- Cloud Run ---------------------------------------------------------------------------


def test_get_seeded_phase1_service(emu: Emu) -> None:
    svc = emu.run().get_service(name=SERVICE)
    assert svc.template.scaling.min_instance_count == 0
    assert svc.template.scaling.max_instance_count == 3
    assert svc.template.max_instance_request_concurrency == 80
    assert svc.template.timeout.total_seconds() == 300
    assert svc.template.containers[0].image.endswith("/dreamseed-prod/dreamseed/api:1.0.0")
    assert dict(svc.template.containers[0].resources.limits) == {"cpu": "1", "memory": "2Gi"}
    assert svc.generation == 1 and svc.etag and svc.uri.startswith("https://")
    assert svc.latest_ready_revision.endswith("/revisions/dreamseed-api-00001-lab")
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED


def test_update_with_mask_then_result_and_read_back(emu: Emu) -> None:
    client = emu.run()
    svc = client.get_service(name=SERVICE)
    svc.template.scaling.max_instance_count = 8
    svc.template.containers[0].resources.limits["cpu"] = "2"
    svc.template.containers[0].resources.limits["memory"] = "4Gi"
    svc.template.timeout = duration_pb2.Duration(seconds=600)
    svc.template.max_instance_request_concurrency = 40  # not in the mask: must not apply
    op = _update(client, svc, "template.scaling.min_instance_count",
                 "template.scaling.max_instance_count", "template.containers", "template.timeout")
    assert not op.done()
    result = op.result(timeout=15)
    assert result.template.scaling.max_instance_count == 8
    back = client.get_service(name=SERVICE)
    assert back.template.scaling.min_instance_count == 0
    assert back.template.scaling.max_instance_count == 8
    assert dict(back.template.containers[0].resources.limits) == {"cpu": "2", "memory": "4Gi"}
    assert back.template.timeout.total_seconds() == 600
    assert back.template.max_instance_request_concurrency == 80
    assert back.generation == 2 and back.etag != svc.etag and not back.reconciling
    assert back.latest_ready_revision == back.latest_created_revision
    assert "/revisions/dreamseed-api-00002-" in back.latest_ready_revision


def test_serving_env_changes_when_the_rollout_completes(emu: Emu) -> None:
    """serving.json (what the API simulator follows) moves with the ready revision only."""
    def serving() -> dict[str, Any]:
        data = json.loads(emu.layout.cloud_run_serving_file.read_text())
        return dict(data[SERVICE])

    client = emu.run()
    first = serving()
    assert first["env"] == {} and first["revision"].endswith("-00001-lab")
    svc = client.get_service(name=SERVICE)
    svc.template.containers[0].env.append(run_v2.EnvVar(name="VLLM_BASE_URLS",
                                                        value="http://127.0.0.1:1"))
    op = _update(client, svc, "template.containers")
    assert serving() == first  # the old revision serves until the new one is ready
    result = op.result(timeout=15)
    assert serving() == {"revision": result.latest_ready_revision,
                         "env": {"VLLM_BASE_URLS": "http://127.0.0.1:1"}}


def test_masked_absent_zero_resets_to_default(emu: Emu) -> None:
    client = emu.run()
    svc = client.get_service(name=SERVICE)
    svc.template.scaling.min_instance_count = 2
    _update(client, svc, "template.scaling.min_instance_count").result(timeout=15)
    svc = client.get_service(name=SERVICE)
    assert svc.template.scaling.min_instance_count == 2
    svc.template.scaling.min_instance_count = 0
    _update(client, svc, "template.scaling.min_instance_count").result(timeout=15)
    assert client.get_service(name=SERVICE).template.scaling.min_instance_count == 0
    patch = [r for r in emu.requests() if r["method"] == "PATCH"][-1]
    assert "minInstanceCount" not in patch["body"]["template"]["scaling"]  # proto3 drops 0
    assert patch["query"]["updateMask"] == "template.scaling.minInstanceCount"


def test_stale_etag_is_a_conflict(emu: Emu) -> None:
    client = emu.run()
    stale = client.get_service(name=SERVICE)
    fresh = client.get_service(name=SERVICE)
    fresh.template.scaling.max_instance_count = 4
    _update(client, fresh, "template.scaling.max_instance_count").result(timeout=15)
    stale.template.scaling.max_instance_count = 5
    with pytest.raises(gexc.Conflict):
        _update(client, stale, "template.scaling.max_instance_count")


@pytest.mark.parametrize("path", ["template.scaling.nonsense", "templates", "labels.a.b",
                                  "template.containers.image"])
def test_unknown_mask_path_is_invalid_argument(emu: Emu, path: str) -> None:
    client = emu.run()
    svc = client.get_service(name=SERVICE)
    with pytest.raises(gexc.BadRequest) as info:
        _update(client, svc, path)
    assert info.value.code == 400 and "field mask" in info.value.message


def test_v1_annotations_refused(emu: Emu) -> None:
    client = emu.run()
    svc = client.get_service(name=SERVICE)
    svc.template.annotations["autoscaling.knative.dev/maxScale"] = "8"
    with pytest.raises(gexc.BadRequest, match="autoscaling.knative.dev"):
        _update(client, svc, "template.annotations")
    svc = client.get_service(name=SERVICE)
    svc.annotations["run.googleapis.com/ingress"] = "all"
    with pytest.raises(gexc.BadRequest, match="run.googleapis.com"):
        _update(client, svc, "annotations")


def test_min_above_max_and_bad_limits_refused(emu: Emu) -> None:
    client = emu.run()
    svc = client.get_service(name=SERVICE)
    svc.template.scaling.min_instance_count = 5
    with pytest.raises(gexc.BadRequest, match="min_instance_count"):
        _update(client, svc, "template.scaling")
    svc = client.get_service(name=SERVICE)
    svc.template.containers[0].resources.limits["cpu"] = "3"
    with pytest.raises(gexc.BadRequest, match="cpu"):
        _update(client, svc, "template.containers")


def test_not_found(emu: Emu) -> None:
    client = emu.run()
    missing = SERVICE.replace("dreamseed-api", "nope")
    with pytest.raises(gexc.NotFound):
        client.get_service(name=missing)
    with pytest.raises(gexc.NotFound):
        _update(client, run_v2.Service(name=missing), "template")


def test_allow_missing_creates_and_list_pages(emu: Emu) -> None:
    client = emu.run()
    template = client.get_service(name=SERVICE).template
    other = run_v2.Service(name=SERVICE.replace("dreamseed-api", "dreamseed-worker"),
                           template=template)
    req = run_v2.UpdateServiceRequest(service=other, allow_missing=True)
    created = client.update_service(request=req).result(timeout=15)
    assert created.generation == 1
    parent = f"projects/{PROJECT}/locations/{REGION}"
    pager = client.list_services(request=run_v2.ListServicesRequest(parent=parent, page_size=1))
    assert [s.name.rsplit("/", 1)[-1] for s in pager] == ["dreamseed-api", "dreamseed-worker"]
    query = [r["query"] for r in emu.requests() if r["path"].endswith("/services")]
    assert len(query) == 2 and "pageToken" in query[1]


def test_wait_operation(emu: Emu) -> None:
    client = emu.run()
    svc = client.get_service(name=SERVICE)
    svc.template.scaling.max_instance_count = 6
    op = _update(client, svc, "template.scaling.max_instance_count")
    request = operations_pb2.WaitOperationRequest(name=op.operation.name,
                                                  timeout=duration_pb2.Duration(seconds=5))
    done = client.wait_operation(request=request)
    assert done.done and done.response.type_url.endswith("google.cloud.run.v2.Service")


def test_cloudrun_erroring_fault(emu: Emu) -> None:
    client = emu.run()
    svc = client.get_service(name=SERVICE)
    set_fault(emu.layout, "cloudrun", "erroring")
    with pytest.raises(gexc.ServiceUnavailable):
        _update(client, svc, "template.scaling")
    clear_faults(emu.layout)
    assert client.get_service(name=SERVICE).generation == 1


# ---- Compute -----------------------------------------------------------------------------


def _spot_gpu(name: str) -> compute_v1.Instance:
    disk = compute_v1.AttachedDisk(
        boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
            source_image="projects/debian-cloud/global/images/family/debian-12",
            disk_size_gb=200))
    return compute_v1.Instance(
        name=name, machine_type=f"zones/{ZONE}/machineTypes/g2-standard-8",
        guest_accelerators=[compute_v1.AcceleratorConfig(
            accelerator_count=1, accelerator_type=f"zones/{ZONE}/acceleratorTypes/nvidia-l4")],
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT",
                                         instance_termination_action="DELETE",
                                         on_host_maintenance="TERMINATE"),
        labels={"owner": "phasegate", "phase": "p3"}, disks=[disk],
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")])


def _wait_done(emu: Emu, name: str, timeout: float = 10.0) -> compute_v1.Operation:
    """ZoneOperations.wait in a bounded loop (never ExtendedOperation.result())."""
    ops, deadline = emu.zone_ops(), time.monotonic() + timeout
    while True:
        op = ops.wait(project=PROJECT, zone=ZONE, operation=name)
        if op.status == compute_v1.Operation.Status.DONE:
            return op
        assert time.monotonic() < deadline, f"operation {name} not DONE"


def _list(emu: Emu, filter_: str) -> list[str]:
    req = compute_v1.ListInstancesRequest(project=PROJECT, zone=ZONE, filter=filter_)
    return [i.name for i in emu.instances().list(request=req)]


def test_compute_spot_lifecycle(emu: Emu) -> None:
    client = emu.instances()
    op = client.insert(project=PROJECT, zone=ZONE, instance_resource=_spot_gpu("gpu-spot-1"))
    assert op.name.startswith("operation-")
    first = client.get(project=PROJECT, zone=ZONE, instance="gpu-spot-1")
    assert first.status in ("PROVISIONING", "STAGING")
    done = _wait_done(emu, op.name)
    assert done.operation_type == "insert" and not done.error.errors
    assert done.target_link.endswith(f"/zones/{ZONE}/instances/gpu-spot-1")
    deadline = time.monotonic() + 5
    while client.get(project=PROJECT, zone=ZONE, instance="gpu-spot-1").status != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    inst = client.get(project=PROJECT, zone=ZONE, instance="gpu-spot-1")
    assert inst.scheduling.provisioning_model == "SPOT"
    assert inst.guest_accelerators[0].accelerator_type.endswith("acceleratorTypes/nvidia-l4")
    assert _list(emu, "labels.owner=phasegate") == ["gpu-spot-1"]
    assert _list(emu, 'labels.owner = "phasegate" AND status = RUNNING') == ["gpu-spot-1"]
    assert _list(emu, 'name = "other"') == []
    deleted = client.delete(project=PROJECT, zone=ZONE, instance="gpu-spot-1")
    assert _wait_done(emu, deleted.name).operation_type == "delete"
    with pytest.raises(gexc.NotFound):
        client.get(project=PROJECT, zone=ZONE, instance="gpu-spot-1")


def test_compute_duplicate_and_bad_filter(emu: Emu) -> None:
    client = emu.instances()
    client.insert(project=PROJECT, zone=ZONE, instance_resource=_spot_gpu("gpu-dup"))
    with pytest.raises(gexc.Conflict) as info:
        client.insert(project=PROJECT, zone=ZONE, instance_resource=_spot_gpu("gpu-dup"))
    assert info.value.errors[0]["reason"] == "alreadyExists"
    with pytest.raises(gexc.BadRequest):
        _list(emu, "labels.owner ~ phasegate")
    with pytest.raises(gexc.NotFound) as missing:
        client.delete(project=PROJECT, zone=ZONE, instance="nope")
    assert missing.value.errors[0]["reason"] == "notFound"


def test_compute_stockout(emu: Emu) -> None:
    set_fault(emu.layout, "compute", "stockout")
    client = emu.instances()
    op = client.insert(project=PROJECT, zone=ZONE, instance_resource=_spot_gpu("gpu-stock"))
    done = _wait_done(emu, op.name)
    assert done.http_error_status_code == 503
    assert done.error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    with pytest.raises(gexc.NotFound):
        client.get(project=PROJECT, zone=ZONE, instance="gpu-stock")
    assert _list(emu, "labels.owner=phasegate") == []


def test_request_log_records_calls(emu: Emu) -> None:
    emu.run().get_service(name=SERVICE)
    with pytest.raises(gexc.NotFound):
        emu.instances().get(project=PROJECT, zone=ZONE, instance="ghost")
    log = emu.requests()
    assert [(r["method"], r["status"]) for r in log] == [("GET", 200), ("GET", 404)]
    assert log[0]["query"] == {"$alt": "json;enum-encoding=int"}
    assert {"path", "query", "body", "time"} <= log[1].keys()


def test_state_survives_restart_and_seed_file(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "gcp" / "seed.json",
                      {"template": {"scaling": {"maxInstanceCount": 5}}})
    emu = _start(tmp_path)
    try:
        client = emu.run()
        svc = client.get_service(name=SERVICE)
        assert svc.template.scaling.max_instance_count == 5
        svc.template.scaling.max_instance_count = 7
        _update(client, svc, "template.scaling.max_instance_count").result(timeout=15)
        emu.instances().insert(project=PROJECT, zone=ZONE,
                               instance_resource=_spot_gpu("gpu-keep"))
    finally:
        stop_pid(emu.pid)
    emu = _start(tmp_path)
    try:
        svc = emu.run().get_service(name=SERVICE)
        assert svc.template.scaling.max_instance_count == 7 and svc.generation == 2
        assert emu.instances().get(project=PROJECT, zone=ZONE, instance="gpu-keep").name
        state = json.loads((tmp_path / "gcp" / "state.json").read_text())
        assert SERVICE in state["run"]["services"]
    finally:
        stop_pid(emu.pid)


# ---- pure helpers (no process) -----------------------------------------------------------


def test_filter_forms() -> None:
    parse = gcp_compute.parse_filter
    assert parse("labels.owner=phasegate") == [(["labels", "owner"], "=", "phasegate")]
    assert parse('labels.owner = "phasegate"') == [(["labels", "owner"], "=", "phasegate")]
    assert parse('name = "x" AND status = RUNNING') == [
        (["name"], "=", "x"), (["status"], "=", "RUNNING")]
    assert len(parse('(status != STOPPED) (labels.owner = "phasegate")')) == 2
    for bad in ("labels.owner", "bogus = 1", "name = x OR name = y", "labels = x"):
        with pytest.raises(gcp_compute.ComputeError):
            parse(bad)
    fields = {f.json_name for f in compute_v1.Instance.pb().DESCRIPTOR.fields}
    assert fields == gcp_compute.INSTANCE_FIELDS


def test_mask_paths_resolve_snake_and_camel() -> None:
    resolve = gcp_cloudrun.resolve_mask_path
    assert resolve("template.scaling.min_instance_count") == [
        "template", "scaling", "minInstanceCount"]
    assert resolve("template.maxInstanceRequestConcurrency") == [
        "template", "maxInstanceRequestConcurrency"]
    assert resolve("labels.team") == ["labels", "team"]
    with pytest.raises(gcp_cloudrun.RunError):
        resolve("template.containers.resources")
