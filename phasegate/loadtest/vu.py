"""What one iteration of a journey sees: its VU's client, timed requests, checks, sleeps.

Every sample goes to the run's `MetricStore` with tags built in a fixed order (scenario, the
scenario's own tags, then name, method, status, expected_response), cached per combination
because building tuples per request would cost more than recording them.

Two latencies per request:

- `http_req_duration` and `http_req_waiting` mean exactly what k6's do (the engine claims k6's
  names, and thresholds written for k6 must give the same verdicts): sending + waiting +
  receiving, from the moment the request is written on an open connection to its last byte;
  connecting, TLS handshaking and waiting for the generator are not in it. k6's checks on
  `r.timings.duration` are this one (`Timed.duration_ms`).
- `http_req_latency` (phasegate's own name; k6 has no such metric) counts from the INTENDED
  send time: the first request of an arrival-rate iteration from the moment the schedule said
  the iteration starts, a request after `sleep(s)` from the moment the sleep should have ended,
  connecting included. A generator that falls behind (event loop busy, timers late) reports
  its own lateness here instead of hiding it, which is what "no coordinated omission" needs
  (wrk2's rule). On a generator that keeps up, it equals http_req_duration plus connecting.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from phasegate.loadtest.http import ChunkSink, HttpClient, Response
from phasegate.policy.loadtest.metrics import MetricStore, Tags

__all__ = ["Iteration", "Recorder", "Timed", "Vu"]

_now = time.monotonic


@dataclass
class Recorder:
    """The run's shared measurement state: the store, the clock origin, live counters."""

    store: MetricStore
    t0: float
    requests: int = 0
    failed: int = 0
    iterations: int = 0
    dropped: int = 0
    _tags: dict[tuple[Any, ...], Tags] = field(default_factory=dict)

    def t(self, when: float | None = None) -> float:
        """Seconds since the run started (now, or at monotonic time `when`)."""
        return (_now() if when is None else when) - self.t0

    def tags(self, base: Tags, *extra: tuple[str, str]) -> Tags:
        """`base` + `extra`, cached (the same few combinations repeat millions of times)."""
        key = (base, extra)
        found = self._tags.get(key)
        if found is None:
            found = self._tags[key] = base + extra
        return found


@dataclass(slots=True)
class Vu:
    """A virtual user: an id and its own keep-alive connection (as k6's VUs have)."""

    id: int
    client: HttpClient
    iterations: int = 0


@dataclass(slots=True)
class Timed:
    """A response with k6's duration (ms, sending to last byte) and the latency from the
    intended send time (ms, see the module docstring)."""

    response: Response
    duration_ms: float
    latency_ms: float

    @property
    def status(self) -> int:
        """HTTP status (0: no answer)."""
        return self.response.status


class Iteration:
    """One run of a journey by one VU, starting at `intended` (monotonic seconds)."""

    def __init__(self, rec: Recorder, vu: Vu, base_tags: Tags, intended: float,
                 scale: float, env: dict[str, str]) -> None:
        self.rec, self.vu, self.base_tags = rec, vu, base_tags
        self.intended = intended
        self.scale = scale
        self.env = env
        self._next_send: float | None = intended

    async def request(self, method: str, path: str, body: bytes = b"", *, name: str = "",
                      sink: ChunkSink | None = None, timeout_s: float | None = None) -> Timed:
        """Send one request, record http_* samples, return it with both latencies."""
        intended, self._next_send = self._next_send, None
        began = _now()
        r = await self.vu.client.request(method, path, body, sink=sink, timeout_s=timeout_s)
        start = min(began, r.sent) if intended is None else min(r.sent, intended)
        duration_ms = (r.done - r.sent) * 1000.0
        latency_ms = (r.done - start) * 1000.0
        self._record(r, method, name or path, duration_ms, latency_ms)
        return Timed(r, duration_ms, latency_ms)

    def _record(self, r: Response, method: str, name: str, duration_ms: float,
                latency_ms: float) -> None:
        rec, add, t = self.rec, self.rec.store.add, self.rec.t(r.done)
        ok = 200 <= r.status < 400
        tags = rec.tags(self.base_tags, ("name", name), ("method", method),
                        ("status", str(r.status)), ("expected_response", "true" if ok else "false"))
        add("http_reqs", 1, t, tags)
        add("http_req_duration", duration_ms, t, tags)
        add("http_req_latency", latency_ms, t, tags)
        add("http_req_waiting", (r.first_byte - r.sent) * 1000.0, t, tags)
        add("http_req_failed", 0 if ok else 1, t, tags)
        add("data_sent", r.bytes_sent, t, tags)
        add("data_received", r.bytes_received, t, tags)
        rec.requests += 1
        rec.failed += not ok

    def check(self, name: str, ok: bool) -> bool:
        """k6's check(): one `checks` sample tagged with the check's name; returns `ok`."""
        self.rec.store.add("checks", 1 if ok else 0, self.rec.t(),
                           self.rec.tags(self.base_tags, ("check", name)))
        return ok

    def add(self, metric: str, value: float, *extra: tuple[str, str]) -> None:
        """A custom sample (errors, llm_*) with the scenario's tags plus `extra`."""
        self.rec.store.add(metric, value, self.rec.t(), self.rec.tags(self.base_tags, *extra))

    async def sleep(self, seconds: float) -> None:
        """k6's sleep(); the next request's latency counts from when it should end.

        Think time is NOT time-scaled: a compressed lab run keeps each VU's real request rate
        and is the real scenario's load for a shorter time (scaling sleeps would multiply the
        load by 1/scale)."""
        until = _now() + seconds
        self._next_send = until
        await asyncio.sleep(max(0.0, until - _now()))
