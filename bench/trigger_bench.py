"""Benchmark: trigger-check and capacity-forecast wall time on the lab (90 days of history).

Starts a lab in a temp dir, runs each flow N times through the lab's Prefect server and prints
a table (min / median / max seconds), with the policy-only share measured in the same run.

    .venv/bin/python bench/trigger_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phasegate.lab.layout import LabLayout
from phasegate.lab.supervisor import UpOptions, down, up


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    """Wall seconds of `runs` calls."""
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def policy_only(report_json: dict[str, Any], runs: int) -> list[float]:
    """Seconds to re-decide from already fetched daily values (no I/O)."""
    from phasegate.policy.daily import DayValue
    from phasegate.policy.plan import load_plan
    from phasegate.policy.triggers import evaluate_condition, evaluate_transition

    transition = load_plan().transition(1, 2)
    by_name = {c["name"]: c for c in report_json["conditions"]}

    def once() -> None:
        results = []
        for cond in transition.conditions:
            days = [DayValue(datetime.fromisoformat(d["day"]).date(), d["value"])
                    for d in by_name[cond.id]["daily"] if "day" in d]
            results.append(evaluate_condition(cond, days) if days else
                           evaluate_condition(cond, [], manual_value=None))
        evaluate_transition(transition, results)

    return timed(once, runs)


def main() -> None:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from phasegate.flows.capacity_forecast import capacity_forecast
    from phasegate.flows.trigger_check import trigger_check

    with tempfile.TemporaryDirectory(prefix="phasegate-bench-") as tmp:
        layout = LabLayout(Path(tmp) / "lab")
        doc = up(layout, UpOptions(traffic_rate=0.0))
        try:
            with temporary_settings(updates={PREFECT_API_URL: doc["prefect"]["api_url"]}):
                report = trigger_check()
                rows = [("trigger-check (flow, 14 conditions)", timed(trigger_check, args.runs)),
                        ("  of which decisions (policy only)", policy_only(report, args.runs)),
                        ("capacity-forecast (flow, 4 series)",
                         timed(capacity_forecast, args.runs))]
        finally:
            down(layout, purge=True)
    print(f"history: 90 days; now {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; runs: {args.runs}")
    print(f"{'what':<40} {'min s':>7} {'median s':>9} {'max s':>7}")
    for name, secs in rows:
        print(f"{name:<40} {min(secs):>7.3f} {statistics.median(secs):>9.3f} {max(secs):>7.3f}")


if __name__ == "__main__":
    main()
