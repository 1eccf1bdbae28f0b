"""Benchmark: `lab up` to all-ready, memory of the running lab, `lab down` time.

Prints a table. Runs N cold starts (fresh directory: initdb, seeding, history backfill) and N
warm starts (same directory, data kept), each stopped with `lab down`.

    .venv/bin/python bench/lab_up.py [--runs 2] [--no-prefect]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from phasegate.lab.layout import LabLayout
from phasegate.lab.supervisor import UpOptions, down, status, up


def rss_mib(pids: list[int]) -> float:
    """Sum of resident memory of `pids` and their descendants, MiB (from /proc)."""
    seen: set[int] = set()
    todo = list(pids)
    total_kib = 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            status_text = Path(f"/proc/{pid}/status").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for line in status_text.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
        todo.extend(int(c) for c in children)
    return total_kib / 1024


def one_run(layout: LabLayout, prefect: bool) -> tuple[float, float, float]:
    """(seconds to all-ready, MiB resident, seconds to stop)."""
    started = time.perf_counter()
    doc = up(layout, UpOptions(prefect=prefect))
    ready = time.perf_counter() - started
    doc = status(layout)
    mem = rss_mib([*map(int, doc["processes"].values()), *doc["containers"].values()])
    started = time.perf_counter()
    down(layout)
    return ready, mem, time.perf_counter() - started


def main() -> None:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--no-prefect", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="phasegate-bench-") as tmp:
        for i in range(args.runs):
            layout = LabLayout(Path(tmp) / f"lab{i}")
            rows.append(("cold", *one_run(layout, not args.no_prefect)))
            rows.append(("warm", *one_run(layout, not args.no_prefect)))
            down(layout, purge=True)
    print(f"{'start':<6} {'ready s':>8} {'RSS MiB':>8} {'down s':>7}")
    for kind, ready, mem, stop in rows:
        print(f"{kind:<6} {ready:>8.1f} {mem:>8.0f} {stop:>7.1f}")
    for kind in ("cold", "warm"):
        med = statistics.median(r[1] for r in rows if r[0] == kind)
        print(f"median {kind} ready: {med:.1f} s")


if __name__ == "__main__":
    main()
