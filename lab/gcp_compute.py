"""Compute Engine v1 (zonal instances and zone operations) state logic for `lab.gcp_emulator`.

Pure functions over `{"instances": {key: Instance JSON}, "operations": {key: Operation JSON}}`
(keys are `projects/P/zones/Z/instances/N` and `projects/P/zones/Z/operations/N`). JSON as the
real API writes it: enum-like fields as plain strings, int64 as strings, links as full URLs.
Keys starting with `_` are private timers and never leave the emulator. Time advances lazily:
`tick(state, now)` moves instances PROVISIONING -> STAGING -> RUNNING and finishes operations.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import secrets
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ComputeError",
    "delete_instance",
    "get_instance",
    "get_operation",
    "insert_instance",
    "list_instances",
    "new_state",
    "operation_done",
    "tick",
]

API = "https://www.googleapis.com/compute/v1/"
STOCKOUT_MESSAGE = ("The zone '{zone}' does not have enough resources available to fulfill the "
                    "request.  Try a different zone, or try again later.")
# JSON names of compute_v1.Instance's fields (importing compute_v1 costs ~1 s of start-up; a test
# keeps this list equal to the installed descriptor).
INSTANCE_FIELDS = frozenset({
    "advancedMachineFeatures", "canIpForward", "confidentialInstanceConfig", "cpuPlatform",
    "creationTimestamp", "deletionProtection", "description", "disks", "displayDevice",
    "fingerprint", "guestAccelerators", "hostname", "id", "instanceEncryptionKey",
    "keyRevocationActionType", "kind", "labelFingerprint", "labels", "lastStartTimestamp",
    "lastStopTimestamp", "lastSuspendedTimestamp", "localSsdEncryptionMode", "machineType",
    "metadata", "minCpuPlatform", "name", "networkInterfaces", "networkPerformanceConfig",
    "params", "privateIpv6GoogleAccess", "reservationAffinity", "resourcePolicies",
    "resourceStatus", "satisfiesPzi", "satisfiesPzs", "scheduling", "selfLink", "serviceAccounts",
    "shieldedInstanceConfig", "shieldedInstanceIntegrityPolicy", "sourceMachineImage",
    "sourceMachineImageEncryptionKey", "startRestricted", "status", "statusMessage", "tags",
    "workloadIdentityConfig", "zone",
})
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_TERM = re.compile(r'^\(?\s*([A-Za-z][\w.-]*)\s*(=|!=)\s*("([^"]*)"|[^\s()"]+)\s*\)?$')


class ComputeError(Exception):
    """An API error in Compute's JSON shape (`errors[].reason` such as notFound)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> dict[str, Any]:
        """`{"error": {"code", "message", "errors": [{"message", "domain", "reason"}]}}`."""
        return {"error": {"code": self.code, "message": self.message, "errors": [
            {"message": self.message, "domain": "global", "reason": self.reason}]}}


def _invalid(message: str) -> ComputeError:
    return ComputeError(400, "invalid", message)


def timestamp(now: float) -> str:
    """RFC 3339 with offset and milliseconds, as Compute writes timestamps."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")


def new_state() -> dict[str, Any]:
    """An empty Compute state."""
    return {"instances": {}, "operations": {}}


def _public(data: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in data.items() if not k.startswith("_")}


def _int64_id() -> str:
    return str(secrets.randbits(62) | (1 << 62))


def _zone_link(project: str, zone: str, kind: str, name: str) -> str:
    """A full URL for `zones/Z/<kind>/<name>`, accepting a partial or full input `name`."""
    if name.startswith("https://"):
        return name
    tail = name.split("/")[-1]
    if "/" in name and f"zones/{zone}/" not in name:
        raise _invalid(f"Invalid value for field '{kind}': '{name}'. Zone mismatch.")
    return f"{API}projects/{project}/zones/{zone}/{kind}/{tail}"


# ---- instances -----------------------------------------------------------------------------


def _check_resource(body: dict[str, Any]) -> None:
    name = body.get("name", "")
    if not _NAME.match(name):
        raise _invalid(f"Invalid value for field 'resource.name': '{name}'. Must be a match "
                       "of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
    if not body.get("machineType"):
        raise _invalid("Invalid value for field 'resource.machineType': ''. "
                       "Machine type must be specified.")
    if not any(d.get("boot") for d in body.get("disks", [])):
        raise _invalid("Invalid value for field 'resource.disks': ''. "
                       "Boot disk must be specified.")
    for key, value in body.get("labels", {}).items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(value)):
            raise _invalid(f"Invalid value for field 'resource.labels': '{key}={value}'.")
    _check_scheduling(body)


def _check_scheduling(body: dict[str, Any]) -> None:
    sched = body.get("scheduling", {})
    gpus = any(int(a.get("acceleratorCount", 0)) > 0 for a in body.get("guestAccelerators", []))
    spot = sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True
    if gpus and sched.get("onHostMaintenance") == "MIGRATE":
        raise _invalid("Instances with guest accelerators do not support live migration; "
                       "scheduling.onHostMaintenance must be TERMINATE.")
    if spot and sched.get("automaticRestart") is True:
        raise _invalid("Invalid value for field 'resource.scheduling.automaticRestart': "
                       "'true'. Spot and preemptible instances cannot be automatically "
                       "restarted.")
    if sched.get("instanceTerminationAction") not in (None, "STOP", "DELETE"):
        raise _invalid("Invalid value for field "
                       "'resource.scheduling.instanceTerminationAction'.")


def _build_instance(project: str, zone: str, body: dict[str, Any],
                    now: float) -> dict[str, Any]:
    inst = copy.deepcopy(body)
    name = inst["name"]
    self_link = f"{API}projects/{project}/zones/{zone}/instances/{name}"
    inst.update({
        "kind": "compute#instance", "id": _int64_id(), "creationTimestamp": timestamp(now),
        "status": "PROVISIONING", "zone": f"{API}projects/{project}/zones/{zone}",
        "selfLink": self_link, "cpuPlatform": "Unknown CPU Platform",
        "machineType": _zone_link(project, zone, "machineTypes", inst["machineType"]),
        "labelFingerprint": _fingerprint(inst.get("labels", {})),
        "fingerprint": _fingerprint(name), "startRestricted": False,
    })
    inst.setdefault("deletionProtection", False)
    for acc in inst.get("guestAccelerators", []):
        acc["acceleratorType"] = _zone_link(project, zone, "acceleratorTypes",
                                            acc.get("acceleratorType", ""))
    _fill_scheduling(inst)
    _fill_devices(inst, project, zone)
    return inst


def _fill_scheduling(inst: dict[str, Any]) -> None:
    sched = inst.setdefault("scheduling", {})
    spot = sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True
    gpus = bool(inst.get("guestAccelerators"))
    sched.setdefault("provisioningModel", "SPOT" if spot else "STANDARD")
    sched.setdefault("onHostMaintenance", "TERMINATE" if spot or gpus else "MIGRATE")
    sched.setdefault("automaticRestart", not spot)
    sched.setdefault("preemptible", spot)
    if spot:
        sched.setdefault("instanceTerminationAction", "STOP")


def _fill_devices(inst: dict[str, Any], project: str, zone: str) -> None:
    for i, disk in enumerate(inst.get("disks", [])):
        disk.setdefault("deviceName", f"persistent-disk-{i}")
        disk.update({"kind": "compute#attachedDisk", "index": i, "type": "PERSISTENT",
                     "mode": disk.get("mode", "READ_WRITE")})
        disk.setdefault("source", _zone_link(project, zone, "disks",
                                             inst["name"] if i == 0 else f"{inst['name']}-{i}"))
        disk.pop("initializeParams", None)
    nics = inst.setdefault("networkInterfaces", [{}])
    for i, nic in enumerate(nics):
        nic.update({"kind": "compute#networkInterface", "name": f"nic{i}",
                    "networkIP": f"10.178.0.{2 + len(inst['name']) % 250}"})
        network = nic.get("network") or "global/networks/default"
        if not network.startswith("https://"):
            network = f"{API}projects/{project}/{network.removeprefix(f'projects/{project}/')}"
        nic["network"] = network


def _fingerprint(value: Any) -> str:
    return base64.b64encode(hashlib.sha256(repr(value).encode()).digest()[:8]).decode()


def insert_instance(state: dict[str, Any], project: str, zone: str, body: dict[str, Any],
                    now: float, delay: float, stockout: bool) -> dict[str, Any]:
    """instances.insert: 409 on a taken name; returns the zone Operation JSON."""
    _check_resource(body)
    key = f"projects/{project}/zones/{zone}/instances/{body['name']}"
    pending = any(op.get("_instance") == key and op["status"] != "DONE"
                  and op["operationType"] == "insert" for op in state["operations"].values())
    if key in state["instances"] or pending:
        raise ComputeError(409, "alreadyExists", f"The resource '{key}' already exists")
    target = f"{API}{key}"
    if stockout:
        return _new_operation(state, project, zone, "insert", target, _int64_id(), now,
                              now + delay, key, failure="stockout")
    inst = _build_instance(project, zone, body, now)
    inst.update({"_staging_at": now + delay / 2, "_running_at": now + delay})
    state["instances"][key] = inst
    return _new_operation(state, project, zone, "insert", target, inst["id"], now,
                          now + delay / 2, key)


def get_instance(state: dict[str, Any], project: str, zone: str, name: str) -> dict[str, Any]:
    """instances.get; 404 notFound if absent."""
    key = f"projects/{project}/zones/{zone}/instances/{name}"
    inst = state["instances"].get(key)
    if inst is None:
        raise ComputeError(404, "notFound", f"The resource '{key}' was not found")
    return _public(inst)


def delete_instance(state: dict[str, Any], project: str, zone: str, name: str, now: float,
                    delay: float) -> dict[str, Any]:
    """instances.delete: STOPPING now, gone after `delay`; returns the zone Operation JSON."""
    inst = get_instance(state, project, zone, name)
    key = f"projects/{project}/zones/{zone}/instances/{name}"
    stored = state["instances"][key]
    stored.update({"status": "STOPPING", "_delete_at": now + delay})
    for k in ("_staging_at", "_running_at"):
        stored.pop(k, None)
    return _new_operation(state, project, zone, "delete", inst["selfLink"], inst["id"], now,
                          now + delay, key)


# ---- list filters --------------------------------------------------------------------------


def parse_filter(text: str) -> list[tuple[list[str], str, str]]:
    """`a = "x" AND (b != y) ...` -> [(path, op, value)]; 400 for anything else."""
    text = text.strip()
    if not text:
        return []
    parts = re.split(r"\s+AND\s+|(?<=\))\s*(?=\()", text)
    terms = []
    for part in parts:
        m = _TERM.match(part.strip())
        if not m or part.strip().count("(") != part.strip().count(")"):
            raise _invalid(f"Invalid value for field 'filter': '{text}'. Invalid list filter "
                           "expression.")
        path = m.group(1).split(".")
        if path[0] not in INSTANCE_FIELDS or (path[0] == "labels" and len(path) != 2):
            raise _invalid(f"Invalid value for field 'filter': '{text}'. Invalid field name "
                           f"'{m.group(1)}'.")
        value = m.group(4) if m.group(4) is not None else m.group(3)
        terms.append((path, m.group(2), value))
    return terms


def _lookup(inst: dict[str, Any], path: list[str]) -> str | None:
    cur: Any = inst
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return None if isinstance(cur, dict | list) else str(cur)


def _matches(inst: dict[str, Any], terms: list[tuple[list[str], str, str]]) -> bool:
    for path, op, value in terms:
        actual = _lookup(inst, path)
        if path[0] in ("machineType", "zone") and actual is not None:
            actual = actual.rsplit("/", 1)[-1] if "/" not in value else actual
        if (actual == value) != (op == "="):
            return False
    return True


def list_instances(state: dict[str, Any], project: str, zone: str,
                   query: dict[str, str]) -> dict[str, Any]:
    """instances.list with `filter`, `maxResults` and `pageToken`."""
    terms = parse_filter(query.get("filter", ""))
    prefix = f"projects/{project}/zones/{zone}/instances/"
    items = [_public(i) for k, i in sorted(state["instances"].items())
             if k.startswith(prefix) and _matches(i, terms)]
    size = min(int(query.get("maxResults") or 500), 500)
    try:
        start = int(base64.urlsafe_b64decode(query.get("pageToken", "").encode()) or b"0")
    except ValueError as exc:
        raise _invalid("Invalid value for field 'pageToken'.") from exc
    out: dict[str, Any] = {"kind": "compute#instanceList", "id": prefix.rstrip("/"),
                           "items": items[start:start + size],
                           "selfLink": f"{API}{prefix.rstrip('/')}"}
    if start + size < len(items):
        out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    return out


# ---- operations ----------------------------------------------------------------------------


def _new_operation(state: dict[str, Any], project: str, zone: str, kind: str, target: str,
                   target_id: str, now: float, due: float, instance_key: str,
                   failure: str = "") -> dict[str, Any]:
    name = f"operation-{int(now * 1000)}-{secrets.token_hex(6)}-{secrets.token_hex(4)}"
    key = f"projects/{project}/zones/{zone}/operations/{name}"
    op = {
        "kind": "compute#operation", "id": _int64_id(), "name": name,
        "zone": f"{API}projects/{project}/zones/{zone}", "operationType": kind,
        "targetLink": target, "targetId": target_id, "status": "RUNNING", "progress": 0,
        "user": f"phasegate-lab@{project}.iam.gserviceaccount.com",
        "insertTime": timestamp(now), "startTime": timestamp(now), "selfLink": f"{API}{key}",
        "_due": due, "_instance": instance_key, "_failure": failure,
    }
    state["operations"][key] = op
    return _public(op)


def get_operation(state: dict[str, Any], project: str, zone: str, name: str) -> dict[str, Any]:
    """zoneOperations.get; 404 notFound if unknown."""
    key = f"projects/{project}/zones/{zone}/operations/{name}"
    op = state["operations"].get(key)
    if op is None:
        raise ComputeError(404, "notFound", f"The resource '{key}' was not found")
    return _public(op)


def operation_done(state: dict[str, Any], project: str, zone: str, name: str) -> bool:
    """True once the operation is DONE (unknown operations count as done)."""
    op = state["operations"].get(f"projects/{project}/zones/{zone}/operations/{name}")
    return op is None or op["status"] == "DONE"


def _finish_operation(op: dict[str, Any], now: float) -> None:
    op.update({"status": "DONE", "progress": 100, "endTime": timestamp(now)})
    if op.get("_failure") == "stockout":
        zone = op["zone"].removeprefix(API)
        message = STOCKOUT_MESSAGE.format(zone=zone)
        op.update({"httpErrorStatusCode": 503, "httpErrorMessage": "SERVICE UNAVAILABLE",
                   "error": {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                                         "message": message}]}})


def _advance_instance(inst: dict[str, Any], now: float) -> bool:
    before = inst["status"]
    if "_running_at" in inst and now >= inst["_running_at"]:
        inst["status"] = "RUNNING"
        inst.setdefault("lastStartTimestamp", timestamp(inst.pop("_running_at")))
        inst.pop("_staging_at", None)
    elif "_staging_at" in inst and now >= inst["_staging_at"]:
        inst["status"] = "STAGING"
    return inst["status"] != before


def tick(state: dict[str, Any], now: float) -> bool:
    """Advance instance lifecycles and finish due operations; True if anything changed."""
    changed = False
    for key, inst in list(state["instances"].items()):
        if now >= inst.get("_delete_at", float("inf")):
            del state["instances"][key]
            changed = True
        else:
            changed = _advance_instance(inst, now) or changed
    for op in state["operations"].values():
        if op["status"] != "DONE" and now >= op["_due"]:
            _finish_operation(op, now)
            changed = True
    return changed
