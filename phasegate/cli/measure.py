"""`phasegate triggers check [--json]` and `phasegate forecast [--json]`: the measuring flows,
headless, against the configured (or lab) systems."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from phasegate.cli.api import prefect_api, quiet_console
from phasegate.errors import ConfigError

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add `triggers check` and `forecast`."""
    triggers = sub.add_parser("triggers", help="trigger conditions of the next transition")
    cmds = triggers.add_subparsers(dest="triggers_command", required=True)
    check = _common(cmds.add_parser("check", help="evaluate them now (the trigger-check flow)"))
    check.add_argument("--manual", action="append", default=[], metavar="ID=VALUE",
                       help="value of a manual condition, e.g. market-share-top5=4")
    check.set_defaults(handler=_check)
    forecast = _common(sub.add_parser("forecast", help="capacity forecast (the daily flow)"))
    forecast.set_defaults(handler=_forecast)


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--plan", help="plan file (default plans/dreamseed.yaml)")
    p.add_argument("--prefix", default="lab", help="Block name prefix (default: lab)")
    p.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    return p


def _run(args: argparse.Namespace, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # No heartbeat thread: these runs take seconds and change nothing, and ending the thread
    # cost up to 1 s per command (it sleeps in 1 s steps). A transition keeps its heartbeat.
    with prefect_api(args.dir), \
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return call()


def _check(args: argparse.Namespace) -> int:
    quiet_console()
    from phasegate.flows.trigger_check import trigger_check

    try:
        manual = {k: float(v) for k, v in (m.split("=", 1) for m in args.manual)}
    except ValueError as exc:
        raise ConfigError(f"--manual: expected ID=NUMBER: {exc}") from exc
    out = _run(args, lambda: trigger_check(plan_path=args.plan, prefix=args.prefix,
                                           manual_values=manual))
    print(json.dumps(out, indent=2, default=str) if args.json else _trigger_table(out))
    return 0


def _trigger_table(out: dict[str, Any]) -> str:
    lines = [f"{'condition':<28} {'category':<15} {'threshold':<18} {'latest':>10} "
             f"{'streak':>8}  verdict"]
    for c in out["conditions"]:
        latest = "-" if c["latest_value"] is None else f"{c['latest_value']:.4g}"
        lines.append(f"{c['name']:<28} {c['category']:<15} "
                     f"{c['comparison'] + ' ' + format(c['threshold'], 'g'):<18} {latest:>10} "
                     f"{c['streak']:>3}/{c['required_streak']:<4}  {c['verdict']}")
    lines.append("")
    lines.append(out.get("summary", ""))
    return "\n".join(lines)


def _forecast(args: argparse.Namespace) -> int:
    quiet_console()
    from phasegate.flows.capacity_forecast import capacity_forecast

    out = _run(args, lambda: capacity_forecast(plan_path=args.plan, prefix=args.prefix))
    print(json.dumps(out, indent=2, default=str) if args.json else _forecast_table(out))
    return 0


def _forecast_table(out: dict[str, Any]) -> str:
    lines = [f"{'series':<16} {'model':<14} {'threshold':<28} {'eta':<11} range"]
    for s in out["series"]:
        for e in s["etas"]:
            eta = "crossed" if e["already_crossed"] else (e["eta"] or "> 1 year")
            rng = " .. ".join(d or "-" for d in e["eta_range"])
            lines.append(f"{s['name']:<16} {s['model'] or '-':<14} {e['label']:<28} "
                         f"{eta:<11} {rng}")
    lines += ["", *(a["message"] for a in out["alerts"])]
    return "\n".join(lines)
