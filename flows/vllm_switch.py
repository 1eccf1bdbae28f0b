"""Carrying out a vLLM layout change: the steps of `policy.swap.plan_swap`, one by one.

The order (what starts first, where the API routes meanwhile, what drains, what goes last) is
decided in policy/; this module inspects what runs, asks for the plan, and acts on each step:
start (docker run, idempotent), await (health + a real completion), route (the API's Cloud Run
env, a verified rollout), drain (running + waiting requests reach 0, bounded), remove (docker
stop + rm). The transition, its rollback and the `rollback` flow all switch through `deploy`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from phasegate.flows.run import Run
from phasegate.policy.containers import Container, LiveContainer
from phasegate.policy.swap import SwapPlan, SwapStep, plan_swap
from phasegate.tasks.cloud_run import apply_service_settings
from phasegate.tasks.gpu_hosts import (
    inspect_container,
    remove_container,
    run_container,
    stop_container,
    wait_vllm_ready,
)
from phasegate.tasks.vllm import queue_depth

__all__ = ["carry_out", "deploy", "live_containers", "wait_quiet"]

DRAIN_TIMEOUT_S = 60.0


def live_containers(run: Run, containers: Sequence[Container]) -> list[LiveContainer]:
    """What runs now under the names of `containers` (as `docker inspect` says)."""
    keys = dict.fromkeys(c.key for c in containers)
    found = (inspect_container(run.hosts[host], name) for host, name in keys)
    return [lc for lc in found if lc is not None]


def deploy(run: Run, old: Sequence[Container], new: Sequence[Container]) -> SwapPlan:
    """Replace the `old` vLLM layout by the `new` one (make before break, policy.swap) and
    return the plan that was carried out. Raises what the failing step raised."""
    swap = plan_swap(old, new, live_containers(run, [*old, *new]))
    run.audit("vLLM switch plan", steps=swap.describe(), kept=[c.name for c in swap.kept],
              stop_start_on=list(swap.outage_hosts))
    for step in swap.steps:
        carry_out(run, step)
    return swap


def carry_out(run: Run, step: SwapStep) -> None:
    """Do one step of a swap plan."""
    if step.kind == "start":
        for c in step.containers:
            run_container(run.hosts[c.host], c)
    elif step.kind == "await":
        for c in step.containers:
            wait_vllm_ready(run.url(c), c.served_model, timeout_s=run.vllm_ready_timeout_s)
    elif step.kind == "route":
        _route(run, step.containers)
    elif step.kind == "drain":
        _drain(run, step.containers)
    else:
        for c in step.containers:
            stop_container(run.hosts[c.host], c.name)
            remove_container(run.hosts[c.host], c.name)


def _route(run: Run, containers: Sequence[Container]) -> None:
    """Point the API (its Cloud Run env, a verified rollout) at these vLLM servers only."""
    if run.gcp.vllm_urls_env:  # empty: the API finds vLLM by other means; nothing to route
        urls = [run.url(c) for c in containers]
        apply_service_settings(run.gcp, {"vllm_urls": urls})
        run.audit("API routed", vllm_urls=urls)


def _drain(run: Run, containers: Sequence[Container]) -> None:
    """Wait (bounded) until these servers hold no request, so stopping them fails none."""
    # An unreadable server is not serving anything: nothing to wait for.
    busy = wait_quiet([run.url(c) for c in containers], 0, DRAIN_TIMEOUT_S,
                      unreadable_busy=False)
    if busy:
        run.audit("drain timed out; stopping anyway", urls=busy)


def wait_quiet(urls: list[str], at_most: int, timeout_s: float,
               unreadable_busy: bool) -> list[str]:
    """Poll (bounded) each vLLM server's running + waiting requests until it holds at most
    `at_most`; the URLs still busy when `timeout_s` ran out."""
    deadline = time.monotonic() + timeout_s
    busy = list(urls)
    while busy:
        depths = {u: queue_depth(u) for u in busy}
        busy = [u for u, d in depths.items() if (unreadable_busy if d is None else d > at_most)]
        if not busy or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return busy
