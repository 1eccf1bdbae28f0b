"""policy.swap: the make-before-break order of a vLLM layout change, table-tested.

Each row is old layout -> new layout (what runs now), and the exact steps the flow carries out.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from phasegate.policy.containers import Container, Gpus, LiveContainer, replica_name
from phasegate.policy.plan import load_plan
from phasegate.policy.swap import SwapPlan, conflicts, plan_swap
from phasegate.policy.transition import vllm_containers

PLAN = load_plan()
PORTS = {"gpu-1": 8000, "gpu-2": 9000}


def planned(phase: int) -> list[Container]:
    return vllm_containers(PLAN, phase, PORTS)


def running(*layouts: Sequence[Container]) -> list[LiveContainer]:
    return [LiveContainer(c, True) for layout in layouts for c in layout]


def c(host: str, k: int, *gpus: int, tp: int = 1) -> Container:
    """The k-th container on `host`, TP `tp` on these GPUs."""
    return Container(host, replica_name(k), "vllm/vllm-openai:latest",
                     ("--model", "/models/m", "--tensor-parallel-size", str(tp)),
                     Gpus.of(*gpus), PORTS[host] + k)


def steps(plan: SwapPlan) -> list[str]:
    return plan.describe()


def test_one_to_two_on_one_host_is_stop_start() -> None:
    old, new = planned(1), planned(2)
    plan = plan_swap(old, new, running(old))
    assert steps(plan) == ["remove gpu-1/vllm-server", "start gpu-1/vllm-server",
                           "await gpu-1/vllm-server", "route gpu-1/vllm-server"]
    assert plan.outage_hosts == ("gpu-1",) and plan.kept == ()


def test_two_to_one_is_stop_start_too() -> None:
    old, new = planned(2), planned(1)
    assert plan_swap(old, new, running(old)).outage_hosts == ("gpu-1",)


def test_two_to_three_keeps_serving_from_the_free_gpu() -> None:
    old, new = planned(2), planned(3)
    plan = plan_swap(old, new, running(old))
    assert steps(plan) == [
        "start gpu-1/vllm-server-2", "await gpu-1/vllm-server-2",
        "route gpu-1/vllm-server-2", "drain gpu-1/vllm-server", "remove gpu-1/vllm-server",
        "start gpu-1/vllm-server, gpu-1/vllm-server-1",
        "await gpu-1/vllm-server, gpu-1/vllm-server-1",
        "route gpu-1/vllm-server, gpu-1/vllm-server-1, gpu-1/vllm-server-2"]
    assert plan.outage_hosts == ()


def test_three_to_two_serves_from_the_replica_it_stops_last() -> None:
    old, new = planned(3), planned(2)
    plan = plan_swap(old, new, running(old))
    assert steps(plan) == [
        "route gpu-1/vllm-server-2", "drain gpu-1/vllm-server, gpu-1/vllm-server-1",
        "remove gpu-1/vllm-server, gpu-1/vllm-server-1",
        "start gpu-1/vllm-server", "await gpu-1/vllm-server", "route gpu-1/vllm-server",
        "drain gpu-1/vllm-server-2", "remove gpu-1/vllm-server-2"]
    assert plan.outage_hosts == ()


def test_three_to_four_over_two_hosts_keeps_what_already_runs_as_planned() -> None:
    old, new = planned(3), planned(4)
    plan = plan_swap(old, new, running(old))
    assert [k.key for k in plan.kept] == [("gpu-1", "vllm-server"), ("gpu-1", "vllm-server-1")]
    assert steps(plan) == [
        "start gpu-2/vllm-server, gpu-2/vllm-server-1",
        "await gpu-2/vllm-server, gpu-2/vllm-server-1, gpu-1/vllm-server, gpu-1/vllm-server-1",
        "route gpu-1/vllm-server, gpu-1/vllm-server-1, gpu-2/vllm-server, gpu-2/vllm-server-1",
        "drain gpu-1/vllm-server-2", "remove gpu-1/vllm-server-2"]
    assert "remove gpu-1/vllm-server" not in plan.describe()


def test_four_to_three_moves_back_to_one_host() -> None:
    old, new = planned(4), planned(3)
    plan = plan_swap(old, new, running(old))
    assert steps(plan) == [
        "start gpu-1/vllm-server-2",
        "await gpu-1/vllm-server-2, gpu-1/vllm-server, gpu-1/vllm-server-1",
        "route gpu-1/vllm-server, gpu-1/vllm-server-1, gpu-1/vllm-server-2",
        "drain gpu-2/vllm-server, gpu-2/vllm-server-1",
        "remove gpu-2/vllm-server, gpu-2/vllm-server-1"]


def test_a_resumed_run_keeps_the_half_that_already_runs() -> None:
    # 2 -> 3 died after its wave started vllm-server (GPU 0) and the early vllm-server-2:
    # the old TP2 container is gone, vllm-server-1 never started.
    old, new = planned(2), planned(3)
    plan = plan_swap(old, new, running([new[0], new[2]]))
    assert [k.name for k in plan.kept] == ["vllm-server", "vllm-server-2"]
    assert steps(plan) == [
        "start gpu-1/vllm-server-1",
        "await gpu-1/vllm-server-1, gpu-1/vllm-server, gpu-1/vllm-server-2",
        "route gpu-1/vllm-server, gpu-1/vllm-server-1, gpu-1/vllm-server-2"]
    assert plan.of_kind("remove") == []            # never stops what already serves


def test_a_rerun_after_everything_was_done_only_routes() -> None:
    old, new = planned(1), planned(2)
    plan = plan_swap(old, new, running(new))
    assert steps(plan) == ["await gpu-1/vllm-server", "route gpu-1/vllm-server"]


def test_hosts_without_a_free_gpu_are_replaced_one_at_a_time() -> None:
    # Every GPU of both hosts is taken by a TP2 engine; the new layout is TP1 x 2 per host.
    old = [c("gpu-1", 0, 0, 1, tp=2), c("gpu-2", 0, 0, 1, tp=2)]
    new = [c("gpu-1", 0, 0), c("gpu-1", 1, 1), c("gpu-2", 0, 0), c("gpu-2", 1, 1)]
    plan = plan_swap(old, new, running(old))
    assert steps(plan) == [
        "route gpu-2/vllm-server", "drain gpu-1/vllm-server", "remove gpu-1/vllm-server",
        "start gpu-1/vllm-server, gpu-1/vllm-server-1",
        "await gpu-1/vllm-server, gpu-1/vllm-server-1",
        "route gpu-1/vllm-server, gpu-1/vllm-server-1",
        "drain gpu-2/vllm-server", "remove gpu-2/vllm-server",
        "start gpu-2/vllm-server, gpu-2/vllm-server-1",
        "await gpu-2/vllm-server, gpu-2/vllm-server-1",
        "route gpu-1/vllm-server, gpu-1/vllm-server-1, gpu-2/vllm-server, gpu-2/vllm-server-1"]
    assert plan.outage_hosts == ()


def test_a_host_with_no_free_gpu_and_nothing_else_serving_says_so() -> None:
    old = [c("gpu-1", 0, 0, 1, tp=2)]
    new = [c("gpu-1", 0, 0), c("gpu-1", 1, 1)]
    plan = plan_swap(old, new, running(old))
    assert plan.outage_hosts == ("gpu-1",)
    assert plan.of_kind("drain") == []             # nothing to drain towards


def test_a_stopped_old_container_is_removed_but_never_routed_to_or_drained() -> None:
    old = [c("gpu-1", 0, 0), c("gpu-1", 1, 1)]
    new = [c("gpu-1", 0, 0, 1, tp=2)]
    live = [LiveContainer(old[0], True), LiveContainer(old[1], False)]
    plan = plan_swap(old, new, live)
    assert plan.outage_hosts == ("gpu-1",)
    assert steps(plan) == ["remove gpu-1/vllm-server, gpu-1/vllm-server-1",
                           "start gpu-1/vllm-server", "await gpu-1/vllm-server",
                           "route gpu-1/vllm-server"]


def test_an_old_container_already_gone_is_not_touched() -> None:
    old, new = planned(3), planned(2)
    plan = plan_swap(old, new, running(old[:2]))  # vllm-server-2 was removed by hand
    assert "gpu-1/vllm-server-2" not in " ".join(plan.describe())
    assert plan.outage_hosts == ("gpu-1",)


def test_the_same_name_on_other_gpus_is_a_conflict() -> None:
    # docker keeps one container of a name per host: vllm-server-1 cannot start early.
    old = [c("gpu-1", 1, 2, 3, tp=2)]
    new = [c("gpu-1", 1, 1)]
    assert conflicts(old[0], new[0])
    plan = plan_swap(old, new, running(old))
    assert plan.of_kind("start") == new and plan.steps[0].kind == "remove"


@pytest.mark.parametrize(("a", "b", "expected"), [
    (c("gpu-1", 0, 0), c("gpu-2", 0, 0), False),        # other host
    (c("gpu-1", 0, 0), c("gpu-1", 1, 1), False),        # other name, other GPU
    (c("gpu-1", 0, 0, 1, tp=2), c("gpu-1", 1, 1), True),  # a GPU in common
    (c("gpu-1", 2, 2), c("gpu-1", 2, 3), True),          # the same name
])
def test_conflicts(a: Container, b: Container, expected: bool) -> None:
    assert conflicts(a, b) is expected and conflicts(b, a) is expected


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 1), (2, 3), (3, 2), (3, 4), (4, 3),
                                               (4, 5), (5, 4)])
def test_every_plan_step_ends_routed_to_the_new_layout_with_the_old_one_gone(
        before: int, after: int) -> None:
    old, new = planned(before), planned(after)
    plan = plan_swap(old, new, running(old))
    assert set(plan.steps[-1].containers if plan.steps[-1].kind == "route"
               else next(s for s in reversed(plan.steps) if s.kind == "route").containers) \
        == set(new)
    started = set(plan.of_kind("start")) | set(plan.kept)
    assert started == set(new)
    removed = {o.key for o in plan.of_kind("remove")}
    assert removed == {o.key for o in old if o not in new}
    # every container is awaited before the API is routed to it
    awaited: set[Container] = set()
    for step in plan.steps:
        if step.kind == "await":
            awaited |= set(step.containers)
        if step.kind == "route":
            assert set(step.containers) - set(old) <= awaited
