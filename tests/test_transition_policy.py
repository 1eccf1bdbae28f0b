"""policy.transition: the step guard, placement, docker argv, change sets, approvals, money."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from phasegate.errors import SafetyStop
from phasegate.lab.gpuhost.docker import _parse_gpus, _parse_run
from phasegate.policy.containers import Container, Gpus
from phasegate.policy.plan import Plan, load_plan
from phasegate.policy.transition import (
    ApprovalAnswer,
    ChangeSet,
    HostGpus,
    approval_outcome,
    check_step,
    cloud_run_settings,
    financial_check,
    format_redis_bytes,
    next_phase,
    plan_changes,
    redis_bytes,
    vllm_args,
    vllm_containers,
)


@pytest.fixture(scope="module")
def plan() -> Plan:
    return load_plan()


PHASES = [1, 2, 3, 4, 5]


# ---------------------------------------------------------------- check_step

@pytest.mark.parametrize(("current", "expected"), [(1, 2), (2, 3), (4, 5)])
def test_next_phase_is_one_up(current: int, expected: int) -> None:
    assert next_phase(current, PHASES) == expected


@pytest.mark.parametrize(("current", "message"), [
    (5, "phase 5 is the plan's last: no next phase (a step down needs its target, e.g. 4)"),
    (9, "current phase 9 is not in the plan (phases: 1, 2, 3, 4, 5)"),
])
def test_next_phase_refuses(current: int, message: str) -> None:
    with pytest.raises(SafetyStop) as caught:
        next_phase(current, PHASES)
    assert str(caught.value) == message


@pytest.mark.parametrize(("current", "target", "direction"), [
    (1, 2, "up"), (2, 3, "up"), (4, 5, "up"), (2, 1, "down"), (5, 4, "down"),
])
def test_check_step_allows_one_step(current: int, target: int, direction: str) -> None:
    assert check_step(current, target, PHASES) == direction


@pytest.mark.parametrize(("current", "target", "message"), [
    (1, 1, "already in phase 1: nothing to do"),
    (1, 3, "phase 1 -> 3 skips 1 phase(s): one step at a time (1 -> 2)"),
    (4, 1, "phase 4 -> 1 skips 2 phase(s): one step at a time (4 -> 5 or 4 -> 3)"),
    (5, 6, "target phase 6 is not in the plan (phases: 1, 2, 3, 4, 5)"),
    (1, 0, "target phase 0 is not in the plan (phases: 1, 2, 3, 4, 5)"),
    (7, 6, "current phase 7 is not in the plan (phases: 1, 2, 3, 4, 5)"),
])
def test_check_step_refuses(current: int, target: int, message: str) -> None:
    with pytest.raises(SafetyStop) as caught:
        check_step(current, target, PHASES)
    assert str(caught.value) == message


# ---------------------------------------------------------------- Redis sizes

@pytest.mark.parametrize(("text", "size"), [
    ("16gb", 17179869184), ("4GB", 4 * 1024**3), ("1g", 10**9), ("512mb", 512 * 1024**2),
    ("1m", 10**6), ("1kb", 1024), ("1k", 1000), ("100", 100), ("5b", 5), (" 2Gb ", 2 * 1024**3),
])
def test_redis_bytes(text: str, size: int) -> None:
    assert redis_bytes(text) == size


@pytest.mark.parametrize("text", ["", "1.5gb", "-1gb", "16tb", "gb", "16 gb"])
def test_redis_bytes_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a Redis size"):
        redis_bytes(text)


@pytest.mark.parametrize(("size", "text"), [
    (17179869184, "16gb"), (512 * 1024**2, "512mb"), (1024, "1kb"), (1000, "1000"), (0, "0"),
])
def test_format_redis_bytes(size: int, text: str) -> None:
    assert format_redis_bytes(size) == text


# ---------------------------------------------------------------- placement and argv

ARGS_TP1 = ("--model", "/models/Llama-2-13b-chat-hf", "--served-model-name",
            "Llama-2-13b-chat-hf", "--tensor-parallel-size", "1", "--pipeline-parallel-size",
            "1", "--gpu-memory-utilization", "0.9", "--max-model-len", "4096")


def test_vllm_args(plan: Plan) -> None:
    assert tuple(vllm_args(plan.phase(1).vllm)) == ARGS_TP1
    assert vllm_args(plan.phase(2).vllm)[5] == "2"


@pytest.mark.parametrize(("phase", "expected"), [
    (1, [("gpu-1", "vllm-server", (0,), 8000)]),
    (2, [("gpu-1", "vllm-server", (0, 1), 8000)]),
    (3, [("gpu-1", "vllm-server", (0,), 8000), ("gpu-1", "vllm-server-1", (1,), 8001),
         ("gpu-1", "vllm-server-2", (2,), 8002)]),
    (4, [("gpu-1", "vllm-server", (0,), 8000), ("gpu-1", "vllm-server-1", (1,), 8001),
         ("gpu-2", "vllm-server", (0,), 9000), ("gpu-2", "vllm-server-1", (1,), 9001)]),
    (5, [("gpu-1", "vllm-server", (0,), 8000), ("gpu-1", "vllm-server-1", (1,), 8001),
         ("gpu-1", "vllm-server-2", (2,), 8002), ("gpu-1", "vllm-server-3", (3,), 8003),
         ("gpu-2", "vllm-server", (0,), 9000), ("gpu-2", "vllm-server-1", (1,), 9001),
         ("gpu-2", "vllm-server-2", (2,), 9002), ("gpu-2", "vllm-server-3", (3,), 9003)]),
])
def test_vllm_containers_placement(plan: Plan, phase: int,
                                   expected: list[tuple[str, str, tuple[int, ...], int]]) -> None:
    specs = vllm_containers(plan, phase, {"gpu-1": 8000, "gpu-2": 9000})
    assert [(s.host, s.name, s.gpus and s.gpus.indices, s.host_port) for s in specs] == expected
    assert {s.image for s in specs} == {"vllm/vllm-openai:latest"}


def test_vllm_containers_default_port_is_the_seeds(plan: Plan) -> None:
    assert [s.host_port for s in vllm_containers(plan, 4)] == [8000, 8001, 8000, 8001]


def test_run_argv_exact(plan: Plan) -> None:
    spec = vllm_containers(plan, 2, {"gpu-1": 18000})[0]
    assert spec.run_argv() == [
        "run", "-d", "--name", "vllm-server", "--gpus", '"device=0,1"', "--restart", "always",
        "--ipc", "host", "-p", "18000:8000", "-v", "/models:/models", "vllm/vllm-openai:latest",
        "--model", "/models/Llama-2-13b-chat-hf", "--served-model-name", "Llama-2-13b-chat-hf",
        "--tensor-parallel-size", "2", "--pipeline-parallel-size", "1",
        "--gpu-memory-utilization", "0.9", "--max-model-len", "4096",
    ]


@pytest.mark.parametrize(("phase", "index", "devices"), [
    (1, 0, ["0"]), (2, 0, ["0", "1"]), (3, 2, ["2"]), (4, 3, ["1"]),
])
def test_run_argv_accepted_by_the_lab_shim(plan: Plan, phase: int, index: int,
                                           devices: list[str]) -> None:
    spec = vllm_containers(plan, phase)[index]
    argv = spec.run_argv()
    opts, flags, image, args = _parse_run(argv[1:])
    assert argv[0] == "run" and flags == {"-d"} and image == spec.image
    assert args == list(spec.args)
    assert opts["--name"] == [spec.name] and opts["-p"] == [f"{spec.host_port}:8000"]
    # docker reads --gpus as CSV: the quotes keep "device=0,1" one field (not device + count)
    assert _parse_gpus(opts["--gpus"][0]) == (None, devices)


def test_planned_container_round_trips(plan: Plan) -> None:
    spec = vllm_containers(plan, 3)[1]
    data = json.loads(json.dumps(spec.to_dict()))
    assert Container.from_dict(data) == spec
    assert Container.from_run_argv(spec.host, spec.run_argv()) == spec


# ---------------------------------------------------------------- change sets (the real plan)

def test_change_set_1_to_2(plan: Plan) -> None:
    changes = plan_changes(plan, 1, 2)
    assert changes.direction == "up"
    assert changes.describe() == [
        "vLLM on gpu-1: 1 x TP1 (GPU 0) -> 1 x TP2 (GPUs 0,1)",
        "Cloud Run: min 0 -> 1, max 3 -> 8, memory 2Gi -> 4Gi, cpu 1 -> 2",
        "Redis: maxmemory 4gb -> 16gb, policy volatile-lru -> allkeys-lru",
        "Cost: $100 -> $180 / month",
        "GPUs needed: gpu-1 2 (has to be installed before)",
    ]
    assert changes.gpu_hosts == (HostGpus("gpu-1", 1, 2),)
    assert changes.hosts_to_install() == [HostGpus("gpu-1", 1, 2)]
    assert changes.cloud_run_after == {"min_instances": 1, "max_instances": 8,
                                       "max_concurrency": 80, "timeout_s": 300, "cpu": "2",
                                       "memory": "4Gi"}
    assert changes.redis_before == {"maxmemory": 4 * 1024**3, "maxmemory_policy": "volatile-lru"}
    assert changes.redis_after == {"maxmemory": 17179869184, "maxmemory_policy": "allkeys-lru"}
    assert (changes.cost_before_usd, changes.cost_after_usd) == (100.0, 180.0)
    assert [c.gpus for c in changes.containers_after] == [Gpus.of(0, 1)]
    json.dumps(changes.to_dict())   # JSON-ready


def test_change_set_2_to_1_planned_scale_down(plan: Plan) -> None:
    changes = plan_changes(plan, 2, 1)
    assert changes.direction == "down"
    assert changes.describe() == [
        "vLLM on gpu-1: 1 x TP2 (GPUs 0,1) -> 1 x TP1 (GPU 0)",
        "Cloud Run: min 1 -> 0, max 8 -> 3, memory 4Gi -> 2Gi, cpu 2 -> 1",
        "Redis: maxmemory 16gb -> 4gb, policy allkeys-lru -> volatile-lru",
        "Cost: $180 -> $100 / month",
        "GPUs freed: gpu-1 2 -> 1",
    ]
    assert changes.hosts_to_install() == []
    assert changes.containers_after == plan_changes(plan, 1, 2).containers_before


def test_change_set_3_to_4(plan: Plan) -> None:
    changes = plan_changes(plan, 3, 4, {"gpu-1": 8000, "gpu-2": 8000})
    assert changes.describe() == [
        "vLLM on gpu-1: 3 x TP1 (GPUs 0,1,2) -> 2 x TP1 (GPUs 0,1)",
        "vLLM on gpu-2: none -> 2 x TP1 (GPUs 0,1)",
        "Cloud Run: min 2 -> 4, max 15 -> 40",
        "Redis: maxmemory 32gb -> 64gb",
        "Cost: $900 -> $3,500 / month",
        "GPUs freed: gpu-1 3 -> 2",
        "GPUs needed: gpu-2 2 (has to be installed before)",
        "Manual: DB read replicas 1 -> 4 (set up by hand)",
    ]
    assert changes.gpu_hosts == (HostGpus("gpu-1", 3, 2), HostGpus("gpu-2", 0, 2))
    assert [(c.host, c.name) for c in changes.containers_after] == [
        ("gpu-1", "vllm-server"), ("gpu-1", "vllm-server-1"),
        ("gpu-2", "vllm-server"), ("gpu-2", "vllm-server-1")]


def test_change_set_2_to_3_lists_manual_work(plan: Plan) -> None:
    lines = plan_changes(plan, 2, 3).describe()
    assert "Cloud Run: min 1 -> 2, max 8 -> 15, concurrency 80 -> 100" in lines
    assert "Redis: maxmemory 16gb -> 32gb" in lines
    assert lines[-2:] == ["Manual: Redis cluster mode on (built by hand)",
                          "Manual: DB read replicas 0 -> 1 (set up by hand)"]


def test_plan_changes_refuses_a_skip(plan: Plan) -> None:
    with pytest.raises(SafetyStop, match="skips 1 phase"):
        plan_changes(plan, 1, 3)


def test_describe_unchanged_parts_and_pipeline_layout(plan: Plan) -> None:
    args = ("--tensor-parallel-size", "1", "--pipeline-parallel-size", "2")
    same = Container("gpu-1", "vllm-server", "img", args, Gpus.of(0, 1), 8000)
    cloud = cloud_run_settings(plan.phase(2).cloud_run)
    redis = {"maxmemory": 1024, "maxmemory_policy": "allkeys-lru"}
    changes = ChangeSet(2, 3, "up", (HostGpus("gpu-1", 2, 2),), (same,), (same,),
                        cloud, {**cloud, "timeout_s": 600}, redis, redis, 180.5, 180.5)
    assert changes.describe() == [
        "vLLM on gpu-1: unchanged (1 x TP1 x PP2 (GPUs 0,1))",
        "Cloud Run: timeout (s) 300 -> 600",
        "Redis: unchanged",
        "Cost: $180.50 -> $180.50 / month",
    ]


# ---------------------------------------------------------------- approvals

AT = datetime(2025, 11, 20, 9, 0, tzinfo=UTC)
ROLES = ["CTO", "CFO"]


def yes(name: str, role: str, comment: str = "") -> ApprovalAnswer:
    return ApprovalAnswer(True, name, role, comment, AT)


def no(name: str, role: str, comment: str = "") -> ApprovalAnswer:
    return ApprovalAnswer(False, name, role, comment, AT)


@pytest.mark.parametrize(("answers", "status", "message", "missing"), [
    ([], "pending", "waiting for CTO, CFO", ("CTO", "CFO")),
    ([yes("alice", "CTO")], "pending", "waiting for CFO", ("CFO",)),
    ([yes("alice", "CTO"), yes("bob", "CFO")], "approved", "approved by alice (CTO), bob (CFO)",
     ()),
    ([yes("bob", "cfo"), yes(" Alice ", " cto ")], "approved",
     "approved by bob (CFO), Alice (CTO)", ()),
    ([no("bob", "CFO", "budget not approved")], "rejected",
     "rejected by bob (CFO): budget not approved", ("CTO", "CFO")),
    ([yes("alice", "CTO"), no("bob", "CFO")], "rejected", "rejected by bob (CFO)", ("CFO",)),
    # a rejection ends it: later approvals do not revive it
    ([no("alice", "CTO", "  too early "), yes("bob", "CFO")], "rejected",
     "rejected by alice (CTO): too early", ("CTO", "CFO")),
    # answers after approval are ignored
    ([yes("alice", "CTO"), yes("bob", "CFO"), no("carol", "CFO")], "approved",
     "approved by alice (CTO), bob (CFO)", ()),
    ([yes("alice", "CTO"), yes("alice", "CFO")], "invalid",
     "alice cannot approve both CTO and CFO", ("CFO",)),
    ([yes("alice", "CTO"), yes(" ALICE", "CFO")], "invalid",
     "ALICE cannot approve both CTO and CFO", ("CFO",)),
    # the same person may not reject for the other role either: it is refused, not counted
    ([yes("alice", "CTO"), no("Alice", "CFO")], "invalid",
     "Alice cannot approve both CTO and CFO", ("CFO",)),
    ([yes("alice", "CEO")], "invalid", "unknown role 'CEO': the plan asks CTO, CFO",
     ("CTO", "CFO")),
    ([yes("  ", "CTO")], "invalid", "an answer needs the approver's name", ("CTO", "CFO")),
    ([no("", "CTO")], "invalid", "an answer needs the approver's name", ("CTO", "CFO")),
    ([yes("alice", "CTO"), yes("bob", "CTO")], "invalid", "CTO has already answered (by alice)",
     ("CFO",)),
    # a refused answer followed by a valid one: the gate keeps going
    ([yes("alice", "CEO"), yes("alice", "CTO")], "pending", "waiting for CFO", ("CFO",)),
    ([yes("alice", "CTO"), yes("alice", "CFO"), yes("bob", "CFO")], "approved",
     "approved by alice (CTO), bob (CFO)", ()),
])
def test_approval_outcome(answers: list[ApprovalAnswer], status: str, message: str,
                          missing: tuple[str, ...]) -> None:
    decision = approval_outcome(answers, ROLES, distinct_people=True)
    assert (decision.status, decision.message, decision.missing_roles) == (
        status, message, missing)
    json.dumps(decision.to_dict())


def test_same_person_both_roles_allowed_without_distinct_people() -> None:
    decision = approval_outcome([yes("alice", "CTO"), yes("alice", "CFO")], ROLES,
                                distinct_people=False)
    assert decision.status == "approved"
    assert decision.approved_by == (("CTO", "alice"), ("CFO", "alice"))


def test_refused_answers_are_kept_as_evidence() -> None:
    decision = approval_outcome([yes("x", "CEO"), yes("alice", "CTO")], ROLES)
    assert decision.refused == (("x", "CEO", "unknown role 'CEO': the plan asks CTO, CFO"),)


def test_approval_answer_round_trip() -> None:
    answer = no("bob", "CFO", "later")
    assert ApprovalAnswer.from_dict(json.loads(json.dumps(answer.to_dict()))) == answer


# ---------------------------------------------------------------- financial check

NAN = float("nan")


@pytest.mark.parametrize(("inputs", "revenue", "runway", "overall"), [
    ((800, 180, 10_000, 2_000), (True, 540.0), (True, 5.0), True),
    ((540, 180, 6_000, 2_000), (True, 540.0), (True, 3.0), True),      # both bounds inclusive
    ((539, 180, 10_000, 2_000), (False, 540.0), (True, 5.0), False),
    ((800, 180, 5_000, 2_000), (True, 540.0), (False, 2.5), False),
    ((None, 180, 10_000, 2_000), (None, None), (True, 5.0), None),
    ((800, None, None, 2_000), (None, None), (None, None), None),
    ((NAN, 180, 10_000, NAN), (None, None), (None, None), None),
    ((800, 180, 10_000, 0), (True, 540.0), (True, None), True),        # no burn: unlimited
    ((100, 180, None, 2_000), (False, 540.0), (None, None), False),    # a known no wins
])
def test_financial_check(inputs: tuple[float | None, ...], revenue: tuple[bool | None, float],
                         runway: tuple[bool | None, float | None], overall: bool | None) -> None:
    check = financial_check(*inputs)
    rev, run = check.items
    assert (rev.name, rev.ok, rev.bound) == ("revenue", *revenue)
    assert (run.name, run.ok, run.value) == ("runway", *runway)
    assert check.ok is overall
    json.dumps(check.to_dict(), allow_nan=False)


@pytest.mark.parametrize(("inputs", "details"), [
    ((800, 180, 10_000, 2_000),
     ["monthly revenue $800 >= 3 x cost $180 = $540",
      "runway 5.0 months (cash $10,000 / burn $2,000) >= 3 months"]),
    ((500, 180, 4_000, 2_000),
     ["monthly revenue $500 < 3 x cost $180 = $540",
      "runway 2.0 months (cash $4,000 / burn $2,000) < 3 months"]),
    ((None, 180, 1, -5),
     ["unknown: monthly revenue or next month's cost not available",
      "no monthly burn (-$5): runway unlimited"]),
])
def test_financial_check_details(inputs: tuple[float | None, ...], details: list[str]) -> None:
    check = financial_check(*inputs)
    assert [i.detail for i in check.items] == details
    assert [i.status for i in check.items] == [
        "unknown" if i.ok is None else ("ok" if i.ok else "not_ok") for i in check.items]


def test_flow_helpers(plan: Plan) -> None:
    changes = plan_changes(plan, 3, 4)
    assert changes.vllm_summary(before=True) == "gpu-1: 3 x TP1 (GPUs 0,1,2)"
    assert changes.vllm_summary(before=False) == (
        "gpu-1: 2 x TP1 (GPUs 0,1); gpu-2: 2 x TP1 (GPUs 0,1)")
    assert changes.containers_after[0].served_model == "Llama-2-13b-chat-hf"
