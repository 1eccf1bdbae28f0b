"""Cloud Run v2: read the service's scaling and resource settings, and apply them with an
update mask naming only the fields that differ."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from phasegate.blocks.systems import GcpConnection
from phasegate.errors import ConfigError, PreconditionFailed, RemoteTimeout, VerificationFailed
from phasegate.tasks.retrying import retried

# The Google client libraries are imported where they are used (they take seconds to import
# and every flow imports this module); the names below are for the type annotations.
if TYPE_CHECKING:
    from google.cloud import run_v2

__all__ = ["SETTING_MASKS", "apply_service_settings", "read_service_settings"]

# Each setting's update-mask path. cpu and memory live in template.containers[0].resources;
# a mask path cannot go inside a repeated field, so those send the whole container list.
SETTING_MASKS = {
    "min_instances": "template.scaling.min_instance_count",
    "max_instances": "template.scaling.max_instance_count",
    "max_concurrency": "template.max_instance_request_concurrency",
    "timeout_s": "template.timeout",
    "cpu": "template.containers",
    "memory": "template.containers",
    "vllm_urls": "template.containers",   # the env var GcpConnection.vllm_urls_env
}


def _get_service(gcp: GcpConnection, client: run_v2.ServicesClient) -> run_v2.Service:
    from google.api_core import exceptions as gexc

    try:
        return client.get_service(name=gcp.service_name, timeout=30)
    except (gexc.ServiceUnavailable, gexc.DeadlineExceeded) as exc:
        raise RemoteTimeout(f"Cloud Run {gcp.service_name}: {exc}") from exc


def _settings(svc: run_v2.Service, urls_env: str) -> dict[str, Any]:
    t = svc.template
    limits = dict(t.containers[0].resources.limits) if t.containers else {}
    out = {"min_instances": t.scaling.min_instance_count,
           "max_instances": t.scaling.max_instance_count,
           "max_concurrency": t.max_instance_request_concurrency,
           "timeout_s": t.timeout.total_seconds() if t.timeout else None,
           "cpu": limits.get("cpu"), "memory": limits.get("memory"),
           "etag": svc.etag, "generation": svc.generation}
    if urls_env:
        env = {e.name: e.value for e in t.containers[0].env} if t.containers else {}
        out["vllm_urls"] = _url_list(env.get(urls_env, ""))
    return out


def _url_list(value: str | list[str]) -> list[str]:
    """Base URLs from "a,b" or a list, without blanks or trailing slashes."""
    items = value.split(",") if isinstance(value, str) else value
    return [str(u).strip().rstrip("/") for u in items if str(u).strip()]


@retried
def read_service_settings(gcp: GcpConnection) -> dict[str, Any]:
    """The fields a phase changes: min/max instances, concurrency, timeout, cpu, memory, and
    the vLLM URLs the API is routed to (`vllm_urls`, when the Block names their env var)."""
    return _settings(_get_service(gcp, gcp.get_run_client()), gcp.vllm_urls_env)


def _normalized(settings: dict[str, Any], urls_env: str) -> dict[str, Any]:
    """Requested settings in the types read back (ints, float seconds, text, URL lists); the
    metadata of a `read_service_settings` result (etag, generation) is ignored, so one can be
    restored."""
    settings = {k: v for k, v in settings.items() if k not in ("etag", "generation")}
    known = set(SETTING_MASKS) - (set() if urls_env else {"vllm_urls"})
    unknown = set(settings) - known
    if unknown:
        raise ConfigError(f"unknown Cloud Run settings {sorted(unknown)}; known: "
                          f"{sorted(known)}")
    kinds: dict[str, Any] = {"timeout_s": float, "cpu": str, "memory": str,
                             "vllm_urls": _url_list}
    return {k: kinds.get(k, int)(v) for k, v in settings.items()}


def _set(svc: run_v2.Service, key: str, value: Any, urls_env: str) -> None:
    """Write one setting into the Service message."""
    t = svc.template
    if key == "vllm_urls":
        _set_env(t.containers[0], urls_env, ",".join(value))
        return
    if key == "min_instances":
        t.scaling.min_instance_count = value
    elif key == "max_instances":
        t.scaling.max_instance_count = value
    elif key == "max_concurrency":
        t.max_instance_request_concurrency = value
    elif key == "timeout_s":
        t.timeout = timedelta(seconds=value)
    else:
        t.containers[0].resources.limits[key] = value


def _set_env(container: run_v2.Container, name: str, value: str) -> None:
    """Set (or, with an empty value, remove) one env var of the container, keeping the rest."""
    from google.cloud import run_v2

    env = [e for e in container.env if e.name != name]
    if value:
        env.append(run_v2.EnvVar(name=name, value=value))
    del container.env[:]
    container.env.extend(env)


def _update(gcp: GcpConnection, client: run_v2.ServicesClient, svc: run_v2.Service,
            paths: list[str], timeout_s: float) -> None:
    """PATCH with `paths` as the mask (the etag read makes a concurrent change a 409), then
    wait for the rollout to finish."""
    from google.api_core import exceptions as gexc
    from google.cloud import run_v2
    from google.protobuf import field_mask_pb2

    request = run_v2.UpdateServiceRequest(service=svc,
                                          update_mask=field_mask_pb2.FieldMask(paths=paths))
    try:
        client.update_service(request=request, timeout=30).result(timeout=timeout_s)
    except gexc.BadRequest as exc:
        raise PreconditionFailed(f"Cloud Run refused {paths}: {exc.message}") from exc
    except gexc.Conflict as exc:  # someone else changed the service since our read: stop
        raise PreconditionFailed(f"Cloud Run {gcp.service_name} changed concurrently "
                                 f"(stale etag): {exc.message}") from exc
    except (gexc.ServiceUnavailable, gexc.DeadlineExceeded, TimeoutError) as exc:
        raise RemoteTimeout(f"Cloud Run {gcp.service_name} update: {exc}") from exc


@retried
def apply_service_settings(gcp: GcpConnection, settings: dict[str, Any],
                           timeout_s: float = 300.0) -> dict[str, Any]:
    """Make the Cloud Run service's settings (keys of SETTING_MASKS, any subset; a
    `read_service_settings` result or this task's `before` restores them) as given.

    Reads first; when every field already matches nothing is sent. Otherwise one
    update_service with an update mask of only the changed fields, waits for the rollout (at
    most `timeout_s`), reads back and compares every requested field. Returns {before, after,
    changed, mask}. Raises VerificationFailed on a mismatch after the update,
    PreconditionFailed when Cloud Run refuses the values or the service changed concurrently,
    RemoteTimeout when it does not answer (a retry re-reads, so it is safe)."""
    wanted = _normalized(settings, gcp.vllm_urls_env)
    client = gcp.get_run_client()
    svc = _get_service(gcp, client)
    before = _settings(svc, gcp.vllm_urls_env)
    changed = [k for k, v in wanted.items() if before[k] != v]
    mask = sorted({SETTING_MASKS[k] for k in changed})
    if changed:
        for key in changed:
            _set(svc, key, wanted[key], gcp.vllm_urls_env)
        _update(gcp, client, svc, mask, timeout_s)
    after = _settings(_get_service(gcp, client), gcp.vllm_urls_env)
    wrong = {k: after[k] for k, v in wanted.items() if after[k] != v}
    if wrong:
        raise VerificationFailed(f"Cloud Run {gcp.service_name} reads back {wrong} after "
                                 f"updating {mask} to {wanted}")
    return {"before": before, "after": after, "changed": changed, "mask": mask}
