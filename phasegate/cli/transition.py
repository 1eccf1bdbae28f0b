"""`phasegate approve RUN_ID ...` (answer an approval headless) and `phasegate transition`."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from uuid import UUID

from phasegate.cli.api import prefect_api, quiet_console
from phasegate.errors import ConfigError

__all__ = ["approve", "register"]


def register(sub: Any) -> None:
    """Add `approve` and `transition`."""
    ap = sub.add_parser("approve", help="answer a paused phase transition's approval")
    ap.add_argument("run_id", help="the phase-transition flow run id")
    ap.add_argument("--as", dest="name", required=True, help="your name")
    ap.add_argument("--role", required=True, help="the role you answer for (CTO, CFO)")
    ap.add_argument("--reject", action="store_true", help="reject instead of approve")
    ap.add_argument("--comment", default="", help="why")
    ap.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    ap.set_defaults(handler=_approve)
    tr = sub.add_parser("transition", help="run the phase-transition flow (waits for approvals)")
    tr.add_argument("--to", dest="target", type=int,
                    help="target phase (default: the next one; a step down needs it)")
    tr.add_argument("--dry-run", action="store_true", help="approvals only; change nothing")
    tr.add_argument("--watch", help="metric watch duration (default: the plan's, e.g. 2h)")
    tr.add_argument("--watch-interval", help="metric watch interval (default: the plan's)")
    tr.add_argument("--watch-min-window",
                    help="shortest range window of a watch query (default: the plan's, 1m)")
    tr.add_argument("--scale", type=float, default=1.0, help="load-test time scale")
    tr.add_argument("--plan", help="plan file (default plans/dreamseed.yaml)")
    tr.add_argument("--prefix", default="lab", help="Block name prefix (default: lab)")
    tr.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    tr.set_defaults(handler=_transition)


def approve(run_id: str, name: str, role: str, approved: bool, comment: str = "") -> None:
    """Resume the paused run with one approval answer. Raises ConfigError when the run is not
    waiting for an approval."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    try:
        flow_run_id = UUID(run_id)
    except ValueError as exc:
        raise ConfigError(f"not a flow run id: {run_id!r}") from exc
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    if state is None or not state.is_paused():
        raise ConfigError(f"flow run {run_id} is not waiting for an approval "
                          f"(state: {state.name if state else 'unknown'})")
    resume_flow_run(flow_run_id, run_input={"approved": approved, "name": name,
                                            "role": role, "comment": comment})


def _approve(args: argparse.Namespace) -> int:
    with prefect_api(args.dir):
        approve(args.run_id, args.name, args.role, not args.reject, args.comment)
    verb = "rejected" if args.reject else "approved"
    print(f"{verb} as {args.name} ({args.role}); run {args.run_id} resumes")
    return 0


def _transition(args: argparse.Namespace) -> int:
    quiet_console()
    from pydantic import ValidationError

    from phasegate.flows.options import TransitionOptions
    from phasegate.flows.phase_transition import phase_transition

    try:
        options = TransitionOptions(dry_run=args.dry_run, watch_duration=args.watch,
                                    watch_interval=args.watch_interval,
                                    watch_min_window=args.watch_min_window,
                                    load_test_scale=args.scale, prefix=args.prefix)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"transition options: {problems}") from None
    with prefect_api(args.dir):
        state = phase_transition(target_phase=args.target, plan_path=args.plan,
                                 options=options, return_state=True)
    if state.is_completed() and state.name != "Rejected":
        print(f"phase transition: {state.result()}")
        return 0
    # Refused, Rejected, Failed: one line on stderr, the run's own state message.
    print(f"error: phase transition {(state.name or 'ended').lower()}: {state.message}",
          file=sys.stderr)
    return 1
