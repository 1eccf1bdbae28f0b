"""`phasegate smoke` (the smoke flow through Prefect on the lab) and `phasegate demo`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from phasegate.config import lab_layout, lab_prefect_api_url, running_lab
from phasegate.errors import LabError

__all__ = ["register", "run_smoke"]


def register(sub: Any) -> None:
    """Add `smoke` and `demo`."""
    smoke = sub.add_parser("smoke", help="run the lab-smoke flow against the running lab")
    smoke.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    smoke.add_argument("--json", action="store_true")
    smoke.set_defaults(handler=_smoke)
    demo = sub.add_parser("demo", help="the story on the lab: triggers, 1 -> 2 with approvals, "
                          "2 -> 3 with a fault and its automatic rollback")
    demo.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    demo.add_argument("--interactive", action="store_true",
                      help="wait for people to approve in the Prefect UI")
    demo.set_defaults(handler=_demo)


def run_smoke(lab_dir: str | None = None) -> dict[str, Any]:
    """Run `lab-smoke` with the lab's Prefect server as the API; returns what it saw."""
    layout = lab_layout(lab_dir)
    if running_lab(layout) is None:
        raise LabError(f"no running lab in {layout.root}: run `phasegate lab up` first")
    api = lab_prefect_api_url(layout)
    if api is None:
        raise LabError("the lab runs without a Prefect server (--no-prefect); restart it")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.smoke import smoke

    with temporary_settings(updates={PREFECT_API_URL: api}):
        return smoke()


def _smoke(args: argparse.Namespace) -> int:
    seen = run_smoke(args.dir)
    print(json.dumps(seen, indent=2, default=str) if args.json else _table(seen))
    return 0


def _table(seen: dict[str, Any]) -> str:
    width = max(len(k) for k in seen)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in seen.items())


def _demo(args: argparse.Namespace) -> int:
    from phasegate.demo import run_demo

    layout = lab_layout(args.dir)
    code = run_demo(layout, interactive=args.interactive)
    print(f"\nThe lab keeps running; stop it with: .venv/bin/phasegate lab down "
          f"--dir {layout.root}")
    return code
