"""policy.doctor (what the preflight checks and what it concludes) and promql.selectors: pure,
no lab."""

from __future__ import annotations

from phasegate.policy.doctor import (
    Check,
    PlanQuery,
    Verdict,
    plan_queries,
    query_check,
    render_table,
    unanswered,
)
from phasegate.policy.plan import PromQLSource, SQLSource, load_plan
from phasegate.policy.promql import selectors

PLAN = load_plan()


def test_plan_queries_hold_every_promql_and_sql_query_of_the_plan_once() -> None:
    found = {(q.kind, q.query) for q in plan_queries(PLAN)}
    expected = {(c.source.kind, c.source.query) for t in PLAN.transitions for c in t.conditions
                if isinstance(c.source, PromQLSource | SQLSource)}
    expected |= {("promql", m.query) for t in PLAN.transitions for m in t.watch.metrics}
    assert found == expected
    assert len(plan_queries(PLAN)) == len(expected)  # each query once


def test_plan_queries_of_one_step_only() -> None:
    one = plan_queries(PLAN, [(1, 2)])
    assert one and all(q.where.startswith("1->2 ") for q in one)
    assert plan_queries(PLAN, [(2, 1)]) == one  # a step down is watched like its step up
    conds = {c.id for c in PLAN.transition(1, 2).conditions if c.source.kind != "manual"}
    named = {q.where.split(" ", 2)[2] for q in one if " condition " in q.where}
    assert named == conds


def test_query_check_verdicts() -> None:
    q = PlanQuery("promql", "1->2 condition x", 'sum(up{job="api"})')
    assert query_check(q, 1) == Check("prometheus", "promql 1->2 condition x", True, "1 series")
    failed = query_check(q, None, "SourceUnavailable: connection refused")
    assert not failed.ok and failed.why == "SourceUnavailable: connection refused"
    empty = query_check(q, 0, empty=['up{job="api"}'], jobs={"up": ["api-server", "gpu"]})
    assert not empty.ok
    assert empty.why == ('no series: up{job="api"} matches nothing '
                         "(up exists with job=api-server, gpu)")
    unknown = query_check(q, 0, empty=["nope_total"], jobs={"nope_total": []})
    assert "no series named nope_total at all" in unknown.why
    sql = query_check(PlanQuery("sql", "1->2 condition y", "SELECT 1"), 0)
    assert sql.system == "postgres" and not sql.ok and "no rows" in sql.why


def test_no_data_is_never_a_pass_and_no_checks_is_not_ok() -> None:
    assert not Verdict(()).ok and Verdict(()).summary == "no checks ran"
    ok = Check("redis", "ping", True, "Redis 7")
    bad = unanswered("gpu-1", "nvidia-smi", 10)
    assert Verdict((ok,)).ok and Verdict((ok,)).summary == "1 checks, all ok"
    v = Verdict((ok, bad))
    assert not v.ok and v.failures == (bad,)
    assert v.summary == "2 checks, 1 FAIL: gpu-1 nvidia-smi"
    assert v.explained == "2 checks, 1 FAIL: gpu-1 nvidia-smi: no answer within 10 s"
    assert bad.why == "no answer within 10 s"
    assert v.to_dict()["checks"][1]["ok"] is False


def test_table_lists_failures_first() -> None:
    checks = [Check("redis", "ping", True, "Redis 7"), Check("prometheus", "server", False, "down")]
    lines = render_table(checks).splitlines()
    assert lines[1].split()[:3] == ["prometheus", "server", "FAIL"]
    assert lines[2].split()[:3] == ["redis", "ping", "ok"]
    md = render_table(checks, markdown=True).splitlines()
    assert md[2] == "| prometheus | server | **FAIL** | down |"


def test_selectors_are_queryable_alone() -> None:
    query = ('100 * sum(rate(http_requests_total{job="api",status=~"5.."}[10m]))'
             ' / sum(rate(http_requests_total{job="api"}[10m])) or on() vector(0)'
             ' or {__name__="x", job="y"} or up')
    assert selectors(query) == ['http_requests_total{job="api",status=~"5.."}',
                                'http_requests_total{job="api"}', '{__name__="x", job="y"}',
                                "up"]
    assert selectors("sum by (job) (vllm:num_requests_running)") == [
        "vllm:num_requests_running"]
