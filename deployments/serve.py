"""Serve phasegate's deployments from this process (a one-machine alternative to workers).

`python -m phasegate.deployments.serve [--file prefect.yaml] [--prefix lab] [--no-schedules]`
against a running Prefect server (the lab's, or $PREFECT_API_URL). prefect.yaml is the one
definition of the deployments (entrypoints, parameters, schedules, concurrency); this module
only reads it, so `prefect deploy --all` with a worker and `serve` run the same deployments.
The lab registers them with `prefect deploy --all` and runs them on its two process workers;
`serve` is the alternative for one machine without a worker.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PREFECT_YAML", "DeploymentSpec", "main", "read_deployments", "runner_deployments",
           "work_pools"]

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of prefect.yaml, as `serve` needs it."""

    name: str
    entrypoint: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    crons: tuple[tuple[str, str], ...] = ()          # (cron, timezone)
    concurrency_limit: int | None = None
    work_pool: str | None = None                     # the work pool its worker polls


def read_deployments(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    """The deployments prefect.yaml defines (YAML anchors resolved)."""
    doc = yaml.safe_load(path.read_text())
    specs = []
    for dep in doc.get("deployments") or []:
        crons = tuple((s["cron"], s.get("timezone", "UTC")) for s in dep.get("schedules") or []
                      if "cron" in s)
        specs.append(DeploymentSpec(
            name=dep["name"], entrypoint=dep["entrypoint"],
            description=" ".join(str(dep.get("description") or "").split()),
            parameters=dict(dep.get("parameters") or {}), crons=crons,
            concurrency_limit=dep.get("concurrency_limit"),
            work_pool=(dep.get("work_pool") or {}).get("name")))
    return specs


def work_pools(path: Path = PREFECT_YAML) -> list[str]:
    """The work pools prefect.yaml's deployments name, in order of first use."""
    return list(dict.fromkeys(s.work_pool for s in read_deployments(path) if s.work_pool))


def load_flow(entrypoint: str) -> Any:
    """The flow object an entrypoint names (`package.module.flow` or `path.py:flow`)."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint)


def runner_deployments(specs: Sequence[DeploymentSpec], prefix: str | None = None,
                       schedules: bool = True) -> list[Any]:
    """RunnerDeployments for `serve`; `prefix` replaces the Blocks' name prefix, and
    `schedules=False` leaves out the schedules (demos and tests trigger runs by hand)."""
    from prefect.schedules import Cron

    out = []
    for spec in specs:
        params = _with_prefix(spec.parameters, prefix)
        crons = [Cron(c, timezone=tz) for c, tz in spec.crons] if schedules else None
        out.append(load_flow(spec.entrypoint).to_deployment(
            name=spec.name, description=spec.description or None, parameters=params,
            schedules=crons, concurrency_limit=spec.concurrency_limit))
    return out


def _with_prefix(params: dict[str, Any], prefix: str | None) -> dict[str, Any]:
    """The parameters with the Blocks' prefix replaced (top level or in `options`)."""
    out = dict(params)
    if prefix is None:
        return out
    if "prefix" in out:
        out["prefix"] = prefix
    if isinstance(out.get("options"), dict) and "prefix" in out["options"]:
        out["options"] = {**out["options"], "prefix": prefix}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until interrupted."""
    from prefect import serve

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=PREFECT_YAML, help="prefect.yaml to read")
    parser.add_argument("--prefix", help="Block name prefix (default: prefect.yaml's)")
    parser.add_argument("--no-schedules", action="store_true", help="serve without schedules")
    args = parser.parse_args(argv)
    deployments = runner_deployments(read_deployments(args.file), args.prefix,
                                     schedules=not args.no_schedules)
    serve(*deployments, print_starting_message=True)


if __name__ == "__main__":
    main()
