"""The `phasegate` command line. Each area registers its own subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from phasegate.errors import PhasegateError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    from phasegate.cli.blocks import register as blocks_commands
    from phasegate.cli.demo import register as demo_commands
    from phasegate.cli.doctor import register as doctor_commands
    from phasegate.cli.lab import register as lab_commands
    from phasegate.cli.loadtest import register as loadtest_commands
    from phasegate.cli.measure import register as measure_commands
    from phasegate.cli.plan import register as plan_commands
    from phasegate.cli.transition import register as transition_commands

    parser = argparse.ArgumentParser(prog="phasegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (plan_commands, lab_commands, demo_commands, measure_commands,
                     loadtest_commands, transition_commands, doctor_commands, blocks_commands):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch to the chosen handler, turn our errors into exit 1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except PhasegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
