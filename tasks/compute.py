"""Google Compute Engine: the project and zone where phasegate adds spot GPU workers."""

from __future__ import annotations

from phasegate.blocks.systems import GcpConnection
from phasegate.errors import SourceUnavailable

__all__ = ["zone_readable"]


def zone_readable(gcp: GcpConnection, timeout_s: float) -> str:
    """List one page of the zone's instances (the preflight: credentials, project and zone are
    right); raises SourceUnavailable with Google's message otherwise."""
    from google.api_core import exceptions as gexc
    from google.cloud import compute_v1

    request = compute_v1.ListInstancesRequest(project=gcp.project, zone=gcp.zone, max_results=10)
    try:
        page = next(iter(gcp.get_instances_client().list(request=request,
                                                          timeout=timeout_s).pages))
    except StopIteration:
        return f"{gcp.project}/{gcp.zone}: readable, no instances"
    except gexc.GoogleAPIError as exc:
        raise SourceUnavailable(f"Compute {gcp.project}/{gcp.zone}: {exc}") from exc
    count = len(page.items)
    more = "+" if page.next_page_token else ""
    return f"{gcp.project}/{gcp.zone}: readable, {count}{more} instances"
