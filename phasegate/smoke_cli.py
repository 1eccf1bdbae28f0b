"""`phasegate smoke` and `phasegate demo`: run the smoke flow through Prefect on the lab."""

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
    demo = sub.add_parser("demo", help="bring the lab up (if needed) and run the smoke flow")
    demo.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
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
    from lab.supervisor import UpOptions, status, up

    layout = lab_layout(args.dir)
    doc = status(layout) if running_lab(layout) else up(layout, UpOptions())
    print(f"lab ready in {doc.get('ready_seconds', '?')} s; Prefect UI: "
          f"{doc.get('prefect', {}).get('api_url', '').removesuffix('/api')}")
    print("\nWhat the lab-smoke flow saw, through Prefect:\n")
    print(_table(run_smoke(args.dir)))
    print(f"\nThe lab keeps running; stop it with: .venv/bin/phasegate lab down "
          f"--dir {layout.root}")
    return 0
