"""The phase plan: the default plan loads, every kind of mistake is reported with its field path,
and all of them at once. Pure and fast: no lab, no network."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from phasegate.errors import PlanError
from phasegate.policy.durations import format_duration, parse_duration
from phasegate.policy.plan import (
    DEFAULT_PLAN_PATH,
    PromQLSource,
    SQLSource,
    k6_threshold_problems,
    load_plan,
    scalar_sql_problems,
    sql_problems,
    validate_plan_data,
)
from phasegate.policy.promql import clamp_windows, metric_names, promql_problems, range_windows

Data = dict[str, Any]


def _unshare(value: Any) -> Any:
    """A deep copy that does not keep YAML aliases shared (deepcopy would)."""
    if isinstance(value, dict):
        return {k: _unshare(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshare(v) for v in value]
    return value


_RAW: Data = yaml.safe_load(DEFAULT_PLAN_PATH.read_text(encoding="utf-8"))


def _data() -> Data:
    return _unshare(_RAW)


def _set(data: Any, path: str, value: Any) -> None:
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        data = data[key]
    data[keys[-1]] = value


def _problems(data: Data) -> list[tuple[str, str]]:
    with pytest.raises(PlanError) as info:
        validate_plan_data(data)
    return info.value.problems


# ---------------------------------------------------------------- the default plan

def test_default_plan_loads_with_the_seed_numbers() -> None:
    plan = load_plan()
    assert [n for n in plan.phases] == [1, 2, 3, 4, 5]
    assert plan.phase(1).cloud_run.max_instances == 3
    assert plan.phase(2).vllm.tensor_parallel_size == 2
    assert plan.phase(2).redis.maxmemory == "16gb"
    assert plan.phase(2).cloud_run.timeout == timedelta(seconds=300)
    assert plan.phase(2).monthly_cost_usd == 180
    # the seed's TP 3 is invalid for 40 heads: 3 replicas x TP 1 instead
    assert (plan.phase(3).vllm.replicas, plan.phase(3).vllm.tensor_parallel_size) == (3, 1)
    assert [h.gpus for h in plan.phase(4).gpu_hosts] == [2, 2]
    assert plan.phase(4).db_read_replicas == 4


def test_default_plan_transitions_mirror_the_seed() -> None:
    plan = load_plan()
    counts = {(t.from_phase, t.to_phase): len(t.conditions) for t in plan.transitions}
    assert counts == {(1, 2): 14, (2, 3): 15, (3, 4): 10, (4, 5): 5}
    first = plan.transition(1, 2)
    assert (first.quorum.min_met, first.quorum.counts) == (3, "bullets")
    assert plan.transition(2, 3).quorum.min_met == 4
    assert first.watch.duration == timedelta(hours=2)
    assert [s.stage for s in first.checklist] == ["D-7", "D-3", "D-1", "D-Day", "D+1..7"]
    assert plan.approvals.roles == ["CTO", "CFO"]


def test_default_plan_queries_use_the_lab_conventions() -> None:
    plan = load_plan()
    conditions = [c for t in plan.transitions for c in t.conditions]
    for condition in conditions:
        if isinstance(condition.source, SQLSource):
            assert "generate_series" in condition.source.query
        if isinstance(condition.source, PromQLSource):
            assert promql_problems(condition.source.query) == []


def test_lookups_raise_plan_error() -> None:
    plan = load_plan()
    with pytest.raises(PlanError):
        plan.phase(9)
    with pytest.raises(PlanError):
        plan.transition(1, 3)


def test_model_dumps_durations_back_as_strings() -> None:
    dumped = load_plan().model_dump(mode="json")
    assert dumped["transitions"][0]["watch"]["duration"] == "2h"
    assert dumped["peak_window"]["peak_start"] == "19:00"
    assert validate_plan_data(dumped) == load_plan()


# ---------------------------------------------------------------- one mistake each

def _setter(path: str, value: Any) -> Callable[[Data], None]:
    return lambda data: _set(data, path, value)


def _packing(data: Data) -> None:
    data["phases"][4]["gpu_hosts"] = [{"name": "gpu-1", "gpus": 3}, {"name": "gpu-2", "gpus": 1}]
    _set(data, "phases.4.vllm.tensor_parallel_size", 2)
    _set(data, "phases.4.vllm.replicas", 2)


def _gap(data: Data) -> None:
    del data["phases"][3]


def _sql(condition: int, old: str, new: str) -> Callable[[Data], None]:
    def mutate(data: Data) -> None:
        source = data["transitions"][0]["conditions"][condition]["source"]
        source["query"] = source["query"].replace(old, new)
    return mutate


CASES: list[tuple[str, Callable[[Data], None], str, str]] = [
    ("negative gpus", _setter("phases.2.gpu_hosts.0.gpus", -1),
     "phases[2].gpu_hosts[0].gpus", "greater than 0"),
    ("zero replicas", _setter("phases.1.vllm.replicas", 0),
     "phases[1].vllm.replicas", "greater than 0"),
    ("zero max instances", _setter("phases.1.cloud_run.max_instances", 0),
     "phases[1].cloud_run.max_instances", "greater than 0"),
    ("min > max", _setter("phases.2.cloud_run.min_instances", 9),
     "phases[2].cloud_run.min_instances", "9 is larger than max_instances (8)"),
    ("TP 3 with 40 heads", _setter("phases.3.vllm.tensor_parallel_size", 3),
     "phases[3].vllm.tensor_parallel_size",
     "3 does not divide the model's 40 attention heads; valid sizes: 1, 2, 4, 5, 8, 10, 20, 40"),
    ("more GPUs than the hosts", _setter("phases.2.vllm.replicas", 2),
     "phases[2].vllm.replicas", "need 4 GPUs; the phase's hosts have 2"),
    ("replica larger than a host", _setter("phases.4.vllm.tensor_parallel_size", 4),
     "phases[4].vllm.tensor_parallel_size", "needs 4 GPUs but the largest host has 2"),
    ("replicas cannot span hosts", _packing,
     "phases[4].vllm.replicas", "a replica cannot span hosts"),
    ("gpu memory utilization > 1", _setter("phases.1.vllm.gpu_memory_utilization", 1.5),
     "phases[1].vllm.gpu_memory_utilization", "less than or equal to 1"),
    ("bad redis policy", _setter("phases.2.redis.maxmemory_policy", "allkeys-lru2"),
     "phases[2].redis.maxmemory_policy", "got 'allkeys-lru2'"),
    ("skipped step", _setter("transitions.1.to_phase", 4),
     "transitions[1].to_phase", "4 does not follow 2"),
    ("phase numbering gap", _gap, "phases", "got 1, 2, 4, 5 (missing 3)"),
    ("quorum > conditions", _setter("transitions.3.quorum.min_met", 6),
     "transitions[3].quorum.min_met", "6 is more than the 5 conditions"),
    ("quorum > groups", _setter("transitions.3.quorum", {"min_met": 4, "counts": "groups"}),
     "transitions[3].quorum.min_met", "4 is more than the 3 condition groups"),
    ("unknown metric",
     _setter("transitions.0.conditions.3.source.query", "avg(DCGM_FI_DEV_GPU_UTILIZATION)"),
     "transitions[0].conditions[3].source.query", "unknown metric 'DCGM_FI_DEV_GPU_UTILIZATION'"),
    ("short range window",
     _setter("transitions.0.watch.metrics.2.query", "sum(rate(http_requests_total[5m]))"),
     "transitions[0].watch.metrics[2].query", "range window [5m] is shorter than 10m"),
    ("bad duration", _setter("transitions.0.watch.duration", "2 hours"),
     "transitions[0].watch.duration", "cannot parse duration '2 hours'"),
    ("zero duration", _setter("approvals.timeout", "0s"),
     "approvals.timeout", "must be longer than 0s"),
    ("unknown key", _setter("phases.1.cloud_run.max_instance", 3),
     "phases[1].cloud_run.max_instance", "unknown key"),
    ("missing key", lambda d: d["phases"][1]["vllm"].pop("image"),
     "phases[1].vllm.image", "required key is missing"),
    ("bad k6 threshold", _setter("phases.1.load_test.thresholds.http_req_duration", ["p95<500"]),
     'phases[1].load_test.thresholds["http_req_duration"]', "'p95<500' is not a k6 threshold"),
    ("k6 aggregation for the metric type",
     _setter("phases.1.load_test.thresholds.http_req_duration", ["rate<0.01"]),
     'phases[1].load_test.thresholds["http_req_duration"]', "supports only avg, max, med"),
    ("k6 tag filter", _setter("phases.1.load_test.thresholds.http_req_duration{name}", ["avg<1"]),
     'phases[1].load_test.thresholds["http_req_duration{name}"]', "bad tag filter"),
    ("sql without end", _sql(1, "%(end)s", "now()"),
     "transitions[0].conditions[1].source.query", "must use %(end)s"),
    ("sql literal percent", _sql(1, "ORDER BY d.day", "AND 'a' LIKE 'a%' ORDER BY d.day"),
     "transitions[0].conditions[1].source.query", "a literal % must be written %%"),
    ("sql unknown parameter", _sql(1, "%(tz)s", "%(zone)s"),
     "transitions[0].conditions[1].source.query", "unknown parameter %(zone)s"),
    ("peak persistence, all-day source", _setter("transitions.0.conditions.3.source.window",
                                                 "all_day"),
     "transitions[0].conditions[3].source", "use a promql source with window: peak"),
    ("unknown source kind", _setter("transitions.0.conditions.0.source.kind", "graphite"),
     "transitions[0].conditions[0].source", "'graphite'"),
    ("manual with history", _setter("transitions.3.conditions.4.persistence",
                                    {"rule": "consecutive_days", "count": 3}),
     "transitions[3].conditions[4].persistence", "use rule instant"),
    ("duplicate condition id", _setter("transitions.0.conditions.1.id", "registered-users-1k"),
     "transitions[0].conditions[1].id", "duplicate 'registered-users-1k'"),
    ("overlapping watch bounds", _setter("transitions.0.watch.metrics.1.failure", {"ge": 200}),
     "transitions[0].watch.metrics[1].failure", "overlaps success"),
    ("D-Day times out of order", _setter("transitions.0.checklist.3.items.1.at", "08:00"),
     "transitions[0].checklist[3].items[1].at", "earlier than the item before it"),
    ("unquoted clock time", _setter("peak_window.peak_start", 1140),
     "peak_window.peak_start", "write times in quotes"),
    ("unsupported version", _setter("version", 2), "version", "unsupported plan format version 2"),
    ("unknown time zone", _setter("peak_window.timezone", "Mars/Olympus"),
     "peak_window.timezone", "unknown time zone"),
]


@pytest.mark.parametrize(("mutate", "path", "reason"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_invalid_plan_reports_field_and_reason(
    mutate: Callable[[Data], None], path: str, reason: str
) -> None:
    data = _data()
    mutate(data)
    problems = _problems(data)
    assert any(p == path and reason in r for p, r in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    data = _data()
    for case in ("negative gpus", "TP 3 with 40 heads", "skipped step", "unknown metric",
                 "unknown key", "bad k6 threshold", "phase numbering gap"):
        next(c for c in CASES if c[0] == case)[1](data)
    paths = {path for path, _ in _problems(data)}
    assert {
        "phases[2].gpu_hosts[0].gpus", "transitions[1].to_phase",
        "transitions[0].conditions[3].source.query", "phases[1].cloud_run.max_instance",
        'phases[1].load_test.thresholds["http_req_duration"]', "phases",
    } <= paths


def test_plan_error_message_lists_every_problem() -> None:
    data = _data()
    _set(data, "phases.1.vllm.replicas", 0)
    _set(data, "phases.2.cloud_run.min_instances", 9)
    with pytest.raises(PlanError) as info:
        validate_plan_data(data)
    text = str(info.value)
    assert "phases[1].vllm.replicas: " in text
    assert "phases[2].cloud_run.min_instances: 9 is larger" in text


def test_top_level_must_be_a_mapping() -> None:
    assert _problems([1, 2]) == [("(plan)", "the plan must be a mapping of keys at the top level")]  # type: ignore[arg-type]


# ---------------------------------------------------------------- loading files

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as info:
        load_plan(tmp_path / "nope.yaml")
    assert "cannot read the plan" in info.value.problems[0][1]


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nphases: [1, 2\n", encoding="utf-8")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    [(where, reason)] = info.value.problems
    assert where.startswith(f"{path}:") and "YAML syntax error" in reason


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    text = DEFAULT_PLAN_PATH.read_text(encoding="utf-8")
    path.write_text(text.replace("version: 1\n", "version: 1\nversion: 1\n", 1), encoding="utf-8")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    line = text.splitlines().index("version: 1") + 2  # the second, 1-based
    assert info.value.problems == [(f"{path}:{line}", "duplicate key 'version'")]


# ---------------------------------------------------------------- durations

@pytest.mark.parametrize(("text", "expected"), [
    ("90s", timedelta(seconds=90)), ("5m", timedelta(minutes=5)), ("2h", timedelta(hours=2)),
    ("1h30m", timedelta(minutes=90)), ("7d", timedelta(days=7)), ("1w", timedelta(weeks=1)),
    ("500ms", timedelta(milliseconds=500)), ("1.5h", timedelta(minutes=90)),
    (" 10m ", timedelta(minutes=10)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5 m", "m", "30m1h", "1h1h", "-5m", "2 hours", 300])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["90s", "5m", "1h30m", "7d", "1w", "500ms", "1w2d3h4m5s"])
def test_format_duration_round_trips(text: str) -> None:
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


def test_format_duration_is_shortest() -> None:
    assert format_duration(timedelta(seconds=300)) == "5m"
    assert format_duration(timedelta(0)) == "0s"


# ---------------------------------------------------------------- the PromQL reader

@pytest.mark.parametrize(("query", "names"), [
    ("avg(DCGM_FI_DEV_GPU_UTIL)", ["DCGM_FI_DEV_GPU_UTIL"]),
    ("1000 * histogram_quantile(0.95, sum by (le) (rate(x_bucket{job=\"api\"}[10m])))",
     ["x_bucket"]),
    ("sum(rate(a[10m])) by (le, handler) / on(instance) group_left(foo) b offset 5m", ["a", "b"]),
    ("sum without (le) (c) > bool 1e3 and NaN or Inf", ["c"]),
    ('label_replace(up, "dst", "some_text", "__name__", ".*")', ["up"]),
    ('{__name__="vllm:num_requests_waiting", job="vllm"}', ["vllm:num_requests_waiting"]),
    ("rate(vllm:prompt_tokens_total[1h:5m])  # comment mentions fake_metric", [
        "vllm:prompt_tokens_total"]),
    ("count_values(\"v\", d) unless topk(3, e) @ start()", ["d", "e"]),
])
def test_metric_names(query: str, names: list[str]) -> None:
    assert metric_names(query) == names


def test_clamp_windows_cuts_only_longer_windows_and_keeps_the_rest() -> None:
    query = ('100 * sum(rate(x{a="[1h]"}[10m])) / sum(rate(y[10m] offset 1h))'
             " + max_over_time(z[1h:5m]) + rate(w[30s])")
    assert clamp_windows(query, timedelta(seconds=45)) == (
        '100 * sum(rate(x{a="[1h]"}[45s])) / sum(rate(y[45s] offset 1h))'
        " + max_over_time(z[45s:5m]) + rate(w[30s])")
    assert clamp_windows(query, timedelta(hours=2)) == query
    assert clamp_windows("rate(x[10m)", timedelta(seconds=5)) == "rate(x[10m)"  # unclosed [


def test_range_windows() -> None:
    assert range_windows("rate(a[10m]) + max_over_time(b[1h:5m])") == ["10m", "1h"]


@pytest.mark.parametrize(("query", "problem"), [
    ("avg(DCGM_FI_DEV_GPU_UTILS)", "did you mean 'DCGM_FI_DEV_GPU_UTIL'?"),
    ("rate(http_requests_total[5m])", "shorter than 10m"),
    ("rate(http_requests_total[5x])", "cannot parse range window [5x]"),
    ("sum(rate(http_requests_total[10m])", "'(' never closed"),
    ('up{job="api}', "unclosed '{'"),
    ("vector(1)", "names no metric"),
    ("  ", "empty query"),
])
def test_promql_problems(query: str, problem: str) -> None:
    assert any(problem in p for p in promql_problems(query)), promql_problems(query)


# ---------------------------------------------------------------- SQL and k6 checks

def test_sql_problems() -> None:
    good = "SELECT day, 1.0 FROM t WHERE a >= %(start)s AND a < %(end)s AND b LIKE 'x%%'"
    assert sql_problems(good) == []
    assert "must be one SELECT (or WITH ... SELECT) statement" in sql_problems(
        "DELETE FROM t WHERE a > %(start)s AND a < %(end)s")
    assert "must be a single statement (found ';' inside)" in sql_problems(
        "SELECT %(start)s, %(end)s; DROP TABLE t")


@pytest.mark.parametrize(("key", "expressions", "ok"), [
    ("http_req_duration", ["p(95)<500", "p(99.9) < 1500", "avg<200", "med<=100"], True),
    ("http_req_duration{name:feedback}", ["p(95)<5000"], True),
    ("http_req_duration{scenario:phase1,expected_response:true}", ["max<9000"], True),
    ("errors", ["rate<0.01"], True),
    ("http_reqs", ["count>100", "rate>10"], True),
    ("checks", ["rate>0.99"], True),
    ("http_req_duration", ["p(101)<5"], False),
    ("http_req_duration", ["p95<500"], False),
    ("http_req_duration", ["p(95)<"], False),
    ("http_req_failed", ["avg<0.01"], False),
    ("http req duration", ["avg<1"], False),
    ("http_req_duration{name:}", ["avg<1"], False),
])
def test_k6_thresholds(key: str, expressions: list[str], ok: bool) -> None:
    assert (k6_threshold_problems(key, expressions) == []) is ok


@pytest.mark.parametrize(("query", "reason"), [
    ("DELETE FROM payments", "must be one SELECT"),
    ("SELECT 1; SELECT 2", "single statement"),
    ("SELECT sum(x) FROM t WHERE day >= %(start)s", "takes no parameters"),
])
def test_business_sql_is_one_parameterless_select(query: str, reason: str) -> None:
    assert any(reason in p for p in scalar_sql_problems(query))


def test_the_default_plan_has_the_revenue_query_and_a_plan_may_omit_it() -> None:
    plan = load_plan()
    assert plan.business.monthly_revenue_sql is not None
    assert scalar_sql_problems(plan.business.monthly_revenue_sql) == []
    bare = validate_plan_data({**_data(), "business": {}})
    assert bare.business.monthly_revenue_sql is None
