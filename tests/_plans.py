"""A lighter copy of the real plan for the transition tests.

The transition tests check the flow's order, gates, rollback and end state, not capacity: with
the plan's full load tests (500 VUs for phase 2) the lab's 2 cores spent most of each test
draining the load test's backlog and sometimes missed p95 < 300 ms. This copy divides every
load-test VU count by 10 and keeps everything else (thresholds included); the full-size
scenarios run in the demo and in the load-test engine's own tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from phasegate.policy.plan import DEFAULT_PLAN_PATH, load_plan

__all__ = ["light_plan"]

_VU_KEYS = ("vus", "start_vus", "pre_allocated_vus", "max_vus")


def _lighten(scenario: dict[str, Any], factor: int) -> None:
    for key in _VU_KEYS:
        if key in scenario:
            scenario[key] = max(1, int(scenario[key]) // factor) if scenario[key] else 0
    for stage in scenario.get("stages", []):
        stage["target"] = max(1, int(stage["target"]) // factor) if stage["target"] else 0


def light_plan(factor: int = 10) -> str:
    """The path of a validated copy of plans/dreamseed.yaml with load-test VUs / `factor`."""
    data = yaml.safe_load(DEFAULT_PLAN_PATH.read_text())
    for phase in data["phases"].values():
        _lighten(phase["load_test"]["scenario"], factor)
    path = Path(tempfile.mkdtemp(prefix="phasegate-plan-")) / "light.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    load_plan(path)  # still a valid plan
    return str(path)
