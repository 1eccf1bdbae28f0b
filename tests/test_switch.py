"""The vLLM switch under the lab's steady traffic: where the GPUs allow it, not one request fails.

Phase 2 -> 3 on gpu-1 with 3 GPUs: the phase-3 replica on the free GPU starts first and takes the
traffic (the API's Cloud Run env is routed to it) while the TP2 server drains and is replaced.
Back 3 -> 2: the replica whose GPU the TP2 server does not need serves until the TP2 server is up.
The API's own counters (what users saw) are read before and after each switch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from phasegate.flows.run import Run, connect
from phasegate.flows.vllm_switch import deploy
from phasegate.lab import control
from phasegate.lab.blocks import gpu_host_block
from phasegate.policy.containers import Container
from phasegate.policy.plan import load_plan
from phasegate.tasks.cloud_run import read_service_settings
from phasegate.tasks.gpu_hosts import inspect_container
from phasegate.tasks.vllm import api_answers

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker


def switch(run: Run, old: list[Container], new: list[Container],
           api_url: str) -> tuple[int, int]:
    """deploy(old -> new); (AI requests answered meanwhile, of which failed)."""
    before = api_answers(api_url, "/v1/feedback")
    plan = deploy(run, old, new)
    assert plan.outage_hosts == ()  # the swap plan says it keeps serving: measured below
    time.sleep(1.0)  # answers in flight when the switch ended are counted too
    after = api_answers(api_url, "/v1/feedback")
    assert before is not None and after is not None
    return int(after[0] - before[0]), int(after[1] - before[1])


@pytest.fixture
def gpu1_with_three(lab: dict[str, Any], lab_layout: Any) -> Iterator[Run]:
    """gpu-1 with 3 GPUs, serving phase 2; back to its phase-1 container and 1 GPU after."""
    control.set_gpu_count(lab_layout, "gpu-1", 3)
    run = connect(load_plan(), "lab", "custom-webhook/lab-slack", [1, 2, 3])
    run.vllm_ready_timeout_s = 30
    host = gpu_host_block(next(h for h in lab["gpu_hosts"] if h["name"] == "gpu-1"))
    live = inspect_container.fn(host, "vllm-server")
    assert live is not None and live.running
    original = live.container
    current = [original]
    try:
        deploy(run, current, run.planned(2))  # stop-start: every GPU changes hands
        current = run.planned(2)
        yield run
        current = run.planned(2)
    finally:
        deploy(run, current, [original])
        control.set_gpu_count(lab_layout, "gpu-1", 1)


def test_switch_keeps_serving_where_the_gpus_allow_it(lab: dict[str, Any],
                                                       gpu1_with_three: Run) -> None:
    run, api = gpu1_with_three, lab["api"]["url"]
    up = switch(run, run.planned(2), run.planned(3), api)
    urls = read_service_settings.fn(run.gcp)["vllm_urls"]
    assert sorted(urls) == sorted(f"http://127.0.0.1:{t.host_port}" for t in run.planned(3))
    down = switch(run, run.planned(3), run.planned(2), api)
    assert read_service_settings.fn(run.gcp)["vllm_urls"] == [
        f"http://127.0.0.1:{run.planned(2)[0].host_port}"]
    # Traffic flowed during both switches (so a failure would have shown), and none failed.
    assert up[0] > 0 and down[0] > 0, (up, down)
    assert (up[1], down[1]) == (0, 0), (up, down)
    host = run.hosts["gpu-1"]
    assert [inspect_container.fn(host, n) for n in ("vllm-server-1", "vllm-server-2")] == [
        None, None]  # the phase-3 replicas are gone, not just stopped
