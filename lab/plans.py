"""A lighter copy of the plan for the lab's two cores: every load-test VU count / `factor`.

The plan's load tests are sized for production (500 VUs of LLM journeys for phase 2). On the
lab's 2 cores that many VUs queue on the simulated vLLM for seconds, and with k6's semantics
(iterations in flight finish within gracefulStop and are counted) the load test fails for the
lab's size, not for the change. The demo and the transition tests use this copy; thresholds,
watch and everything else are the plan's. The full-size scenarios run in the load-test
engine's own tests and benchmarks.
"""

from __future__ import annotations

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


def light_plan(path: Path, factor: int = 10, source: Path = DEFAULT_PLAN_PATH) -> Path:
    """Write a validated copy of `source` with load-test VUs / `factor` to `path`."""
    data = yaml.safe_load(source.read_text())
    for phase in data["phases"].values():
        _lighten(phase["load_test"]["scenario"], factor)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {source.name} with load-test VUs / {factor} (phasegate.lab.plans)\n"
                    + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    load_plan(path)  # still a valid plan
    return path
