"""Serve phasegate's deployments from this process (the simplest local runner).

`python -m deployments.serve` against a running Prefect server (the lab's, or
$PREFECT_API_URL): phase-transition and rollback (manual, one click in the UI), trigger-check
(every 15 minutes) and capacity-forecast (09:00 Asia/Seoul), lab-smoke. prefect.yaml holds the
same deployments for a work pool + worker setup.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.schedules import Cron

from flows.capacity_forecast import capacity_forecast
from flows.phase_transition import phase_transition
from flows.rollback import rollback
from flows.smoke import smoke
from flows.trigger_check import trigger_check

__all__ = ["deployments", "main"]


def deployments(prefix: str = "lab", schedules: bool = True) -> list[Any]:
    """The RunnerDeployments; `schedules=False` for demos and tests that trigger by hand."""
    return [
        phase_transition.to_deployment(name="phase-transition", parameters={
            "target_phase": 2, "prefix": prefix}),
        rollback.to_deployment(name="rollback", parameters={"prefix": prefix}),
        trigger_check.to_deployment(
            name="trigger-check", parameters={"prefix": prefix},
            schedules=[Cron("*/15 * * * *", timezone="Asia/Seoul")] if schedules else None),
        capacity_forecast.to_deployment(
            name="capacity-forecast", parameters={"prefix": prefix},
            schedules=[Cron("0 9 * * *", timezone="Asia/Seoul")] if schedules else None),
        smoke.to_deployment(name="lab-smoke", parameters={"prefix": prefix}),
    ]


def main() -> None:
    """Serve until interrupted."""
    serve(*deployments(), print_starting_message=True)


if __name__ == "__main__":
    main()
