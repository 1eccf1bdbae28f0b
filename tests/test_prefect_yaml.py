"""prefect.yaml: every deployment's entrypoint imports, names the flow it says, and its
parameters and schedules are what the flow and the issues ask for; `serve` derives its
deployments from it (one definition)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.flows import Flow

from phasegate.deployments.serve import (
    PREFECT_YAML,
    load_flow,
    read_deployments,
    runner_deployments,
    work_pools,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def _flow(entrypoint: str) -> Flow[Any, Any]:
    flow = load_flow(entrypoint)
    assert isinstance(flow, Flow)
    assert flow.fn.__module__ == entrypoint.rsplit(".", 1)[0]  # imported, not run as a script
    return flow


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_and_parameters(dep: dict[str, Any]) -> None:
    flow = _flow(dep["entrypoint"])
    assert flow.name == dep["name"]
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(dep.get("parameters", {})) <= accepted


def test_the_one_click_transition_goes_to_the_next_phase() -> None:
    dep = next(d for d in DEPLOYMENTS if d["name"] == "phase-transition")
    assert "target_phase" not in dep["parameters"]
    assert inspect.signature(_flow(dep["entrypoint"]).fn).parameters[
        "target_phase"].default is None


def test_schedules_follow_the_issue() -> None:
    by_name = {d["name"]: d for d in DEPLOYMENTS}
    assert by_name["trigger-check"]["schedules"] == [
        {"cron": "*/15 * * * *", "timezone": "Asia/Seoul"}]
    assert by_name["capacity-forecast"]["schedules"] == [
        {"cron": "0 9 * * *", "timezone": "Asia/Seoul"}]


def test_serve_derives_every_deployment_from_prefect_yaml() -> None:
    assert PREFECT_YAML == ROOT / "prefect.yaml"
    specs = read_deployments()
    assert [s.name for s in specs] == [d["name"] for d in DEPLOYMENTS]
    served = {d.name: d for d in runner_deployments(specs, prefix="prod")}
    for dep in DEPLOYMENTS:
        runner = served[dep["name"]]
        expected = dict(dep.get("parameters", {}))
        if "prefix" in expected:
            expected["prefix"] = "prod"
        if "options" in expected:
            expected["options"] = {**expected["options"], "prefix": "prod"}
        assert runner.parameters == expected
        crons = [(s.schedule.cron, s.schedule.timezone) for s in runner.schedules or []]
        assert crons == [(s["cron"], s["timezone"]) for s in dep.get("schedules", [])]
        limit = runner.concurrency_limit
        assert (getattr(limit, "limit", limit)) == dep.get("concurrency_limit")
    unscheduled = runner_deployments(specs, schedules=False)
    assert all(not d.schedules for d in unscheduled)


def test_every_deployment_runs_on_the_pool_the_lab_starts_workers_on() -> None:
    assert work_pools() == ["local"]
    assert [s.work_pool for s in read_deployments()] == ["local"] * len(DEPLOYMENTS)
    # Resolved by `prefect deploy` in the checkout: where the workers find the code.
    assert yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}]
