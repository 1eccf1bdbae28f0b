"""The end-of-test summary: k6's summary-export JSON layout, a k6-like text table, the exit code.

Layout (k6 `--summary-export`, plus our keys):
- `metrics.<name>`: trends {avg, min, med, max, p(90), p(95), p(99)} (k6 writes up to p(95);
  p(99) is ours), rates {value, passes, fails}, counters {count, rate}, gauges {value, min, max}.
  A threshold on a sub-metric adds an entry under its full key (`http_req_duration{name:x}`),
  as k6 does. Without samples a statistic is null, not 0: "no data" is not a measurement.
- `metrics.<name>.thresholds`: {"p(95)<300": {"ok": bool, "observed": float|null, "no_data":
  bool}}. Our reading of k6: its legacy summary-export writes `{"p(95)<300": false}` where the
  boolean means "failed" (k6 issue #1498, k6-docs #30: kept inverted for compatibility), and
  handleSummary's data carries `{"ok": bool}`. We write `ok` (true = passed), never the bare
  inverted boolean.
- rates: `passes` counts the non-zero samples, as k6 (for http_req_failed the failed requests).
- `checks`: {name: {passes, fails}} from the `checks` rate metric tagged `check=<name>`.
- ours: `windows` (each threshold's verdict per time window), `aborted` (bool), `abort_reason`,
  `state.testRunDurationMs` (k6's key) and `meta` (whatever the engine passes along).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from phasegate.policy.loadtest.metrics import (
    TIME_METRICS,
    Counter,
    Gauge,
    MetricStore,
    Rate,
    Sink,
    Trend,
)
from phasegate.policy.loadtest.thresholds import ThresholdResult, WindowResult, parse_key

__all__ = [
    "EXIT_ABORTED",
    "EXIT_OK",
    "EXIT_THRESHOLDS_FAILED",
    "TREND_STATS",
    "exit_code",
    "render_text",
    "summary_export",
]

EXIT_OK = 0
EXIT_THRESHOLDS_FAILED = 99  # k6 ThresholdsHaveFailed (also when abortOnFail stopped the run)
EXIT_ABORTED = 105           # k6 ExternalAbort: stopped for another reason, thresholds all ok
TREND_STATS: tuple[str, ...] = ("avg", "min", "med", "max", "p(90)", "p(95)", "p(99)")
_WIDTH = 32
_AGGREGATION = re.compile(r"\s*(p\([^)]*\)|[a-z]+)")


# ---------------------------------------------------------------- export

def _trend_stats(sink: Trend) -> dict[str, float | None]:
    med, p90, p95, p99 = sink.percentiles([50, 90, 95, 99])
    low, high = (sink.min, sink.max) if sink.count else (None, None)
    return {"avg": sink.mean, "min": low, "med": med, "max": high,
            "p(90)": p90, "p(95)": p95, "p(99)": p99}


def _stats(sink: Sink, duration_s: float) -> dict[str, Any]:
    """A sink in k6's summary-export shape."""
    if isinstance(sink, Trend):
        return _trend_stats(sink)
    if isinstance(sink, Rate):
        return {"value": sink.rate, "passes": sink.passes, "fails": sink.fails}
    if isinstance(sink, Counter):
        return {"count": sink.sum, "rate": sink.per_s(duration_s)}
    assert isinstance(sink, Gauge)
    has = bool(sink.count)
    return {"value": sink.value if has else None, "min": sink.min if has else None,
            "max": sink.max if has else None}


def _metric_entry(store: MetricStore, key: str, duration_s: float) -> dict[str, Any]:
    metric, tags = parse_key(key)
    if store.kind(metric) is None:
        return {}
    return _stats(store.select(metric, dict(tags)), duration_s)


def _threshold_verdict(result: ThresholdResult) -> dict[str, Any]:
    verdict: dict[str, Any] = {"ok": result.ok, "observed": result.observed,
                               "no_data": result.no_data}
    if result.error:
        verdict["error"] = result.error
    return verdict


def _checks(store: MetricStore) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for tags, sink in store.series("checks"):
        if isinstance(sink, Rate) and "check" in tags:
            entry = out.setdefault(tags["check"], {"passes": 0, "fails": 0})
            entry["passes"] += sink.passes
            entry["fails"] += sink.fails
    return out


def _window_row(result: WindowResult) -> dict[str, Any]:
    return {"metric": result.threshold.key, "threshold": result.threshold.expression,
            "window": result.window, "start_s": result.start_s, "end_s": result.end_s,
            "ok": result.ok, "observed": result.observed, "no_data": result.no_data}


def summary_export(store: MetricStore, results: Iterable[ThresholdResult],
                   windows: Iterable[WindowResult], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The run's summary as a JSON-ready dict (layout in the module docstring).

    `meta` keys read here: `duration_s` (the run's length, for counter rates; default the
    latest sample time), `aborted` (False/None, True or the reason as text), `window_s`
    (default the store's); everything else is copied under `meta`.
    """
    duration = float(meta.get("duration_s", store.duration_s))
    metrics: dict[str, dict[str, Any]] = {
        name: _stats(store.select(name), duration) for name in store.metrics()
    }
    for result in results:
        key = result.threshold.key
        entry = metrics.setdefault(key, _metric_entry(store, key, duration))
        entry.setdefault("thresholds", {})[result.threshold.expression] = \
            _threshold_verdict(result)
    aborted = meta.get("aborted")
    return {
        "metrics": metrics,
        "checks": _checks(store),
        "windows": [_window_row(w) for w in windows],
        "window_s": float(meta.get("window_s", store.window_s)),
        "aborted": bool(aborted),
        "abort_reason": aborted if isinstance(aborted, str) else None,
        "state": {"testRunDurationMs": duration * 1000},
        "meta": {k: v for k, v in meta.items() if k not in ("aborted", "duration_s")},
    }


def exit_code(results: Iterable[ThresholdResult], aborted: object = False) -> int:
    """k6's convention: 99 when any threshold failed (whether or not abortOnFail stopped the
    run), 105 when the run was aborted for another reason (k6's ExternalAbort: an interrupted
    run is not a pass), else 0. No-data thresholds pass, as in k6."""
    if any(not result.ok for result in results):
        return EXIT_THRESHOLDS_FAILED
    return EXIT_ABORTED if aborted else EXIT_OK


# ---------------------------------------------------------------- text

def _duration(ms: float) -> str:
    """k6's way of printing a time: 812.5µs, 148.21ms, 1.43s, 2m3.5s."""
    if abs(ms) < 1:
        return f"{ms * 1000:.2f}µs"
    if abs(ms) < 1000:
        return f"{ms:.2f}ms"
    if abs(ms) < 60_000:
        return f"{ms / 1000:.2f}s"
    minutes, rest = divmod(ms / 1000, 60)
    return f"{int(minutes)}m{rest:.1f}s"


def _number(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    if metric in TIME_METRICS:
        return _duration(value)
    return f"{value:.6g}"


def _dots(label: str, indent: int) -> str:
    return label + "." * max(_WIDTH - indent - len(label), 3) + ":"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _stat_text(metric: str, stats: Mapping[str, Any]) -> str:
    if "avg" in stats:
        return " ".join(f"{k}={_number(stats[k], metric)}" for k in TREND_STATS)
    if "passes" in stats:
        return f"{_percent(stats['value'])} ✓ {stats['passes']:<8} ✗ {stats['fails']}"
    if "count" in stats:
        return f"{stats['count']:<8g} {stats['rate']:.6g}/s"
    if "value" in stats:
        return (f"{_number(stats['value'], metric):<8} min={_number(stats['min'], metric)} "
                f"max={_number(stats['max'], metric)}")
    return "no data"


def _mark(entry: Mapping[str, Any]) -> str:
    verdicts = entry.get("thresholds")
    if not verdicts:
        return " "
    return "✓" if all(v["ok"] for v in verdicts.values()) else "✗"


def _metric_lines(summary: Mapping[str, Any]) -> list[str]:
    metrics: Mapping[str, Any] = summary["metrics"]
    lines = []
    for key in sorted(metrics, key=lambda k: (k.split("{")[0], "{" in k, k)):
        name, _, tags = key.partition("{")
        label, indent = (name, 0) if not tags else ("{ " + tags.rstrip("}") + " }", 2)
        stats = {k: v for k, v in metrics[key].items() if k != "thresholds"}
        lines.append(f"   {_mark(metrics[key])} {' ' * indent}{_dots(label, indent)} "
                     f"{_stat_text(name, stats)}")
    return lines


def _check_lines(checks: Mapping[str, Mapping[str, int]]) -> list[str]:
    lines = []
    for name, counts in checks.items():
        passes, fails = counts["passes"], counts["fails"]
        lines.append(f"     {'✓' if not fails else '✗'} {name}")
        if fails:
            share = passes / (passes + fails) * 100
            lines.append(f"      ↳  {share:.0f}% — ✓ {passes} / ✗ {fails}")
    return lines


def _observed(summary: Mapping[str, Any], key: str, value: float | None) -> str:
    """An observed value in its metric's unit: a time, a percentage for rates, a number."""
    if "passes" in summary["metrics"].get(key, {}):
        return _percent(value)
    return _number(value, key.split("{")[0])


def _threshold_lines(summary: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, entry in summary["metrics"].items():
        for expression, verdict in entry.get("thresholds", {}).items():
            if verdict["no_data"]:
                seen, mark = "no data", "✓"
            else:
                aggregation = _AGGREGATION.match(expression)
                method = aggregation[1] if aggregation else "value"
                seen = f"{method}={_observed(summary, key, verdict['observed'])}"
                mark = "✓" if verdict["ok"] else "✗"
            lines.append(f"   {mark} {key}: {expression}  ({seen})")
    return lines


def _window_lines(summary: Mapping[str, Any]) -> list[str]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in summary["windows"]:
        groups.setdefault((row["metric"], row["threshold"]), []).append(row)
    lines = []
    for (key, expression), rows in groups.items():
        failed = [r for r in rows if r["ok"] is False]
        empty = sum(1 for r in rows if r["no_data"])
        note = f", no data in {empty}" if empty else ""
        lines.append(f"   {'✗' if failed else '✓'} {key}: {expression}  failed in "
                     f"{len(failed)} of {len(rows)} windows{note}")
        lines += [f"       ✗ {r['start_s']:g}s-{r['end_s']:g}s: "
                  f"{_observed(summary, key, r['observed'])}" for r in failed[:10]]
        if len(failed) > 10:
            lines.append(f"       ... and {len(failed) - 10} more")
    return lines


def render_text(summary: Mapping[str, Any]) -> str:
    """A k6-like terminal summary of `summary_export`'s dict: checks with their pass share,
    one dotted line per metric (✓/✗ when it has thresholds), the thresholds with the observed
    value, the per-window verdicts and the abort, if any."""
    sections = [_check_lines(summary["checks"]), _metric_lines(summary)]
    thresholds = _threshold_lines(summary)
    if thresholds:
        sections.append(["   thresholds (whole run)"] + thresholds)
    windows = _window_lines(summary)
    if windows:
        sections.append([f"   thresholds per {summary['window_s']:g}s window"] + windows)
    if summary["aborted"]:
        sections.append([f"   aborted: {summary['abort_reason'] or 'yes'}"])
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"
