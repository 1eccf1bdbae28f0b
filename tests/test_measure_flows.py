"""trigger-check and capacity-forecast against the lab's PostgreSQL and Prometheus (90 days of
backfilled history), through the lab's Prefect server."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolUpdate

from phasegate.blocks.systems import PrometheusConnection
from phasegate.deployments.serve import PREFECT_YAML, work_pools
from phasegate.flows.capacity_forecast import capacity_forecast
from phasegate.flows.trigger_check import trigger_check
from phasegate.lab.procs import free_port
from phasegate.lab.receiver import read_inbox
from phasegate.lab.services import deactivate_schedules, deploy_all
from phasegate.tasks.transitions import TRANSITION_DEPLOYMENT

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("lab")]  # one lab, one worker

CONDITION_KEYS = {"name", "category", "source", "verdict", "streak", "required_streak",
                  "latest_value", "threshold"}


def _slack_titles(layout: Any) -> list[str]:
    return [m["body"].get("text", "").splitlines()[0] for m in read_inbox(layout, "slack")]


def _evaluations(lab: dict[str, Any]) -> list[tuple[bool, dict[str, Any]]]:
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT due, state FROM trigger_evaluations ORDER BY id")]


def test_trigger_check_reports_evidence_and_alerts_once(lab: dict[str, Any],
                                                        lab_layout: Any) -> None:
    before = len(_slack_titles(lab_layout))
    first = trigger_check()
    assert len(first["conditions"]) == 14
    for cond in first["conditions"]:
        assert set(cond) >= CONDITION_KEYS
        assert cond["verdict"] in {"met", "not_met", "unknown"}
        assert cond["daily"] or cond["weeks"] or cond["source"] == "manual"
    assert first["quorum"]["min_met"] == 3 and first["quorum"]["counts"] == "bullets"
    assert first["due"] == (first["quorum"]["met_count"] >= 3)
    assert not [c for c in first["conditions"] if c["verdict"] == "unknown"]
    after_first = len(_slack_titles(lab_layout))
    assert after_first == before + (1 if first["due"] else 0)
    second = trigger_check()
    assert second["due"] == first["due"]
    assert len(_slack_titles(lab_layout)) == after_first  # no change, no message
    assert len(_evaluations(lab)) >= 2


def test_prometheus_down_is_a_data_gap_never_a_pass(lab: dict[str, Any],
                                                    lab_layout: Any) -> None:
    PrometheusConnection(url=f"http://127.0.0.1:{free_port()}", timeout_s=2).save(
        "dead-prometheus", overwrite=True)
    trigger_check()  # a baseline with data
    before = len(_slack_titles(lab_layout))
    gap = trigger_check(prometheus_block="dead-prometheus")
    promql = [c for c in gap["conditions"] if c["source"] == "promql"]
    assert promql and all(c["verdict"] == "unknown" for c in promql)
    assert all("Prometheus" in c["reason"] for c in promql)
    assert gap["quorum"]["unknown_count"] == len(promql)
    titles = _slack_titles(lab_layout)[before:]
    assert len(titles) == 1 and "data gap" in titles[0], titles
    trigger_check(prometheus_block="dead-prometheus")
    assert len(_slack_titles(lab_layout)) == before + 1  # the same gap: no second alert
    trigger_check()
    assert "restored" in _slack_titles(lab_layout)[-1]


def test_auto_create_says_when_there_is_no_transition_deployment(
        lab: dict[str, Any], lab_layout: Any) -> None:
    # `lab up` registers every deployment: take phase-transition away, register it after.
    with get_client(sync_client=True) as client:
        client.delete_deployment(client.read_deployment_by_name(TRANSITION_DEPLOYMENT).id)
    try:
        out = trigger_check(auto_create=True)
    finally:
        deploy_all(lab_layout, lab["prefect"]["api_url"], PREFECT_YAML.parent)
        deactivate_schedules(lab["prefect"]["api_url"])  # as the suite's lab has them
    if out["due"]:
        assert out["transition_run"] == {"created": None,
                                         "error": "no phase-transition deployment to run"}
    else:
        assert out["transition_run"] is None


def test_trigger_check_publishes_artifacts(lab: dict[str, Any]) -> None:
    trigger_check()
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"trigger-check-1-2", "trigger-check-summary"} <= keys


def test_capacity_forecast_dates_the_thresholds(lab: dict[str, Any]) -> None:
    out = capacity_forecast()
    names = {s["name"]: s for s in out["series"]}
    assert set(names) == {"users_total", "dau", "gpu_util_peak", "api_p95_peak_ms"}
    users = names["users_total"]
    assert users["model"] in users["backtest"] and "linear" in users["backtest"]
    labels = [e["label"] for e in users["etas"]]
    assert any("10,000" in label for label in labels)
    assert all(s["backtest"][s["model"]]["score"] is not None for s in names.values())
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts()}
    assert arts["capacity-forecast-plot"].type == "image"
    assert str(arts["capacity-forecast-plot"].data).startswith("data:image/png;base64,")
    assert {"capacity-forecast-etas", "capacity-forecast-backtest"} <= set(arts)
    with psycopg.connect(lab["postgres"]["state_dsn"]) as conn:
        assert conn.execute("SELECT count(*) FROM forecasts").fetchone()[0] >= 1
    # The same day again: the same alerts stand, none is sent twice.
    again = capacity_forecast()
    assert again["notified"] == []
    assert [(a["series"], a["eta"]["label"], a["notified_on"]) for a in again["alerts"]] == [
        (a["series"], a["eta"]["label"], a["notified_on"]) for a in out["alerts"]]


def test_cli_json_shapes(lab: dict[str, Any]) -> None:
    env = {"PHASEGATE_LAB": lab["dir"], "PATH": "/usr/bin:/bin"}
    for argv, key in ((["triggers", "check", "--json"], "conditions"),
                      (["forecast", "--json"], "series")):
        out = subprocess.run([sys.executable, "-m", "phasegate.cli", *argv], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        doc = json.loads(out.stdout)
        assert doc[key]
    assert {"quorum", "due"} <= set(json.loads(subprocess.run(
        [sys.executable, "-m", "phasegate.cli", "triggers", "check", "--json"], env=env,
        capture_output=True, text=True, timeout=120).stdout))


def test_due_creates_one_transition_run_and_never_a_second(lab: dict[str, Any]) -> None:
    pool = work_pools()[0]
    created: list[str] = []
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(TRANSITION_DEPLOYMENT).id
        # The created run would wait for approvals: no worker takes it while the pool pauses.
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
    try:
        first = trigger_check(auto_create=True)
        if not first["due"]:
            pytest.skip("the lab's world is not due today")
        created.append(first["transition_run"]["created"])
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(created[0])
        assert run.parameters["target_phase"] == 2 and run.deployment_id == deployment_id
        second = trigger_check(auto_create=True)
        assert second["transition_run"] == {"created": None, "open": created}
    finally:
        with get_client(sync_client=True) as client:
            for run_id in created:
                client.delete_flow_run(run_id)
            client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))
