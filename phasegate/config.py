"""How phasegate commands find the lab and the Prefect API it runs; the API's env contract."""

from __future__ import annotations

import os
from typing import Any

from lab.layout import LabLayout, lab_dir_from_env
from lab.procs import pid_alive

__all__ = ["VLLM_URLS_ENV", "lab_layout", "lab_prefect_api_url", "running_lab"]

# The API's container on Cloud Run reads its vLLM upstreams (comma-separated base URLs) from
# this env var; a transition changes it to route traffic around a container being replaced.
VLLM_URLS_ENV = "VLLM_BASE_URLS"


def lab_layout(explicit: str | None = None) -> LabLayout:
    """The lab directory: --dir, else $PHASEGATE_LAB, else .lab."""
    return LabLayout(lab_dir_from_env(explicit))


def running_lab(layout: LabLayout) -> dict[str, Any] | None:
    """The lab's status document when its processes are up, else None."""
    from lab.supervisor import load_state

    state = load_state(layout)
    if not state or not any(pid_alive(int(p)) for p in state.get("processes", {}).values()):
        return None
    return state


def lab_prefect_api_url(layout: LabLayout) -> str | None:
    """The Prefect API to use: $PREFECT_API_URL if set, else the running lab's server."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    state = running_lab(layout)
    if state and "prefect" in state and pid_alive(int(state["processes"].get("prefect", 0))):
        return str(state["prefect"]["api_url"])
    return None
