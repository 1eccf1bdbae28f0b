"""Benchmark: wall time of the `phasegate` command, as a user runs it, against its goals.

Runs each command several times as a fresh process (the installed `phasegate` script beside
this interpreter, the environment as given) and prints min / median / max wall seconds, the
goal and whether the median meets it; also the median CPU seconds (user + system) of the
process, the import time of the modules each command needs (one `python -X importtime` run)
and the machine's load average: other work on the two cores stretches wall time, the CPU
column much less. `triggers check` runs the real trigger-check flow against the lab
(`phasegate lab up` first; --dir or $PHASEGATE_LAB says which lab, default .lab).

    .venv/bin/python bench/cli_bench.py [--runs 5] [--dir .lab] [--no-lab]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PHASEGATE = str(Path(sys.executable).with_name("phasegate"))


@dataclass(frozen=True)
class Case:
    """One command line and its goal (seconds of wall time)."""

    label: str
    argv: list[str]
    goal_s: float
    needs_lab: bool = False


def cases(lab_dir: str | None) -> list[Case]:
    """The commands issue 9 gives goals for."""
    lab = ["--dir", lab_dir] if lab_dir else []
    return [Case("phasegate --help", ["--help"], 0.5),
            Case("phasegate plan check", ["plan", "check"], 1.0),
            Case("phasegate triggers check --json", ["triggers", "check", "--json", *lab], 3.0,
                 needs_lab=True)]


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run, start to exit; raises when the command fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([PHASEGATE, *argv], capture_output=True, text=True, timeout=120,
                          check=False)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"phasegate {' '.join(argv)} exited {done.returncode}: "
                           f"{done.stderr.strip()[-400:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return took, cpu


def import_seconds(argv: list[str]) -> float:
    """Seconds of imports in one run (`-X importtime`, top-level modules summed)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "phasegate.cli", *argv],
                          capture_output=True, text=True, timeout=120, check=False)
    total = 0
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if match and not match.group(2).startswith(" "):
            total += int(match.group(1))
    return total / 1e6


def main() -> int:
    """Print the table; exit 1 when a median misses its goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (>= 3)")
    parser.add_argument("--dir", help="lab directory (default $PHASEGATE_LAB or .lab)")
    parser.add_argument("--no-lab", action="store_true", help="skip the commands needing it")
    args = parser.parse_args()
    runs = max(3, min(args.runs, 20))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores); {runs} runs each, after one warm-up run")
    print(f"{'command':34} {'min':>6} {'median':>7} {'max':>6} {'cpu':>6} {'imports':>8} "
          f"{'goal':>6}  met")
    missed = 0
    for case in cases(args.dir):
        if case.needs_lab and args.no_lab:
            continue
        timed(case.argv)  # warm-up: the OS file cache, Python's bytecode cache
        samples = [timed(case.argv) for _ in range(runs)]
        times = sorted(w for w, _ in samples)
        median = statistics.median(times)
        cpu = statistics.median(c for _, c in samples)
        met = median < case.goal_s
        missed += not met
        print(f"{case.label:34} {times[0]:6.2f} {median:7.2f} {times[-1]:6.2f} {cpu:6.2f} "
              f"{import_seconds(case.argv):8.2f} {'<' + format(case.goal_s, 'g'):>6}  "
              f"{'yes' if met else 'NO'}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
