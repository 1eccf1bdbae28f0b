"""HTTP services phasegate reaches through an HttpEndpoint Block (the API on Cloud Run, the
Alertmanager): a preflight probe of the health path, with what TLS was negotiated."""

from __future__ import annotations

import ssl
import time
from typing import Any

import httpx

from phasegate.blocks.systems import HttpEndpoint
from phasegate.errors import SourceUnavailable

__all__ = ["probe_endpoint"]


def probe_endpoint(endpoint: HttpEndpoint, timeout_s: float, now: float | None = None) -> str:
    """GET the endpoint's health path, certificates verified against the system CA store.

    Returns what was seen ("HTTP 200 over TLSv1.3, certificate valid 61 more days", or
    "HTTP 200 (plain http)"); raises SourceUnavailable on anything but a 2xx answer."""
    url = endpoint.url.rstrip("/") + endpoint.health_path
    headers = ({"Authorization": f"Bearer {endpoint.bearer_token.get_secret_value()}"}
               if endpoint.bearer_token else {})
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise SourceUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
    if not resp.is_success:
        raise SourceUnavailable(f"{url}: HTTP {resp.status_code}")
    tls = _tls(resp.extensions.get("network_stream"), time.time() if now is None else now)
    return f"HTTP {resp.status_code} " + (tls or "(plain http)")


def _tls(stream: Any, now: float) -> str | None:
    """"over TLSv1.3, certificate valid N more days" when the answer came over TLS."""
    sslobj = stream.get_extra_info("ssl_object") if stream is not None else None
    if not isinstance(sslobj, ssl.SSLObject | ssl.SSLSocket):
        return None
    cert = sslobj.getpeercert() or {}
    not_after = cert.get("notAfter")
    days = (int((ssl.cert_time_to_seconds(str(not_after)) - now) // 86400)
            if not_after else None)
    return f"over {sslobj.version()}" + (f", certificate valid {days} more days"
                                         if days is not None else "")
