"""Benchmark: AI requests that fail while vLLM is switched between phases, under the lab's
steady traffic: the seed's stop-start script against phasegate's make-before-break `deploy`.

Starts a lab in a temp dir (gpu-1 with 3 GPUs, the traffic driver at its default rate), then
walks 1 -> 2 -> 3 -> 2 -> 1 twice, once per method, and prints one row per switch: AI feedback
requests the API answered during the switch, how many failed (5xx), and the switch's seconds.
Both methods end by routing the API to the new servers (the seed's world has one URL).

    .venv/bin/python bench/switch_bench.py [--load-seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from phasegate.flows.run import Run, connect
from phasegate.flows.vllm_switch import deploy
from phasegate.lab import control
from phasegate.lab.layout import LabLayout
from phasegate.lab.supervisor import UpOptions, down, up
from phasegate.policy.containers import Container
from phasegate.policy.plan import load_plan
from phasegate.policy.swap import SwapPlan, SwapStep
from phasegate.tasks.vllm import api_answers

Method = Callable[[Run, list[Container], list[Container]], object]
Row = tuple[str, str, int, int, float]


def seed_order(old: list[Container], new: list[Container]) -> SwapPlan:
    """The seed's scale_phase1_to_2.sh as a swap plan: docker stop + rm of everything, docker
    run of everything, then wait (the script sleeps 60 s; here the same health gate as
    phasegate, so only the order differs) and route."""
    steps = (SwapStep("remove", tuple(old)), SwapStep("start", tuple(new)),
             SwapStep("await", tuple(new)), SwapStep("route", tuple(new)))
    return SwapPlan(steps, kept=(), outage_hosts=tuple(dict.fromkeys(c.host for c in old)))


def seed_stop_start(run: Run, old: list[Container], new: list[Container]) -> None:
    """Carry out the seed's order with phasegate's own step executor."""
    from phasegate.flows.vllm_switch import carry_out

    for step in seed_order(old, new).steps:
        carry_out(run, step)


def measure(method: Method, run: Run, old: list[Container], new: list[Container],
            api_url: str) -> tuple[int, int, float]:
    """(AI answers during the switch, of which failed, seconds)."""
    before = api_answers(api_url, "/v1/feedback")
    start = time.perf_counter()
    method(run, old, new)
    took = time.perf_counter() - start
    time.sleep(1.0)  # answers in flight at the end are counted too
    after = api_answers(api_url, "/v1/feedback")
    assert before is not None and after is not None
    return int(after[0] - before[0]), int(after[1] - before[1]), took


def walk(name: str, method: Method, run: Run, api_url: str) -> list[Row]:
    """1 -> 2 -> 3 -> 2 -> 1 with one method; a row per switch."""
    rows = []
    for a, b in ((1, 2), (2, 3), (3, 2), (2, 1)):
        answered, failed, took = measure(method, run, run.planned(a), run.planned(b), api_url)
        rows.append((f"{a} -> {b}", name, answered, failed, took))
        time.sleep(2.0)  # steady traffic again before the next switch
    return rows


def main() -> None:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--load-seconds", type=float, default=3.0,
                    help="the simulated model load time of a vLLM container")
    args = ap.parse_args()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with tempfile.TemporaryDirectory(prefix="phasegate-bench-") as tmp:
        layout = LabLayout(Path(tmp) / "lab")
        doc = up(layout, UpOptions(vllm_load_seconds=args.load_seconds))
        rows: list[Row] = []
        try:
            control.set_gpu_count(layout, "gpu-1", 3)
            with temporary_settings(updates={PREFECT_API_URL: doc["prefect"]["api_url"]}):
                run = connect(load_plan(), "lab", "custom-webhook/lab-slack", [1, 2, 3])
                run.vllm_ready_timeout_s = 60
                time.sleep(3.0)  # the lab starts in phase 1, as the plan lays it out
                for name, method in (("seed stop-start", seed_stop_start),
                                     ("phasegate deploy", deploy)):
                    rows += walk(name, method, run, doc["api"]["url"])
        finally:
            down(layout, purge=True)
    print(f"vLLM load time {args.load_seconds:g} s; lab traffic at its default rate")
    print(f"{'switch':<8} {'method':<18} {'AI answers':>10} {'failed':>7} {'seconds':>8}")
    for switch, name, answered, failed, took in rows:
        print(f"{switch:<8} {name:<18} {answered:>10} {failed:>7} {took:>8.1f}")


if __name__ == "__main__":
    main()
