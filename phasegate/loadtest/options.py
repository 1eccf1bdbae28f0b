"""Where a run's Options come from: a phase of the plan, a scenario file, or k6-like flags.

- `phase_options(n)`: the plan's phase-n load test as scenario `phase<n>` tagged `phase: n` (the
  seed's load_test.js tags, so `http_req_duration{phase:2}` thresholds work as written there);
- `file_options(path)`: a YAML or JSON file in k6's `options` shape {scenarios, thresholds};
- `adhoc_options(...)`: one scenario from command-line flags.

A `--path` run repeats one request per iteration: the engine's `request` journey.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from phasegate.errors import ConfigError
from phasegate.policy.loadtest.scenario import Options, parse_options

__all__ = ["REQUEST_JOURNEY", "adhoc_options", "file_options", "phase_options"]

REQUEST_JOURNEY = "request"


def adhoc_options(scenario: dict[str, Any], thresholds: dict[str, list[Any]] | None = None,
                  *, name: str = "adhoc", request: dict[str, str] | None = None) -> Options:
    """Options with one scenario `name` (k6 fields in `scenario`) and `thresholds`.

    `request` (METHOD, PATH, BODY, NAME) makes every iteration that one request; without it
    the scenario's own `exec` (journey or llm) runs. Raises PlanError naming bad fields.
    """
    data = dict(scenario)
    if request is not None:
        data["exec"] = REQUEST_JOURNEY
        data["env"] = {**data.get("env", {}), **request}
    return parse_options({"scenarios": {name: data}, "thresholds": thresholds or {}})


def phase_options(phase: int, plan_path: str | Path | None = None) -> Options:
    """The plan's load test of `phase` as Options (scenario `phase<N>`, tag phase=N).

    Raises PlanError when the plan is invalid or has no such phase.
    """
    from phasegate.policy.plan import load_plan

    test = load_plan(plan_path).phase(phase).load_test
    scenario = test.scenario.model_dump(mode="json", by_alias=False, exclude_defaults=True)
    scenario["tags"] = {"phase": str(phase), **scenario.get("tags", {})}
    return parse_options({"scenarios": {f"phase{phase}": scenario},
                          "thresholds": dict(test.thresholds)})


def file_options(path: str | Path) -> Options:
    """k6 options {scenarios, thresholds} from a YAML or JSON file.

    Raises ConfigError when unreadable, PlanError naming every bad field.
    """
    file = Path(path)
    try:
        text = file.read_text()
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read scenario file {file}: {exc}") from exc
    return parse_options(data)
