"""`phasegate blocks save --file estate.yaml`: the Blocks `<prefix>-*` from a file without
secrets (blocks.estate); secrets from environment variables, files or a prompt."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from phasegate.cli.api import prefect_api
from phasegate.errors import ConfigError

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add `blocks save`."""
    blocks = sub.add_parser("blocks", help="the Blocks that say where each system is")
    cmds = blocks.add_subparsers(dest="blocks_command", required=True)
    save = cmds.add_parser(
        "save", help="save the Blocks PREFIX-* from an estate file (no secrets in it)",
        description="Reads an estate file (docs/production.md), resolves every {env: NAME}, "
        "{file: PATH} and {prompt: true} reference, validates each Block and saves them all, "
        "plus the concurrency limit that allows one phase transition at a time.")
    save.add_argument("--file", required=True, help="the estate file (YAML)")
    save.add_argument("--prefix", help="Block name prefix (default: the file's `prefix`)")
    save.add_argument("--dry-run", action="store_true",
                      help="resolve and validate, save nothing")
    save.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    save.set_defaults(handler=_save)


def _prompt(label: str) -> str:
    if not sys.stdin.isatty():
        raise ConfigError(f"{label.rstrip(': ')} asks for a prompt, but stdin is not a "
                          "terminal: use {env: NAME} instead")
    return getpass.getpass(label)


def _save(args: argparse.Namespace) -> int:
    from phasegate.blocks.estate import describe, estate_blocks, read_estate

    doc = read_estate(Path(args.file))
    prefix = args.prefix or doc.get("prefix")
    if not prefix:
        raise ConfigError("no prefix: give --prefix or a `prefix:` key in the file")
    entries = estate_blocks(doc, str(prefix), _prompt)
    for entry in entries:
        print(describe(entry))
    if args.dry_run:
        print(f"\n{len(entries)} Blocks valid; nothing saved (--dry-run)")
        return 0
    with prefect_api(args.dir):
        _write(entries)
    notify = next((e.ref for e in entries if e.name.endswith("-notifications")), None)
    print(f"\n{len(entries)} Blocks saved under prefix '{prefix}'"
          + (f"; notifications parameter: {notify}" if notify else ""))
    return 0


def _write(entries: list[Any]) -> None:
    from prefect.client.orchestration import get_client

    from phasegate.tasks.transitions import TRANSITION_LIMIT

    for entry in entries:
        entry.block.save(entry.name, overwrite=True)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(TRANSITION_LIMIT, 1)
