"""Cloud Run v2: read the service's scaling and resource settings."""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc
from prefect import task

from blocks.systems import GcpConnection
from phasegate.errors import RemoteTimeout
from tasks.retrying import only_transient

__all__ = ["read_service_settings"]


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=only_transient)
def read_service_settings(gcp: GcpConnection) -> dict[str, Any]:
    """The fields a phase changes: min/max instances, concurrency, timeout, cpu, memory."""
    try:
        svc = gcp.get_run_client().get_service(name=gcp.service_name, timeout=30)
    except (gexc.ServiceUnavailable, gexc.DeadlineExceeded) as exc:
        raise RemoteTimeout(f"Cloud Run {gcp.service_name}: {exc}") from exc
    t = svc.template
    limits = dict(t.containers[0].resources.limits) if t.containers else {}
    return {"min_instances": t.scaling.min_instance_count,
            "max_instances": t.scaling.max_instance_count,
            "max_concurrency": t.max_instance_request_concurrency,
            "timeout_s": t.timeout.total_seconds() if t.timeout else None,
            "cpu": limits.get("cpu"), "memory": limits.get("memory"),
            "etag": svc.etag, "generation": svc.generation}
