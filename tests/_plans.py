"""A lighter copy of the real plan for the transition tests (phasegate.lab.plans: load-test
VUs / 10, everything else, thresholds included, as the plan has it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from phasegate.lab.plans import light_plan as _light_plan

__all__ = ["light_plan"]


def light_plan(factor: int = 10) -> str:
    """The path of a validated copy of plans/dreamseed.yaml with load-test VUs / `factor`."""
    path = Path(tempfile.mkdtemp(prefix="phasegate-plan-")) / "light.yaml"
    return str(_light_plan(path, factor))
