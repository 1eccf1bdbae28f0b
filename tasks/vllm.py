"""vLLM's OpenAI-compatible server: health and a real completion."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from phasegate.errors import RemoteTimeout, VerificationFailed
from phasegate.tasks.retrying import retried

__all__ = ["CompletionCheck", "api_answers", "check_completion", "is_healthy", "queue_depth",
           "server_errors"]


@dataclass(frozen=True)
class CompletionCheck:
    """A completion that really came back."""

    model: str
    text: str
    completion_tokens: int
    latency_ms: float


def is_healthy(url: str, timeout_s: float = 5.0) -> bool:
    """True if GET /health answers 200 (503 while the model loads)."""
    try:
        return httpx.get(f"{url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


@retried
def check_completion(url: str, model: str, prompt: str = "1+1=", max_tokens: int = 8,
                     timeout_s: float = 60.0) -> CompletionCheck:
    """POST /v1/completions and require a non-empty answer."""
    started = time.perf_counter()
    try:
        resp = httpx.post(f"{url}/v1/completions", timeout=timeout_s,
                          json={"model": model, "prompt": prompt, "max_tokens": max_tokens})
    except httpx.TransportError as exc:
        raise RemoteTimeout(f"vLLM {url}: {exc}") from exc
    if resp.status_code != 200:
        raise VerificationFailed(f"vLLM {url}: completion answered {resp.status_code}: "
                                 f"{resp.text[:200]}")
    body = resp.json()
    text = body["choices"][0]["text"]
    if not text.strip():
        raise VerificationFailed(f"vLLM {url}: empty completion")
    return CompletionCheck(body["model"], text, int(body["usage"]["completion_tokens"]),
                           (time.perf_counter() - started) * 1000)


def queue_depth(url: str, timeout_s: float = 5.0) -> int | None:
    """Requests vLLM holds (vllm:num_requests_running + vllm:num_requests_waiting), from its
    /metrics; None when it cannot be read."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{url}/metrics", timeout=timeout_s).text
    except httpx.HTTPError:
        return None
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            total += sum(s.value for s in family.samples)
    return int(total)


def api_answers(api_url: str, handler: str | None = None,
                timeout_s: float = 5.0) -> tuple[float, float] | None:
    """(answers, of which 5xx) the API has given so far (http_requests_total, of one
    `handler` or all), read from its /metrics directly (Prometheus would lag by a scrape);
    None when unreadable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{api_url}/metrics", timeout=timeout_s).text
    except httpx.HTTPError:
        return None
    total = failed = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name != "http_requests_total" or handler not in (None, s.labels.get("handler")):
                continue
            total += s.value
            failed += s.value if s.labels.get("status", "").startswith("5") else 0.0
    return total, failed


def server_errors(api_url: str, timeout_s: float = 5.0) -> float | None:
    """The API's count of 5xx answers so far; None when unreadable."""
    counts = api_answers(api_url, timeout_s=timeout_s)
    return None if counts is None else counts[1]
