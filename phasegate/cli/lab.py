"""`phasegate lab up | status | down | gpus | fault | traffic` and `phasegate smoke`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from phasegate.cli.api import prefect_api
from phasegate.errors import ConfigError, LabError
from phasegate.lab import control
from phasegate.lab.layout import LabLayout, lab_dir_from_env
from phasegate.lab.procs import pid_alive

__all__ = ["lab_layout", "register", "run_smoke", "running_lab"]


def register(sub: Any) -> None:
    """Add the `lab` command and its subcommands to the top-level parser."""
    lab = sub.add_parser("lab", help="the embedded lab: real servers + simulators on 127.0.0.1")
    cmds = lab.add_subparsers(dest="lab_command", required=True)
    up = _with_dir(cmds.add_parser("up", help="start the lab (data kept between runs)"))
    up.add_argument("--no-prefect", action="store_true",
                    help="do not start a Prefect server (nor its workers)")
    up.add_argument("--no-schedules", action="store_true",
                    help="deployment schedules off (runs start only when asked for)")
    up.add_argument("--gpus", default="gpu-1=1,gpu-2=0",
                    help="initial GPUs per host, e.g. gpu-1=1,gpu-2=0")
    up.add_argument("--traffic", type=float, default=2.0, help="user journeys per second")
    up.add_argument("--history-days", type=int, default=90, help="backfilled history")
    up.add_argument("--json", action="store_true", help="print the status as JSON")
    up.set_defaults(handler=_up)
    st = _with_dir(cmds.add_parser("status", help="what runs where"))
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(handler=_status)
    down = _with_dir(cmds.add_parser("down", help="stop every lab process by PID"))
    down.add_argument("--purge", action="store_true", help="also delete the lab's data")
    down.set_defaults(handler=_down)
    _register_controls(cmds)
    smoke = sub.add_parser("smoke", help="run the lab-smoke flow against the running lab")
    _with_dir(smoke).add_argument("--json", action="store_true")
    smoke.set_defaults(handler=_smoke)


def lab_layout(explicit: str | None = None) -> LabLayout:
    """The lab directory: --dir, else $PHASEGATE_LAB, else .lab."""
    return LabLayout(lab_dir_from_env(explicit))


def running_lab(layout: LabLayout) -> dict[str, Any] | None:
    """The lab's status document when its processes are up, else None."""
    from phasegate.lab.supervisor import load_state

    state = load_state(layout)
    if not state or not any(pid_alive(int(p)) for p in state.get("processes", {}).values()):
        return None
    return state


def _register_controls(cmds: Any) -> None:
    gpus = _with_dir(cmds.add_parser("gpus", help="install or remove GPUs on a host"))
    gpus.add_argument("host")
    gpus.add_argument("count", type=int)
    gpus.set_defaults(handler=_gpus)
    fault = _with_dir(cmds.add_parser("fault", help="switch a simulator fault on, or --clear"))
    fault.add_argument("component", nargs="?", choices=sorted(control.FAULTS))
    fault.add_argument("fault", nargs="?")
    fault.add_argument("--param", action="append", default=[], metavar="K=V",
                       help="fault parameter, e.g. factor=10 (repeatable)")
    fault.add_argument("--clear", action="store_true", help="clear faults (of COMPONENT)")
    fault.set_defaults(handler=_fault)
    traffic = _with_dir(cmds.add_parser("traffic", help="steady user load, journeys/s"))
    traffic.add_argument("rate", type=float)
    traffic.set_defaults(handler=_traffic)


def _with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    return p


def _parse_gpus(text: str) -> dict[str, int]:
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        return {name.strip(): int(n) for name, n in pairs}
    except ValueError as exc:
        raise ConfigError(f"--gpus: expected HOST=N[,HOST=N], got {text!r}") from exc


def _up(args: argparse.Namespace) -> int:
    from phasegate.lab.supervisor import UpOptions, up

    opts = UpOptions(prefect=not args.no_prefect, schedules=not args.no_schedules,
                     gpus=_parse_gpus(args.gpus),
                     traffic_rate=args.traffic, history_days=args.history_days)
    doc = up(lab_layout(args.dir), opts)
    print(json.dumps(doc, indent=2) if args.json else _human(doc))
    return 0


def _status(args: argparse.Namespace) -> int:
    from phasegate.lab.supervisor import status

    doc = status(lab_layout(args.dir))
    print(json.dumps(doc, indent=2) if args.json else _human(doc))
    return 0 if doc["running"] and all(doc["running"].values()) else 3


def _human(doc: dict[str, Any]) -> str:
    running = doc.get("running", {})
    lines = [f"lab {doc['dir']}  (ready in {doc.get('ready_seconds', '?')} s)", ""]
    for comp, pid in sorted(doc.get("processes", {}).items()):
        state = "up" if running.get(comp, True) else "DOWN"
        lines.append(f"  {comp:<16} pid {pid:<8} {state}")
    for key, pid in sorted(doc.get("containers", {}).items()):
        lines.append(f"  container {key:<22} pid {pid}")
    lines.append("")
    for name in ("postgres", "redis", "prometheus", "alertmanager", "api", "vllm", "gcp",
                 "receiver", "prefect"):
        part = doc.get(name, {})
        url = part.get("dsn") or part.get("url") or part.get("endpoint") or part.get("api_url")
        if url:
            lines.append(f"  {name:<13} {url}")
    prefect = doc.get("prefect", {})
    if prefect.get("database"):
        lines.append(f"  {'prefect db':<13} {prefect['database']}")
    for pool, workers in prefect.get("workers", {}).items():
        lines.append(f"  {'workers':<13} pool {pool} (process): {', '.join(workers)}")
    for h in doc.get("gpu_hosts", []):
        lines.append(f"  {h['name']:<13} ssh {h['user']}@{h['host']} -p {h['port']} "
                     f"-i {h['key_path']}  ({h['gpus']} GPUs, vLLM port {h['vllm_port']})")
    return "\n".join(lines)


def _down(args: argparse.Namespace) -> int:
    from phasegate.lab.supervisor import down

    stopped = down(lab_layout(args.dir), purge=args.purge)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _gpus(args: argparse.Namespace) -> int:
    try:
        gpus = control.set_gpu_count(lab_layout(args.dir), args.host, args.count)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(f"{args.host}: {len(gpus)} GPU(s)")
    return 0


def _fault(args: argparse.Namespace) -> int:
    layout = lab_layout(args.dir)
    if args.clear:
        control.clear_faults(layout, args.component)
        print(f"cleared faults{' of ' + args.component if args.component else ''}")
        return 0
    if not args.component or not args.fault:
        raise ConfigError("usage: phasegate lab fault COMPONENT FAULT [--param K=V] | --clear")
    try:
        params = {k: float(v) for k, v in (p.split("=", 1) for p in args.param)}
        control.set_fault(layout, args.component, args.fault, **params)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(f"fault on: {args.component} {args.fault} {params or ''}".rstrip())
    return 0


def _traffic(args: argparse.Namespace) -> int:
    try:
        control.set_traffic_rate(lab_layout(args.dir), args.rate)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(f"traffic: {args.rate:g} journeys/s")
    return 0


def run_smoke(lab_dir: str | None = None) -> dict[str, Any]:
    """Run `lab-smoke` with the lab's Prefect server as the API; returns what it saw."""
    layout = lab_layout(lab_dir)
    if running_lab(layout) is None:
        raise LabError(f"no running lab in {layout.root}: run `phasegate lab up` first")
    from phasegate.flows.smoke import smoke

    with prefect_api(lab_dir):
        return smoke()


def _smoke(args: argparse.Namespace) -> int:
    seen = run_smoke(args.dir)
    print(json.dumps(seen, indent=2, default=str) if args.json else _table(seen))
    return 0


def _table(seen: dict[str, Any]) -> str:
    width = max(len(k) for k in seen)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in seen.items())
