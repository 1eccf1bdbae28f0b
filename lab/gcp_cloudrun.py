"""Cloud Run Admin API v2 state logic for the lab's Google Cloud emulator (`lab.gcp_emulator`).

Pure functions over a JSON-able state dict `{"services": {name: Service JSON}, "operations":
{name: Operation JSON}}`; the HTTP layer, persistence and waiting live in `lab.gcp_emulator`.
Services are stored as canonical proto3 JSON (camelCase, enums as integers, int64 as strings,
zero values omitted) produced by a round trip through `google.cloud.run_v2.Service`, so what a
client reads back is exactly what the real API would serialise. Keys starting with `_` are the
emulator's private bookkeeping and never leave it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from google.cloud import run_v2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

__all__ = [
    "SERVICE_TYPE",
    "RunError",
    "get_operation",
    "get_service",
    "list_operations",
    "list_services",
    "new_state",
    "normalize_service",
    "operation_done",
    "patch_service",
    "seed_service",
    "serving",
    "tick",
]

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"
_DESCRIPTOR: Descriptor = run_v2.Service.pb().DESCRIPTOR
OUTPUT_ONLY = frozenset({
    "name", "uid", "generation", "createTime", "updateTime", "deleteTime", "expireTime",
    "creator", "lastModifier", "observedGeneration", "terminalCondition", "conditions",
    "latestReadyRevision", "latestCreatedRevision", "trafficStatuses", "uri", "urls",
    "satisfiesPzs", "reconciling", "etag", "threatDetectionEnabled",
})
MUTABLE = tuple(f.json_name for f in _DESCRIPTOR.fields if f.json_name not in OUTPUT_ONLY)
FORBIDDEN_ANNOTATION_PREFIXES = ("autoscaling.knative.dev/", "run.googleapis.com/")
SUCCEEDED, RECONCILING = 4, 2  # google.cloud.run.v2.Condition.State
LATEST = 1  # TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
LAB_ACCOUNT = "phasegate-lab@{project}.iam.gserviceaccount.com"


class RunError(Exception):
    """An API error in Google's JSON error shape (what google.api_core maps to exceptions)."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message

    def body(self) -> dict[str, Any]:
        """`{"error": {"code", "message", "status"}}`."""
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


def _invalid(message: str) -> RunError:
    return RunError(400, "INVALID_ARGUMENT", message)


def timestamp(now: float) -> str:
    """RFC 3339 UTC with microseconds, as Google's JSON timestamps."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_state() -> dict[str, Any]:
    """An empty Cloud Run state."""
    return {"services": {}, "operations": {}}


def normalize_service(data: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """Canonical proto3 JSON of a Service; 400 INVALID_ARGUMENT when it does not parse."""
    public = {k: v for k, v in data.items() if not k.startswith("_")}
    try:
        msg = json_format.ParseDict(public, run_v2.Service.pb()(),
                                    ignore_unknown_fields=not strict)
    except json_format.ParseError as exc:
        raise _invalid(f"Invalid JSON payload received. {exc}") from exc
    out = json_format.MessageToDict(msg, use_integers_for_enums=True)
    out.update({k: v for k, v in data.items() if k.startswith("_")})
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _etag(service: dict[str, Any]) -> str:
    digest = hashlib.sha256(repr(sorted(service.items())).encode()).digest()
    return '"' + base64.b64encode(digest[:18]).decode() + '"'


def _revision_name(service_name: str, generation: int) -> str:
    short = service_name.rsplit("/", 1)[-1]
    suffix = "".join(chr(97 + b % 26) for b in uuid.uuid4().bytes[:3])
    return f"{service_name}/revisions/{short}-{generation:05d}-{suffix}"


def _ready_conditions(now: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ts = timestamp(now)
    terminal = {"type": "Ready", "state": SUCCEEDED, "lastTransitionTime": ts}
    return terminal, [{"type": t, "state": SUCCEEDED, "lastTransitionTime": ts}
                      for t in ("ConfigurationsReady", "RoutesReady")]


def seed_service(project: str, region: str, service: str, now: float,
                 overrides: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """The phase-1 service, with `overrides` (seed.json) deep-merged over its fields and `env`
    set on its container."""
    name = f"projects/{project}/locations/{region}/services/{service}"
    host = hashlib.sha256(name.encode()).hexdigest()[:10]
    uri = f"https://{service}-{host}-{region.split('-')[0][:2]}.a.run.app"
    revision = f"{name}/revisions/{service}-00001-lab"
    terminal, conditions = _ready_conditions(now)
    svc: dict[str, Any] = {
        "name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, name)), "generation": "1",
        "createTime": timestamp(now), "updateTime": timestamp(now),
        "creator": LAB_ACCOUNT.format(project=project),
        "lastModifier": LAB_ACCOUNT.format(project=project), "ingress": 1, "launchStage": 4,
        "template": _seed_template(project),
        "traffic": [{"type": LATEST, "percent": 100}], "observedGeneration": "1",
        "terminalCondition": terminal, "conditions": conditions,
        "latestReadyRevision": revision, "latestCreatedRevision": revision,
        "trafficStatuses": [{"type": LATEST, "percent": 100}], "uri": uri, "urls": [uri],
    }
    if env:
        svc["template"]["containers"][0]["env"] = [{"name": k, "value": v}
                                                   for k, v in sorted(env.items())]
    svc = normalize_service(_deep_merge(svc, overrides or {}))
    svc["etag"] = _etag(svc)
    _serve(svc)
    return svc


def _serve(svc: dict[str, Any]) -> None:
    """Record the ready revision's container env: what the service's instances now run with
    (a rollout in progress does not change it until it completes)."""
    containers = svc.get("template", {}).get("containers") or [{}]
    svc["_serving"] = {"revision": svc.get("latestReadyRevision", ""),
                       "env": {e["name"]: e.get("value", "") for e in containers[0].get("env", [])}}


def serving(state: dict[str, Any]) -> dict[str, Any]:
    """{service name: {revision, env}} of every service's serving revision."""
    return {name: copy.deepcopy(svc.get("_serving", {})) for name, svc in state["services"].items()}


def _seed_template(project: str) -> dict[str, Any]:
    return {
        "scaling": {"minInstanceCount": 0, "maxInstanceCount": 3},
        "maxInstanceRequestConcurrency": 80, "timeout": "300s",
        "serviceAccount": LAB_ACCOUNT.format(project=project),
        "containers": [{
            "name": "api",
            "image": f"asia-northeast3-docker.pkg.dev/{project}/dreamseed/api:1.0.0",
            "ports": [{"name": "http1", "containerPort": 8080}],
            "resources": {"limits": {"cpu": "1", "memory": "2Gi"}, "cpuIdle": True,
                          "startupCpuBoost": True},
        }],
    }


def get_service(state: dict[str, Any], name: str) -> dict[str, Any]:
    """The public JSON of one service; 404 NOT_FOUND if absent."""
    svc = state["services"].get(name)
    if svc is None:
        raise RunError(404, "NOT_FOUND", f"Resource '{name.rsplit('/', 1)[-1]}' of kind "
                       f"'SERVICE' in region '{name.split('/')[3]}' in project "
                       f"'{name.split('/')[1]}' does not exist.")
    return _public(svc)


def _public(data: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in data.items() if not k.startswith("_")}


def _page(items: list[Any], size: int, token: str) -> tuple[list[Any], str]:
    try:
        start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
    except ValueError as exc:
        raise _invalid("Invalid page token.") from exc
    size = size if size > 0 else 100
    nxt = start + size
    token_out = base64.urlsafe_b64encode(str(nxt).encode()).decode() if nxt < len(items) else ""
    return items[start:nxt], token_out


def list_services(state: dict[str, Any], parent: str, page_size: int,
                  page_token: str) -> dict[str, Any]:
    """`ListServicesResponse` JSON for services under `parent` (a location)."""
    names = sorted(n for n in state["services"] if n.startswith(parent + "/services/"))
    page, token = _page(names, page_size, page_token)
    out: dict[str, Any] = {"services": [_public(state["services"][n]) for n in page]}
    if token:
        out["nextPageToken"] = token
    return out


def list_operations(state: dict[str, Any], parent: str) -> dict[str, Any]:
    """`ListOperationsResponse` JSON for operations under `parent`."""
    ops = [_public(op) for n, op in sorted(state["operations"].items())
           if n.startswith(parent + "/operations/")]
    return {"operations": ops}


def get_operation(state: dict[str, Any], name: str) -> dict[str, Any]:
    """One long-running Operation's JSON; 404 if unknown."""
    op = state["operations"].get(name)
    if op is None:
        raise RunError(404, "NOT_FOUND", f"Operation '{name}' not found.")
    return _public(op)


def operation_done(state: dict[str, Any], name: str) -> bool:
    """True once the operation finished (unknown operations count as done)."""
    return bool(state["operations"].get(name, {}).get("done", True))


# ---- field masks ---------------------------------------------------------------------------


def _field(desc: Descriptor, segment: str) -> FieldDescriptor | None:
    for f in desc.fields:
        if segment in (f.name, f.json_name):
            return f
    return None


def _is_map(field: FieldDescriptor) -> bool:
    mt = field.message_type
    return mt is not None and mt.GetOptions().map_entry


def resolve_mask_path(path: str) -> list[str]:
    """A mask path (snake_case or camelCase) as JSON names; 400 for an unknown path."""
    desc: Descriptor | None = _DESCRIPTOR
    out: list[str] = []
    segments = path.strip().split(".")
    for i, seg in enumerate(segments):
        if desc is None:  # a map key was the previous segment
            raise _invalid(f"Invalid field mask path: '{path}'.")
        field = _field(desc, seg)
        if field is None or (field.is_repeated and i < len(segments) - 1 and not _is_map(field)):
            raise _invalid(f"Invalid field mask path: '{path}'.")
        out.append(field.json_name)
        if _is_map(field) and i < len(segments) - 1:
            out.append(segments[i + 1])
            if i + 2 != len(segments):
                raise _invalid(f"Invalid field mask path: '{path}'.")
            return out
        desc = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
        if desc is None and i < len(segments) - 1:
            raise _invalid(f"Invalid field mask path: '{path}'.")
    return out


def parse_mask(raw: str | None) -> list[list[str]] | None:
    """`updateMask` query value -> JSON paths; None when absent or `*` (full replacement)."""
    if raw is None or raw.strip() in ("", "*"):
        return None
    return [resolve_mask_path(p) for p in raw.split(",") if p.strip()]


def _apply_path(dst: dict[str, Any], src: dict[str, Any], path: list[str]) -> None:
    """Field-mask semantics: replace `path` in dst by src's value, or clear it if absent."""
    *parents, leaf = path
    s: Any = src
    d = dst
    for p in parents:
        s = s.get(p) if isinstance(s, dict) else None
        child = d.get(p)
        d = d.setdefault(p, {}) if not isinstance(child, dict) else child
    if isinstance(s, dict) and leaf in s:
        d[leaf] = copy.deepcopy(s[leaf])
    else:
        d.pop(leaf, None)


def apply_update(current: dict[str, Any], body: dict[str, Any],
                 mask: list[list[str]] | None) -> dict[str, Any]:
    """The service after applying `body` under `mask` (None: replace every mutable field)."""
    paths = mask if mask is not None else [[f] for f in MUTABLE]
    out = copy.deepcopy(current)
    for path in paths:
        if path[0] not in OUTPUT_ONLY:  # AIP-161: output-only paths are ignored
            _apply_path(out, body, path)
    return normalize_service(out)


# ---- validation ----------------------------------------------------------------------------

_MEM = re.compile(r"^(\d+)(Mi|Gi|M|G)$")
_CPU = re.compile(r"^(\d+)(m?)$")


def _check_annotations(where: str, annotations: dict[str, str]) -> None:
    for key in annotations:
        if key.startswith(FORBIDDEN_ANNOTATION_PREFIXES):
            raise _invalid(f"Violation in UpdateServiceRequest.{where}: annotation '{key}' is "
                           "not supported in the Cloud Run v2 API; use the corresponding field.")


def _check_scaling(where: str, scaling: dict[str, Any]) -> None:
    lo, hi = int(scaling.get("minInstanceCount", 0)), int(scaling.get("maxInstanceCount", 0))
    if not 0 <= lo <= 1000 or not 0 <= hi <= 1000:
        raise _invalid(f"{where}: instance counts must be between 0 and 1000.")
    if hi and lo > hi:
        raise _invalid(f"{where}.min_instance_count ({lo}) must be less than or equal to "
                       f"max_instance_count ({hi}).")


def _memory_mib(value: str) -> int:
    m = _MEM.match(value)
    if not m:
        raise _invalid(f"Invalid value specified for memory: '{value}'.")
    n = int(m.group(1))
    return n * 1024 if m.group(2) in ("Gi", "G") else n


def _cpu_milli(value: str) -> int:
    m = _CPU.match(value)
    if not m:
        raise _invalid(f"Invalid value specified for cpu: '{value}'.")
    return int(m.group(1)) * (1 if m.group(2) else 1000)


def _check_limits(limits: dict[str, str]) -> None:
    cpu = _cpu_milli(limits.get("cpu", "1"))
    mem = _memory_mib(limits.get("memory", "512Mi"))
    if cpu not in (1000, 2000, 4000, 6000, 8000) and not 80 <= cpu < 1000:
        raise _invalid(f"Invalid value specified for cpu: '{limits.get('cpu')}'; allowed: "
                       "1, 2, 4, 6, 8 or less than 1 (millicpu).")
    if not 128 <= mem <= 32 * 1024:
        raise _invalid("Memory must be between 128Mi and 32Gi.")
    need_cpu = 8000 if mem > 24 * 1024 else 6000 if mem > 16 * 1024 else \
        4000 if mem > 8 * 1024 else 2000 if mem > 4 * 1024 else 0
    if cpu < need_cpu:
        raise _invalid(f"Total memory < {mem}Mi requires at least {need_cpu // 1000} CPUs.")
    if cpu >= 4000 and mem < 2048:
        raise _invalid(f"{cpu // 1000} CPUs require at least 2Gi of memory.")


def _duration_seconds(value: str) -> float:
    return float(value.rstrip("s")) if value else 0.0


def validate_service(svc: dict[str, Any]) -> None:
    """The checks Cloud Run applies to a service update (400 INVALID_ARGUMENT)."""
    template = svc.get("template", {})
    _check_annotations("service.annotations", svc.get("annotations", {}))
    _check_annotations("service.template.annotations", template.get("annotations", {}))
    _check_scaling("service.template.scaling", template.get("scaling", {}))
    _check_scaling("service.scaling", svc.get("scaling", {}))
    if not 0 <= int(template.get("maxInstanceRequestConcurrency", 0)) <= 1000:
        raise _invalid("max_instance_request_concurrency must be between 1 and 1000.")
    if not 0 <= _duration_seconds(template.get("timeout", "")) <= 3600:
        raise _invalid("timeout must be between 1s and 3600s.")
    containers = template.get("containers", [])
    if not containers or any(not c.get("image") for c in containers):
        raise _invalid("service.template.containers: every container needs an image.")
    for c in containers:
        _check_limits(c.get("resources", {}).get("limits", {}))
    if sum(int(t.get("percent", 0)) for t in svc.get("traffic", [])) not in (0, 100):
        raise _invalid("service.traffic: percentages must add up to 100.")


# ---- updates and rollouts ------------------------------------------------------------------


def patch_service(state: dict[str, Any], name: str, body: dict[str, Any],
                  query: dict[str, str], now: float, delay: float) -> dict[str, Any]:
    """services.patch: validate, apply, start a rollout; returns the Operation JSON."""
    body = normalize_service(body)
    _check_annotations("service.annotations", body.get("annotations", {}))
    _check_annotations("service.template.annotations",
                       body.get("template", {}).get("annotations", {}))
    mask = parse_mask(query.get("updateMask"))
    current = state["services"].get(name)
    if current is None:
        if query.get("allowMissing", "").lower() != "true":
            get_service(state, name)  # raises NOT_FOUND
        current = _blank_service(name, now)
        mask = None
    elif body.get("etag") and body["etag"] != current.get("etag"):
        raise RunError(409, "ABORTED", f"Resource '{name}' has changed: the etag in the "
                       "request does not match the current one (concurrent modification).")
    updated = apply_update(current, body, mask)
    validate_service(updated)
    return _start_rollout(state, updated, now, delay)


def _blank_service(name: str, now: float) -> dict[str, Any]:
    project, region, short = name.split("/")[1], name.split("/")[3], name.split("/")[5]
    host = hashlib.sha256(name.encode()).hexdigest()[:10]
    uri = f"https://{short}-{host}-{region.split('-')[0][:2]}.a.run.app"
    return {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, name)), "generation": "0",
            "createTime": timestamp(now), "creator": LAB_ACCOUNT.format(project=project),
            "uri": uri, "urls": [uri]}


def _start_rollout(state: dict[str, Any], svc: dict[str, Any], now: float,
                   delay: float) -> dict[str, Any]:
    generation = int(svc.get("generation", "0")) + 1
    name = svc["name"]
    svc.update({
        "generation": str(generation), "updateTime": timestamp(now), "reconciling": True,
        "latestCreatedRevision": _revision_name(name, generation),
        "lastModifier": svc.get("creator", ""),
        "terminalCondition": {"type": "Ready", "state": RECONCILING,
                              "lastTransitionTime": timestamp(now)},
    })
    svc["etag"] = _etag({k: v for k, v in svc.items() if k != "etag"})
    state["services"][name] = svc
    op_name = f"{name.split('/services/')[0]}/operations/{uuid.uuid4()}"
    op = {"name": op_name, "metadata": {"@type": SERVICE_TYPE, **_public(svc)}, "done": False,
          "_due": now + delay, "_service": name}
    state["operations"][op_name] = op
    return _public(op)


def _finish_rollout(state: dict[str, Any], op: dict[str, Any], now: float) -> None:
    svc = state["services"].get(op["_service"])
    op["done"] = True
    if svc is None:
        op["error"] = {"code": 5, "message": "The service was deleted during the rollout."}
        return
    terminal, conditions = _ready_conditions(now)
    svc.pop("reconciling", None)
    svc.update({"latestReadyRevision": svc.get("latestCreatedRevision", ""),
                "observedGeneration": svc["generation"], "terminalCondition": terminal,
                "conditions": conditions, "trafficStatuses": _traffic_statuses(svc)})
    _serve(svc)
    svc["etag"] = _etag({k: v for k, v in svc.items() if k != "etag"})
    op["metadata"] = {"@type": SERVICE_TYPE, **_public(svc)}
    op["response"] = {"@type": SERVICE_TYPE, **_public(svc)}


def _traffic_statuses(svc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in svc.get("traffic", []):
        status = {k: v for k, v in t.items() if k in ("type", "revision", "percent", "tag")}
        if status.get("type") == LATEST:
            status["revision"] = svc.get("latestReadyRevision", "").rsplit("/", 1)[-1]
        out.append(status)
    return out


def tick(state: dict[str, Any], now: float) -> bool:
    """Finish every rollout whose time has come; True if anything changed."""
    changed = False
    for op in state["operations"].values():
        if not op.get("done") and now >= op.get("_due", 0):
            _finish_rollout(state, op, now)
            changed = True
    return changed
