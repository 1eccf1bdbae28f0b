"""prefect.yaml: every deployment's entrypoint imports, names the flow it says, and its
parameters and schedules are what the flow and the issues ask for."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.flows import Flow

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def _flow(entrypoint: str) -> Flow[Any, Any]:
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert isinstance(flow, Flow)
    return flow


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_and_parameters(dep: dict[str, Any]) -> None:
    flow = _flow(dep["entrypoint"])
    assert flow.name == dep["name"]
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(dep.get("parameters", {})) <= accepted


def test_schedules_follow_the_issue() -> None:
    by_name = {d["name"]: d for d in DEPLOYMENTS}
    assert by_name["trigger-check"]["schedules"] == [
        {"cron": "*/15 * * * *", "timezone": "Asia/Seoul"}]
    assert by_name["capacity-forecast"]["schedules"] == [
        {"cron": "0 9 * * *", "timezone": "Asia/Seoul"}]
