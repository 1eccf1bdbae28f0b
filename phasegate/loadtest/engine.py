"""The load-test engine: runs k6-style scenarios against one target and measures honestly.

`run(options, target, scale=..., progress=...) -> RunResult`. Every scenario runs concurrently
from its start_time, in one event loop (uvloop when installed), one keep-alive connection per VU:

- VU executors (constant-vus, ramping-vus) are closed loops: VU i runs iterations back to back
  while the schedule (`vus_at`) says at least i + 1 VUs are active; a VU above the target
  finishes its iteration and then parks (k6's graceful ramp-down).
- Arrival-rate executors are an open model: ONE scheduler coroutine walks `arrival_offsets`
  and hands each iteration to an idle VU (allocating up to max_vus); with none idle and
  max_vus reached the iteration is counted in `dropped_iterations` and not run (k6's rule).
  The iteration carries its intended start, and its first request's latency counts from it,
  so a stalled target or a late generator shows up in the percentiles (vu.py).

Bounded: each scenario stops starting iterations at its end, lets running ones finish for
graceful_stop, then cancels them; the whole run has a hard deadline on top. abortOnFail
thresholds are checked every second (`abort_due`). Only the given target is contacted, over
http or https (`TlsOptions`); an https target's certificate is checked once before the load
starts (`http.tls_preflight`), so a refused certificate ends the run with one
TlsVerificationFailed instead of a failed request per iteration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import resource
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from phasegate.errors import ConfigError
from phasegate.loadtest.http import HttpClient, Target, parse_target, tls_context, tls_preflight
from phasegate.loadtest.journeys import JOURNEYS, Journey
from phasegate.loadtest.vu import Iteration, Recorder, Vu
from phasegate.policy.loadtest.metrics import MetricStore, Tags
from phasegate.policy.loadtest.scenario import Options, arrival_offsets, duration_s, scaled, vus_at
from phasegate.policy.loadtest.summary import exit_code, summary_export
from phasegate.policy.loadtest.thresholds import abort_due, evaluate, evaluate_windows

__all__ = ["Progress", "ProgressCallback", "RunResult", "TlsOptions", "check_target", "run",
           "run_async"]

log = logging.getLogger("phasegate.loadtest")
_now = time.monotonic
T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HARD_MARGIN_S = 5.0  # beyond every scenario's end + graceful stop: a safety net, not a knob
CONTROL_TICK_S = 0.1  # how often ramping-vus re-reads its schedule


@dataclass(frozen=True)
class Progress:
    """A live snapshot, once a second."""

    elapsed_s: float
    total_s: float
    vus: int
    vus_max: int
    iterations: int
    requests: int
    rps: float
    p95_ms: float | None
    failed: int
    dropped: int

    def line(self) -> str:
        """One terminal line: elapsed/total, VUs, iterations, req/s, p95, errors, drops."""
        p95 = "-" if self.p95_ms is None else f"{self.p95_ms:.1f}ms"
        share = self.failed / self.requests if self.requests else 0.0
        return (f"{self.elapsed_s:6.1f}s/{self.total_s:.0f}s  vus {self.vus}/{self.vus_max}  "
                f"iters {self.iterations}  req/s {self.rps:.1f}  p95 {p95}  "
                f"errors {self.failed} ({share:.2%})  dropped {self.dropped}")


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class TlsOptions:
    """How an https target is verified: the system CA store (default; `SSL_CERT_FILE` is
    honoured), `ca_file` instead, or not at all (`insecure`: the engine logs a warning)."""

    ca_file: str | None = None
    insecure: bool = False


@dataclass
class RunResult:
    """The k6-layout summary, the exit code (0 / 99), why the run was aborted (or None), and
    the monotonic time the run started (arrival offsets count from it)."""

    summary: dict[str, Any]
    exit_code: int
    aborted: str | None
    started: float


def _sec(value: Any) -> float:
    """Seconds from a timedelta or a number of seconds (the scenario models' durations)."""
    if value is None:
        return 0.0
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass
class _Scenario:
    """One scenario as the engine runs it (already time-scaled)."""

    name: str
    spec: Any
    journey: Journey
    base_tags: Tags
    env: dict[str, str]
    start_s: float
    duration_s: float
    graceful_s: float
    active: Callable[[], int] = field(default=lambda: 0)

    @property
    def open_model(self) -> bool:
        """Arrival-rate executors: iterations follow a schedule, not the VUs' pace."""
        return "arrival-rate" in str(self.spec.executor)


def _prepare(name: str, spec: Any, scale: float) -> _Scenario:
    spec = scaled(spec, scale) if scale != 1.0 else spec
    exec_name = str(spec.exec)
    if exec_name not in JOURNEYS:
        raise ConfigError(f"scenarios.{name}.exec: unknown journey {exec_name!r} "
                          f"(known: {', '.join(sorted(JOURNEYS))})")
    own = tuple(sorted((str(k), str(v)) for k, v in spec.tags.items()))
    return _Scenario(name, spec, JOURNEYS[exec_name], (("scenario", name), *own),
                     {str(k): str(v) for k, v in spec.env.items()}, _sec(spec.start_time),
                     duration_s(spec, graceful=False), _sec(spec.graceful_stop))


class _Ramp:
    """A VU executor's current target; parked VUs wait on `wake`, renewed at each change."""

    def __init__(self) -> None:
        self.target = 0
        self.wake = asyncio.Event()

    def set(self, target: int) -> None:
        """Change the target and wake every parked VU to re-check its index."""
        if target != self.target:
            self.target = target
            self.release()

    def release(self) -> None:
        """Wake every parked VU (at a change, and at the scenario's end)."""
        old, self.wake = self.wake, asyncio.Event()
        old.set()


@dataclass
class _Pool:
    """An arrival-rate scenario's VUs: idle ones, how many exist, the cap, running iterations."""

    idle: list[Vu]
    allocated: int
    cap: int
    running: set[asyncio.Task[None]] = field(default_factory=set)

    def take(self, new_vu: Callable[[], Vu]) -> Vu | None:
        """An idle VU, else a new one below the cap, else None (the iteration is dropped)."""
        if self.idle:
            return self.idle.pop()
        if self.allocated < self.cap:
            self.allocated += 1
            return new_vu()
        return None

    def started(self, task: asyncio.Task[None], vu: Vu) -> None:
        """Track `task`; its VU goes back to the idle list when it ends."""
        self.running.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.running.discard(t)
            self.idle.append(vu)
        task.add_done_callback(done)


class _Engine:
    """One run: the scenarios, the shared recorder, every task it started."""

    def __init__(self, options: Options, target: Target, scale: float,
                 progress: ProgressCallback | None, window_s: float,
                 tls: TlsOptions = TlsOptions()) -> None:
        self.options, self.target, self.scale, self.progress = options, target, scale, progress
        # One context for every VU: loading the CA store once, not once per connection.
        self.tls = tls
        self.ssl = tls_context(tls.ca_file, tls.insecure) if target.tls else None
        if target.tls and tls.insecure:
            log.warning("TLS certificate verification is OFF for %s (--insecure)", target.host)
        self.thresholds = options.parsed_thresholds()
        self.scenarios = [_prepare(n, s, scale) for n, s in options.scenarios.items()]
        self.rec = Recorder(MetricStore(window_s), _now())
        self.tasks: set[asyncio.Task[Any]] = set()
        self.clients: list[HttpClient] = []
        self.vus_max = 0
        self.total_s = max((s.start_s + s.duration_s for s in self.scenarios), default=0.0)
        self.stop_s = max((s.start_s + s.duration_s + s.graceful_s for s in self.scenarios),
                          default=0.0)

    # ---------------------------------------------------------------- plumbing
    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _new_vu(self) -> Vu:
        client = HttpClient(self.target, ssl_context=self.ssl)
        self.clients.append(client)
        self.vus_max += 1
        return Vu(self.vus_max, client)

    async def _until(self, when: float) -> None:
        delay = when - _now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _iteration(self, sc: _Scenario, vu: Vu, intended: float) -> None:
        """Run the journey once; count it (k6 does not count interrupted iterations).
        iteration_duration counts from the iteration's actual start, as k6's does."""
        began = _now()
        try:
            await sc.journey(Iteration(self.rec, vu, sc.base_tags, intended, self.scale, sc.env))
        except Exception:  # a journey bug must not stop the others; it shows in the log
            log.exception("iteration of scenario %s failed", sc.name)
        vu.iterations += 1
        self.rec.iterations += 1
        t = self.rec.t()
        self.rec.store.add("iterations", 1, t, sc.base_tags)
        self.rec.store.add("iteration_duration", (_now() - began) * 1000.0, t, sc.base_tags)

    async def _drain(self, tasks: set[asyncio.Task[Any]], grace_s: float) -> None:
        """Let running iterations finish for `grace_s`, then cancel the rest."""
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=max(grace_s, 0.001))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # ---------------------------------------------------------------- executors
    async def _closed(self, sc: _Scenario) -> None:
        """constant-vus / ramping-vus: VU i loops while vus_at(t) > i."""
        start = self.rec.t0 + sc.start_s
        end = start + sc.duration_s
        ramp = _Ramp()
        sc.active = lambda: ramp.target if _now() < end else 0
        await self._until(start)
        loops: set[asyncio.Task[None]] = set()
        while _now() < end:
            wanted = vus_at(sc.spec, _now() - start)
            while len(loops) < wanted:
                loops.add(self._spawn(self._vu_loop(sc, self._new_vu(), len(loops), ramp, end)))
            ramp.set(wanted)
            await asyncio.sleep(min(CONTROL_TICK_S, max(0.0, end - _now())))
        ramp.release()
        await self._drain(loops, sc.graceful_s)

    async def _vu_loop(self, sc: _Scenario, vu: Vu, index: int, ramp: _Ramp,
                       end: float) -> None:
        while _now() < end:
            if index >= ramp.target:
                await ramp.wake.wait()  # parked: ramped down below this VU
                continue
            await self._iteration(sc, vu, _now())

    async def _open(self, sc: _Scenario) -> None:
        """Arrival-rate executors: one scheduler hands each iteration to an idle VU."""
        start = self.rec.t0 + sc.start_s
        end = start + sc.duration_s
        pre = sc.spec.pre_allocated_vus
        pool = _Pool([self._new_vu() for _ in range(pre)], pre, max(pre, sc.spec.max_vus))
        sc.active = lambda: len(pool.running)
        for offset in arrival_offsets(sc.spec):
            intended = start + offset
            if intended > end + 1e-6:  # the schedule ends at `end` (one due at `end` runs)
                break
            await self._until(intended)
            vu = pool.take(self._new_vu)
            if vu is None:
                self.rec.dropped += 1
                self.rec.store.add("dropped_iterations", 1, self.rec.t(intended), sc.base_tags)
                continue
            pool.started(self._spawn(self._iteration(sc, vu, intended)), vu)
        await self._until(end)
        await self._drain(pool.running, sc.graceful_s)

    async def _scenario(self, sc: _Scenario) -> None:
        await (self._open(sc) if sc.open_model else self._closed(sc))

    # ---------------------------------------------------------------- monitor and result
    def _snapshot(self, last_requests: int, dt: float) -> Progress:
        rec = self.rec
        p95 = rec.store.select("http_req_duration").percentile(95)  # type: ignore[union-attr]
        return Progress(rec.t(), self.total_s, sum(s.active() for s in self.scenarios),
                        self.vus_max, rec.iterations, rec.requests,
                        (rec.requests - last_requests) / dt if dt > 0 else 0.0, p95,
                        rec.failed, rec.dropped)

    async def _monitor(self) -> str:
        """Once a second: gauges, progress, abortOnFail. Returns only to abort the run."""
        last_t, last_n = _now(), 0
        while True:
            await asyncio.sleep(1.0)
            snap = self._snapshot(last_n, _now() - last_t)
            last_t, last_n = _now(), snap.requests
            self.rec.store.add("vus", snap.vus, snap.elapsed_s)
            self.rec.store.add("vus_max", snap.vus_max, snap.elapsed_s)
            if self.progress is not None:
                self.progress(snap)
            hit = abort_due(self.thresholds, self.rec.store, snap.elapsed_s)
            if hit is not None:
                return f"threshold {hit.label} crossed (abortOnFail)"

    async def run(self) -> RunResult:
        """Run every scenario; stop early on abortOnFail or at the hard deadline. Raises
        TlsVerificationFailed before any load when an https target's certificate is refused."""
        if self.ssl is not None:
            await tls_preflight(self.target, self.ssl, self.tls.ca_file)
        self.rec.t0 = _now()  # the run's clock starts with the load, after the preflight
        main = self._spawn(self._all())
        monitor = self._spawn(self._monitor())
        deadline = self.stop_s + HARD_MARGIN_S
        done, _ = await asyncio.wait({main, monitor}, timeout=deadline,
                                     return_when=asyncio.FIRST_COMPLETED)
        aborted = monitor.result() if monitor in done else None
        if not done:
            aborted = f"hard time limit {deadline:.0f}s reached"
        await self._cancel_all()
        if main in done and main.exception() is not None:
            raise main.exception()  # type: ignore[misc]
        return self._result(aborted)

    async def _all(self) -> None:
        await asyncio.gather(*(self._scenario(sc) for sc in self.scenarios))

    async def _cancel_all(self) -> None:
        pending = [t for t in self.tasks if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for client in self.clients:
            client.close()

    def _result(self, aborted: str | None) -> RunResult:
        store = self.rec.store
        results = evaluate(self.thresholds, store, elapsed_s=self.rec.t())
        meta = {"target": self.target.url, "scale": self.scale, "aborted": aborted,
                "duration_s": round(self.rec.t(), 3),
                "scenarios": [sc.name for sc in self.scenarios]}
        summary = summary_export(store, results, evaluate_windows(self.thresholds, store), meta)
        return RunResult(summary, exit_code(results, aborted is not None), aborted, self.rec.t0)


def _raise_fd_limit() -> None:
    """One socket per VU: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_target(url: str) -> Target:
    """Parse an http(s) target URL; raises ConfigError for anything else."""
    try:
        return parse_target(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


async def run_async(options: Options, target: str, *, scale: float = 1.0,
                    progress: ProgressCallback | None = None, window_s: float = 10.0,
                    tls: TlsOptions = TlsOptions()) -> RunResult:
    """Run `options` against `target` in the current event loop. See `run`."""
    engine = _Engine(options, check_target(target), scale, progress, window_s, tls)
    _raise_fd_limit()
    return await engine.run()


def run(options: Options, target: str, *, scale: float = 1.0,
        progress: ProgressCallback | None = None, window_s: float = 10.0,
        tls: TlsOptions = TlsOptions()) -> RunResult:
    """Run every scenario of `options` against `target` and return the summary.

    `scale` multiplies every scenario duration (think time and rates unchanged) so a
    9-minute phase test fits the lab; `progress` is called once a second; `window_s` is the
    length of the per-window threshold view; `tls` says how an https target is verified.
    Runs in a fresh uvloop (or asyncio) loop, in a helper thread when the caller already has a
    loop running. Raises ConfigError (bad target, journey or CA file), TlsVerificationFailed
    (an https target's certificate refused), PlanError (bad thresholds).
    """
    def go() -> RunResult:
        return _run_loop(run_async(options, target, scale=scale, progress=progress,
                                   window_s=window_s, tls=tls))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return go()
    # The caller (an async flow) already runs a loop in this thread: one loop per thread.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="loadtest") as pool:
        return pool.submit(go).result()


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """`coro` in a fresh loop. In the main thread a SIGTERM or SIGINT stops the test and is
    then given to the handler the caller had (Prefect's raises TerminationSignal): a Python
    handler that raised inside the loop's callbacks would be caught and logged by the loop,
    and the test would run on."""
    if threading.current_thread() is not threading.main_thread():
        return _new_loop(coro)
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    caught: list[int] = []
    try:
        return _new_loop(_stoppable(coro, [s for s, h in before.items()
                                           if h is not signal.SIG_IGN], caught))
    except asyncio.CancelledError:
        if not caught:
            raise
    finally:
        for sig, handler in before.items():  # the loop leaves SIG_DFL behind
            signal.signal(sig, handler)
    signal.raise_signal(caught[0])  # its handler raises here (or the default ends us)
    raise asyncio.CancelledError(f"load test stopped by {signal.Signals(caught[0]).name}")


async def _stoppable(coro: Coroutine[Any, Any, T], signals: list[int], caught: list[int]
                     ) -> T:
    """Await `coro`; one of `signals` cancels it and is recorded in `caught`."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    if task is None:  # not run by a loop's runner: nothing to cancel
        return await coro

    def stop(signum: int) -> None:
        log.warning("load test stopped by %s", signal.Signals(signum).name)
        caught.append(signum)
        task.cancel()

    for sig in signals:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await coro
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _new_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
