"""The load-test stage of a phase transition, as a Prefect task.

`run_load_test(phase=N | options={...}, target=URL, scale=F) -> summary dict` runs the engine
(phasegate.loadtest.engine), or the real k6 when the plan's phase names a k6 script (or
`k6_script` is given: phasegate.loadtest.k6run, judged by the same thresholds), and publishes
three artifacts:

- a progress artifact, updated about once a second while the test runs (percent of the
  planned duration; the description is the live progress line);
- a table artifact `load-test-<name>`: metric, avg, p95, p99 (or the rate / count) and the
  thresholds' verdicts;
- a table artifact `load-test-<name>-windows`: every threshold's verdict per time window, so
  a 30 s spike inside a long run is visible even when the whole-run verdict passes.

Never retried (retries=0): a load test is not idempotent in effect. It moves the very metrics
the transition's watch and triggers read, it fills caches and queues, and a second run right
after a failed one measures a different system; the caller decides whether to run it again.
The summary's `exit_code` (0 pass, 99 threshold failed, 105 aborted) is the verdict; the task
itself fails only when the test could not run at all (bad options or target, a refused TLS
certificate, no k6 for a k6 script).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from phasegate.loadtest.engine import Progress, RunResult, TlsOptions, run
from phasegate.loadtest.k6run import run_k6
from phasegate.loadtest.options import phase_options
from phasegate.policy.loadtest.scenario import Options, parse_options

__all__ = ["run_load_test", "summary_rows", "window_rows"]


class _ProgressPublisher:
    """Takes the engine's progress callbacks (cheap: it keeps the latest) and updates the
    artifact from its own thread, so a slow API call never stalls the load generator."""

    def __init__(self, artifact_id: UUID, interval_s: float = 1.0) -> None:
        self.artifact_id, self.interval_s = artifact_id, interval_s
        self.latest: Progress | None = None
        self._sent: Progress | None = None
        self._stop = threading.Event()
        # The thread runs in a copy of this context: Prefect's settings (API URL) come along.
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._loop,), name="loadtest-progress",
                                        daemon=True)

    def __call__(self, progress: Progress) -> None:
        self.latest = progress

    def __enter__(self) -> _ProgressPublisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._publish()

    def _publish(self) -> None:
        p = self.latest
        if p is None or p is self._sent:
            return
        self._sent = p
        percent = min(100.0, 100.0 * p.elapsed_s / p.total_s) if p.total_s > 0 else 0.0
        try:
            update_progress_artifact(self.artifact_id, progress=percent, description=p.line())
        except Exception as exc:  # noqa: BLE001 - progress display must never fail the test
            logging.getLogger(__name__).warning("progress artifact not updated: %s", exc)


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def summary_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per metric of a summary: avg/p95/p99 for trends, value or count otherwise,
    and the metric's thresholds as `expr: pass|FAIL|no data`."""
    rows = []
    for name, stats in sorted(summary["metrics"].items()):
        verdicts = [f"{expr}: {'no data' if v.get('no_data') else 'pass' if v['ok'] else 'FAIL'}"
                    for expr, v in stats.get("thresholds", {}).items()]
        value = stats.get("value", stats.get("count"))
        rows.append({"metric": name, "avg": _fmt(stats.get("avg")),
                     "p95": _fmt(stats.get("p(95)")), "p99": _fmt(stats.get("p(99)")),
                     "value": _fmt(value), "thresholds": "; ".join(verdicts)})
    return rows


def window_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per (threshold, window) of a summary's `windows`."""
    return [{key: _fmt(value) for key, value in row.items()} for row in summary["windows"]]


def _options(phase: int | None, options: dict[str, Any] | None,
             plan_path: str | None) -> tuple[str, Options]:
    if (phase is None) == (options is None):
        raise ValueError("give exactly one of phase and options")
    if phase is not None:
        return f"phase-{phase}", phase_options(phase, plan_path)
    parsed = parse_options(options)
    return "-".join(parsed.scenarios)[:40].lower().replace("_", "-"), parsed


def _plan_k6_script(phase: int | None, plan_path: str | None) -> Path | None:
    """The phase's k6 script from the plan, relative to the plan file's folder (or None)."""
    if phase is None:
        return None
    from phasegate.policy.plan import DEFAULT_PLAN_PATH, load_plan

    script = load_plan(plan_path).phase(phase).load_test.k6_script
    return None if script is None else Path(plan_path or DEFAULT_PLAN_PATH).parent / script


def _k6_run(script: Path, phase: int | None, options: dict[str, Any] | None,
            plan_path: str | None) -> tuple[str, dict[str, Any]]:
    """The artifact name and the thresholds that judge a k6 script's run."""
    if phase is not None:
        return f"phase-{phase}", dict(phase_options(phase, plan_path).thresholds)
    return script.stem.lower().replace("_", "-")[:40], dict((options or {}).get(
        "thresholds", {}))


# No Prefect timeout: in the main thread it is a SIGALRM, whose exception the load test's
# event loop would catch and log. The test is bounded by its own scenario durations, and a
# transition's cancel watch stops it at the run's time limit (SIGTERM, which the loop hands
# on: phasegate.loadtest.engine._run_loop).
@task(retries=0, task_run_name="load-test-{target}")
def run_load_test(target: str, phase: int | None = None, options: dict[str, Any] | None = None,
                  scale: float = 1.0, plan_path: str | None = None,
                  window_s: float = 10.0, k6_script: str | None = None,
                  ca_file: str | None = None, insecure: bool = False) -> dict[str, Any]:
    """Run the plan's phase-`phase` load test (or k6 `options`) against `target` (any http(s)
    URL), `scale` x its durations; return the summary dict with `exit_code` added.

    When the phase names a k6 script in the plan, or `k6_script` is given, the real k6 runs it
    and the phase's thresholds (or `options["thresholds"]`) judge it. `ca_file`/`insecure`:
    how an https target is verified (system CA store by default). Publishes the progress,
    summary and per-window artifacts (module docstring). Raises PlanError / ConfigError /
    TlsVerificationFailed when the test cannot run.
    """
    script = Path(k6_script) if k6_script else _plan_k6_script(phase, plan_path)
    tls = TlsOptions(ca_file, insecure)
    if script is not None:
        name, thresholds = _k6_run(script, phase, options, plan_path)
    else:
        name, opts = _options(phase, options, plan_path)
    # Called from sync code, these return the UUID (the coroutine branch is for async callers).
    artifact = cast(UUID, create_progress_artifact(0.0, key=f"load-test-{name}-progress",
                                                   description=f"load test {name} starting"))
    result: RunResult
    if script is not None:  # k6 reports at its end only: progress 0 -> 100
        result = run_k6(script, target, thresholds, scale=scale, window_s=window_s, tls=tls)
    else:
        with _ProgressPublisher(artifact) as publisher:
            result = run(opts, target, scale=scale, progress=publisher, window_s=window_s,
                         tls=tls)
    update_progress_artifact(artifact, progress=100.0,
                             description=f"done: exit code {result.exit_code}")
    summary = {**result.summary, "exit_code": result.exit_code}
    create_table_artifact(summary_rows(summary), key=f"load-test-{name}",
                          description=f"load test {name} against {target}: exit code "
                          f"{result.exit_code}" + (f", aborted: {result.aborted}"
                                                   if result.aborted else ""))
    create_table_artifact(window_rows(summary) or [{"window": "none"}],
                          key=f"load-test-{name}-windows",
                          description=f"threshold verdicts per {window_s:g} s window")
    return summary
