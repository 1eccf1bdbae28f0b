"""The lab's Prometheus against the default plan: every PromQL query the plan holds returns
data, the live scrape continues the backfilled series (same jobs and labels), and the lab's
faults show in the metrics the plan's watch reads."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from phasegate.lab import control
from phasegate.lab.disk_exporter import set_disk
from phasegate.policy.plan import Plan, PromQLSource, load_plan
from phasegate.policy.watch import scoped_query

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker


def plan_queries(plan: Plan) -> dict[str, str]:
    """{where: query} of every PromQL query in the plan: conditions and watch metrics."""
    found = {}
    for t in plan.transitions:
        where = f"{t.from_phase}->{t.to_phase}"
        found.update({f"{where} condition {c.id}": c.source.query for c in t.conditions
                      if isinstance(c.source, PromQLSource)})
        found.update({f"{where} watch {m.name}": m.query for m in t.watch.metrics})
    return found


def query(lab: dict[str, Any], q: str) -> list[dict[str, Any]]:
    resp = httpx.get(lab["prometheus"]["url"] + "/api/v1/query", params={"query": q},
                     timeout=10)
    resp.raise_for_status()
    return list(resp.json()["data"]["result"])


def test_every_plan_query_returns_a_series(lab: dict[str, Any]) -> None:
    queries = plan_queries(load_plan())
    assert len(queries) > 20
    empty = [where for where, q in queries.items() if not query(lab, q)]
    assert not empty, {where: queries[where] for where in empty}


@pytest.mark.parametrize("selector", [
    'pg_stat_database_xact_commit{job="postgres",datname="dreamseed"}',
    'redis_memory_used_bytes{job="redis"}',
    'node_filesystem_avail_bytes{mountpoint="/var/lib/postgresql"}',
    'DCGM_FI_DEV_GPU_UTIL{job="gpu",Hostname="gpu-1",gpu="0"}',  # other tests add GPUs
    'api_active_connections{job="api-server"}',
    'vllm:kv_cache_usage_perc{job="vllm"}',
])
def test_live_scrape_continues_the_history_series(lab: dict[str, Any], selector: str) -> None:
    """A history series with other labels than the live one would be a second series here."""
    live = query(lab, selector)
    both = query(lab, f"last_over_time({selector}[3h])")
    assert len(live) == 1 and len(both) == 1, (live, both)


def test_network_history_names_the_nic_node_exporter_reports(lab: dict[str, Any]) -> None:
    live = {r["metric"]["device"] for r in query(lab, 'node_network_receive_bytes_total')}
    both = {r["metric"]["device"]
            for r in query(lab, 'last_over_time(node_network_receive_bytes_total[3h])')}
    assert both == live and "lo" not in live


def _watch_value(lab: dict[str, Any], name: str, since: float) -> float:
    plan = load_plan()
    watch = plan.transition(1, 2).watch
    metric = next(m for m in watch.metrics if m.name == name)
    result = query(lab, scoped_query(metric, watch, timedelta(seconds=since)))
    return float(result[0]["value"][1]) if result else float("nan")


def test_api_erroring_fault_shows_in_the_watched_error_rate(lab: dict[str, Any],
                                                             lab_layout: Any) -> None:
    control.set_fault(lab_layout, "api", "erroring", rate=1.0)
    started, values = time.monotonic(), []
    try:
        # the traffic driver's requests, scraped every 2 s; the window starts with the fault
        for _ in range(30):
            time.sleep(2)
            values.append(_watch_value(lab, "error-rate", time.monotonic() - started))
            if values[-1] > 50:
                break
    finally:
        control.clear_faults(lab_layout, "api")
    assert values[-1] > 50, values


def test_filling_the_db_disk_shows_in_the_plans_disk_condition(lab: dict[str, Any],
                                                               lab_layout: Any) -> None:
    cond = next(c for c in load_plan().transition(2, 3).conditions if c.id == "db-disk-70")
    assert isinstance(cond.source, PromQLSource)
    set_disk(lab_layout, base_used_gib=90)
    try:
        time.sleep(5)
        filled = float(query(lab, cond.source.query)[0]["value"][1])
    finally:
        set_disk(lab_layout, base_used_gib=40)
    assert filled > 90
