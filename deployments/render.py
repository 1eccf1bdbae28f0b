"""prefect.yaml for another estate: the same deployments with its Blocks and its pool.

`python -m phasegate.deployments.render --prefix prod --notifications
slack-webhook/prod-notifications [--pool NAME] [--suffix=-prod] --out prefect.prod.yaml`

prefect.yaml stays the one definition (entrypoints, schedules, concurrency, descriptions); this
writes a copy where every deployment's Block prefix and notification Block are the estate's,
and optionally its work pool and a name suffix. Then, from the checkout:
`prefect --no-prompt deploy --all --prefect-file prefect.prod.yaml` (docs/production.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from phasegate.deployments.serve import PREFECT_YAML

__all__ = ["main", "render"]


def render(doc: dict[str, Any], prefix: str, notifications: str | None = None,
           pool: str | None = None, suffix: str = "") -> dict[str, Any]:
    """A copy of the prefect.yaml document `doc` for the estate whose Blocks are `prefix-*`."""
    out = dict(doc)
    out.pop("definitions", None)  # anchors are resolved already; the copy names pools inline
    out["deployments"] = [_deployment(d, prefix, notifications, pool, suffix)
                          for d in doc.get("deployments") or []]
    return out


def _deployment(dep: dict[str, Any], prefix: str, notifications: str | None, pool: str | None,
                suffix: str) -> dict[str, Any]:
    out = dict(dep, name=dep["name"] + suffix)
    out["parameters"] = _params(dict(dep.get("parameters") or {}), prefix, notifications)
    if pool or dep.get("work_pool"):  # a copy each: no YAML anchors in the output
        out["work_pool"] = {**(dep.get("work_pool") or {}), **({"name": pool} if pool else {})}
    return out


def _params(params: dict[str, Any], prefix: str, notifications: str | None) -> dict[str, Any]:
    if isinstance(params.get("options"), dict):  # a copy: the source document stays as read
        params["options"] = dict(params["options"])
    for scope in (params, params.get("options")):
        if isinstance(scope, dict):
            if "prefix" in scope:
                scope["prefix"] = prefix
            if notifications and "notifications" in scope:
                scope["notifications"] = notifications
    return params


def main(argv: Sequence[str] | None = None) -> None:
    """Write the rendered prefect.yaml."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=PREFECT_YAML, help="prefect.yaml to read")
    parser.add_argument("--prefix", required=True, help="the estate's Block name prefix")
    parser.add_argument("--notifications", help="notification Block, <type-slug>/<name>")
    parser.add_argument("--pool", help="work pool (default: prefect.yaml's)")
    parser.add_argument("--suffix", default="", help="appended to every deployment's name")
    parser.add_argument("--out", type=Path, required=True, help="where to write")
    args = parser.parse_args(argv)
    doc = yaml.safe_load(args.file.read_text())
    rendered = render(doc, args.prefix, args.notifications, args.pool, args.suffix)
    header = (f"# Rendered from {args.file.name} by phasegate.deployments.render for prefix "
              f"'{args.prefix}'.\n# Edit prefect.yaml, not this file.\n")
    args.out.write_text(header + yaml.safe_dump(rendered, sort_keys=False, allow_unicode=True))


if __name__ == "__main__":
    main()
