"""After the changes: the D-Day load test and the metric watch (seed steps 6 and 7).

The thresholds and the verdicts are policy's (policy.loadtest, policy.watch); this module runs
them against the live systems. Each watch measurement runs the plan's query with its range
windows cut to the time since the watch began, so the switch's failed requests and the load
test's tail are not judged as the new phase's.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from phasegate.errors import VerificationFailed
from phasegate.flows.run import Run
from phasegate.flows.vllm_switch import wait_quiet
from phasegate.policy.plan import Watch
from phasegate.policy.transition import ChangeSet
from phasegate.policy.watch import (
    WatchState,
    assess_value,
    progress,
    record,
    scoped_query,
    watch_verdict,
)
from phasegate.tasks.loadtest import run_load_test
from phasegate.tasks.prometheus import query_instant

__all__ = ["key_metrics", "load_test", "watch"]

SETTLE_TIMEOUT_S = 120.0


def load_test(run: Run, to_phase: int, scale: float) -> dict[str, Any]:
    """The phase's load test against the API Block's URL, whatever host it is (https
    verified against the system CA store); the built-in engine, or real k6 when the plan
    names the phase's k6 script. Raises VerificationFailed naming every threshold it
    missed."""
    summary = run_load_test(phase=to_phase, target=run.api.url, scale=scale,
                            plan_path=run.plan_path)
    if summary["exit_code"] != 0:
        failed = [f"{name}: {expr} (observed {v.get('observed')})"
                  for name, stats in summary.get("metrics", {}).items()
                  for expr, v in stats.get("thresholds", {}).items() if not v.get("ok", True)]
        failed += [f"k6 script: {t}" for t in summary.get("k6", {}).get("failed_thresholds", [])]
        raise VerificationFailed(f"load test failed (exit {summary['exit_code']}): "
                                 f"{'; '.join(failed) or summary.get('abort_reason')}")
    return summary


def _settle(run: Run, changes: ChangeSet) -> None:
    """Wait (bounded) until the load test's backlog has drained from every vLLM server, so the
    watch measures the service under its own traffic, not the load test's tail."""
    urls = [run.url(c) for c in changes.containers_after]
    busy = wait_quiet(urls, 2, SETTLE_TIMEOUT_S, unreadable_busy=True)
    if busy:
        run.audit("settle: backlog still present, watching anyway", urls=busy)


def watch(run: Run, plan_watch: Watch, changes: ChangeSet) -> WatchState:
    """Let the load test's backlog drain, then measure every interval for the watch duration;
    stop at the first breached limit. Raises VerificationFailed unless the verdict is
    successful (no data is never a pass)."""
    _settle(run, changes)
    state = WatchState.empty([m.name for m in plan_watch.metrics])
    artifact = create_progress_artifact(progress=0.0, key="transition-watch",
                                        description="metric watch")
    # The first window holds only samples taken after the watch began; the watch's duration
    # counts from its first measurement.
    time.sleep(plan_watch.min_window.total_seconds())
    started = time.monotonic()
    for _ in range(plan_watch.measurements + 1):  # bounded by the plan, not the clock alone
        elapsed = time.monotonic() - started
        since_start = plan_watch.min_window + timedelta(seconds=elapsed)
        for metric in plan_watch.metrics:
            m = query_instant(run.prom, scoped_query(metric, plan_watch, since_start))
            state = record(state, metric.name, assess_value(metric, m.value, m.error),
                           m.value, m.error, elapsed)
        decision = watch_verdict(state, plan_watch, elapsed)
        update_progress_artifact(artifact_id=artifact,  # type: ignore[arg-type]
                                 progress=progress(state, plan_watch, elapsed)["percent"])
        if decision.status != "running":
            break
        time.sleep(plan_watch.interval.total_seconds())
    run.audit("watch", verdict=decision.status, reason=decision.reason)
    if decision.status != "successful":
        raise VerificationFailed(f"metric watch {decision.status}: {decision.reason}")
    return state


def key_metrics(run: Run, plan_watch: Watch,
                window: timedelta | None = None) -> dict[str, tuple[float | None, str]]:
    """The watch's own metrics (API p95, GPU utilisation, error rate, LLM queue) right now, for
    the postmortem's before/after: as the plan writes them, or over the last `window` only."""
    queries = {m.name: scoped_query(m, plan_watch, window) if window else m.query
               for m in plan_watch.metrics}
    return {m.name: (query_instant(run.prom, queries[m.name]).value, m.unit)
            for m in plan_watch.metrics}
