"""`phasegate doctor`: the preflight against whatever systems the Blocks `<prefix>-*` point at."""

from __future__ import annotations

import argparse
import json
from typing import Any

from phasegate.cli.api import prefect_api

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add `doctor`."""
    p = sub.add_parser("doctor", help="check that every system the plan needs answers",
                       description="Checks, in parallel and each within a deadline, every "
                       "system the plan needs (through the Blocks PREFIX-*). Prints a table; "
                       "exit 1 on any failure. Changes nothing, sends nothing.")
    p.add_argument("--prefix", default="lab", help="Block name prefix (default: lab)")
    p.add_argument("--plan", help="plan file (default plans/dreamseed.yaml)")
    p.add_argument("--notifications", default="custom-webhook/lab-slack",
                   help="notification Block, <type-slug>/<name>")
    p.add_argument("--deadline", type=float, default=10.0, metavar="SECONDS",
                   help="each check's deadline (default 10)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    p.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from phasegate.flows.doctor import preflight
    from phasegate.policy.doctor import render_table
    from phasegate.policy.plan import load_plan

    plan = load_plan(args.plan)
    with prefect_api(args.dir):
        verdict = preflight(plan, args.prefix, args.notifications, deadline_s=args.deadline)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2))
    else:
        print(render_table(verdict.checks))
        print(f"\n{verdict.summary}")
    return 0 if verdict.ok else 1
