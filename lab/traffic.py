"""Traffic driver: a steady open-model load of user journeys against the API simulator.

`python -m lab.traffic --api-url http://127.0.0.1:P --lab-dir D`

`rate` journeys start per second, evenly spaced, whatever the API's latency (open model: a slow
API does not slow the arrivals; the in-flight cap bounds memory and what could not start is
counted as `skipped`). The rate comes from `<lab>/control/traffic.json` (`lab.control.
set_traffic_rate`), re-read four times a second; 0 = idle. A journey is the seed's k6 one: GET
/v1/questions?subject=<random>, then with probability `--feedback-share` (0.3) POST /v1/feedback.
Every `--summary-interval` seconds (10) one line is logged: journeys, requests sent, ok, errors,
skipped and p95 latency of that window. Only 127.0.0.1 targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from phasegate.lab.control import read_traffic_rate
from phasegate.lab.layout import LabLayout

__all__ = ["SUBJECTS", "TrafficConfig", "TrafficDriver", "Window", "main", "p95"]

log = logging.getLogger("phasegate.lab.traffic")

SUBJECTS = ("math", "physics", "chemistry", "biology", "english", "korean", "history")
ANSWERS = ("x = 5", "42", "photosynthesis", "F = ma", "세종대왕", "H2O", "I don't know")
RATE_REFRESH_S = 0.25  # well under the promised 1 s, so a rate change takes effect promptly
MAX_CATCH_UP_S = 1.0  # after a stall, do not burst more than one second of arrivals


@dataclass(frozen=True)
class TrafficConfig:
    """Command-line settings of the traffic driver."""

    api_url: str
    layout: LabLayout
    feedback_share: float = 0.3
    max_in_flight: int = 256
    request_timeout_s: float = 30.0
    summary_interval_s: float = 10.0


@dataclass
class Window:
    """Counters of one summary window."""

    journeys: int = 0
    sent: int = 0
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def line(self, rate: float, in_flight: int) -> str:
        """The one-line summary."""
        return (f"traffic rate={rate:g}/s journeys={self.journeys} sent={self.sent} "
                f"ok={self.ok} errors={self.errors} skipped={self.skipped} "
                f"p95_ms={p95(self.latencies_ms):.1f} in_flight={in_flight}")


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank) of `values`, 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def check_target(url: str) -> str:
    """`url` without a trailing slash; ValueError unless it is http://127.0.0.1:PORT."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1":
        raise ValueError(f"the traffic driver only targets http://127.0.0.1 (got {url!r})")
    return url.rstrip("/")


class TrafficDriver:
    """Starts journeys at the configured rate until `stop` is set."""

    def __init__(self, cfg: TrafficConfig) -> None:
        self.cfg = cfg
        self.base = check_target(cfg.api_url)
        self.window = Window()
        self.rate = 0.0
        self.stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Drive load until `stop`; then cancel what is in flight."""
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout_s)
        conn = aiohttp.TCPConnector(limit=self.cfg.max_in_flight)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
            reporter = asyncio.create_task(self._report())
            try:
                await self._arrivals(session)
            finally:
                reporter.cancel()
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(reporter, *self._tasks, return_exceptions=True)

    async def _arrivals(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        rate_read_at = -RATE_REFRESH_S
        while not self.stop.is_set():
            now = loop.time()
            if now - rate_read_at >= RATE_REFRESH_S:
                self.rate, rate_read_at = read_traffic_rate(self.cfg.layout), now
            if self.rate <= 0:
                next_at = now
                await self._sleep(RATE_REFRESH_S)
                continue
            next_at = min(next_at, now + 1.0 / self.rate)  # the rate may have just gone up
            if next_at > now:
                await self._sleep(min(next_at - now, RATE_REFRESH_S))
                continue
            self._start_journey(session)
            next_at = max(next_at + 1.0 / self.rate, now - MAX_CATCH_UP_S)

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    def _start_journey(self, session: aiohttp.ClientSession) -> None:
        if len(self._tasks) >= self.cfg.max_in_flight:
            self.window.skipped += 1
            return
        self.window.journeys += 1
        task = asyncio.create_task(self._journey(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _journey(self, session: aiohttp.ClientSession) -> None:
        subject = random.choice(SUBJECTS)
        questions = await self._request(session, "GET", f"/v1/questions?subject={subject}")
        if random.random() >= self.cfg.feedback_share:
            return
        qid: Any = f"{subject}-1"
        if isinstance(questions, list) and questions and isinstance(questions[0], dict):
            qid = random.choice(questions).get("id", qid)
        await self._request(session, "POST", "/v1/feedback",
                            {"question_id": qid, "user_answer": random.choice(ANSWERS)})

    async def _request(self, session: aiohttp.ClientSession, method: str, path: str,
                       payload: dict[str, Any] | None = None) -> Any:
        """One request; counts it; returns the JSON body of a 200 answer, else None."""
        self.window.sent += 1
        start = time.perf_counter()
        try:
            async with session.request(method, self.base + path, json=payload) as resp:
                data = await resp.json(content_type=None) if resp.status == 200 else None
                ok = resp.status < 400
        except (aiohttp.ClientError, TimeoutError, ValueError):
            data, ok = None, False
        self.window.latencies_ms.append((time.perf_counter() - start) * 1000.0)
        if ok:
            self.window.ok += 1
        else:
            self.window.errors += 1
        return data

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.summary_interval_s)
            window, self.window = self.window, Window()
            log.info("%s", window.line(self.rate, len(self._tasks)))


async def _amain(cfg: TrafficConfig) -> None:
    driver = TrafficDriver(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, driver.stop.set)
    log.info("traffic driver -> %s (rate from %s)", driver.base, cfg.layout.traffic_file)
    await driver.run()
    log.info("traffic driver stopped")


def main(argv: list[str] | None = None) -> None:
    """Run the traffic driver until SIGTERM/SIGINT (exit code 2 for a non-local target)."""
    p = argparse.ArgumentParser(prog="python -m lab.traffic",
                                description="open-model user journeys against the API")
    p.add_argument("--api-url", required=True)
    p.add_argument("--lab-dir", required=True)
    p.add_argument("--feedback-share", type=float, default=TrafficConfig.feedback_share)
    p.add_argument("--max-in-flight", type=int, default=TrafficConfig.max_in_flight)
    p.add_argument("--summary-interval", type=float, default=TrafficConfig.summary_interval_s)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    cfg = TrafficConfig(api_url=args.api_url, layout=LabLayout(Path(args.lab_dir).resolve()),
                        feedback_share=args.feedback_share, max_in_flight=args.max_in_flight,
                        summary_interval_s=args.summary_interval)
    try:
        check_target(cfg.api_url)
    except ValueError as exc:
        p.error(str(exc))
    asyncio.run(_amain(cfg))


if __name__ == "__main__":
    main()
