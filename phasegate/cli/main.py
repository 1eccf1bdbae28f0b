"""The `phasegate` command line. Each area registers its own subcommands."""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence

from phasegate.errors import PhasegateError

__all__ = ["COMMANDS", "build_parser", "main"]

# Every top-level command: (the module whose `register(sub)` adds it, its one-line help).
# Only the chosen command's module is imported: `phasegate --help` imports none of them and
# `phasegate plan check` neither Prefect nor the lab (an import budget test guards it). The
# help lines are repeated here so the top-level help needs no module; a test keeps them equal
# to what each module registers.
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("phasegate.cli.plan", "inspect the phase plan"),
    "lab": ("phasegate.cli.lab",
            "the embedded lab: real servers + simulators on 127.0.0.1"),
    "smoke": ("phasegate.cli.lab", "run the lab-smoke flow against the running lab"),
    "demo": ("phasegate.cli.demo", "the story on the lab: triggers, 1 -> 2 with approvals, "
             "a step back with a fault and its automatic rollback"),
    "triggers": ("phasegate.cli.measure", "trigger conditions of the next transition"),
    "forecast": ("phasegate.cli.measure", "capacity forecast (the daily flow)"),
    "loadtest": ("phasegate.cli.loadtest", "k6-grade load tests against an http(s) target"),
    "approve": ("phasegate.cli.transition", "answer a paused phase transition's approval"),
    "transition": ("phasegate.cli.transition",
                   "run the phase-transition flow (waits for approvals)"),
    "doctor": ("phasegate.cli.doctor", "check that every system the plan needs answers"),
    "blocks": ("phasegate.cli.blocks", "the Blocks that say where each system is"),
}


def _chosen(argv: Sequence[str]) -> str | None:
    """The command named on the line (the first word that is not an option), if known."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. With `argv`, only the chosen command's module is imported and
    registers its full subcommands; the other commands are listed by name and help. Without
    `argv`, every module registers (the full parser)."""
    parser = argparse.ArgumentParser(prog="phasegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = {m for m, _ in COMMANDS.values()} if argv is None else \
        {COMMANDS[c][0] for c in [_chosen(argv)] if c is not None}
    registered: set[str] = set()
    for name, (module, help_line) in COMMANDS.items():
        if module in wanted and module not in registered:
            importlib.import_module(module).register(sub)
            registered.add(module)
        elif module not in wanted:
            sub.add_parser(name, help=help_line)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch to the chosen handler, turn our errors into exit 1."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(words).parse_args(words)
    try:
        return int(args.handler(args) or 0)
    except PhasegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        # The interpreter's last garbage collection walks every object Prefect and pydantic
        # built: measured 1-3 s of a `triggers check` after its result was printed. Frozen
        # objects are skipped by it; exit handlers (Prefect sending its queued logs) still run.
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
