"""The summary: k6's summary-export layout plus our windows and abort, the text table, exit
codes (k6: 0 pass, 99 thresholds failed; 105 aborted otherwise)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from phasegate.policy.loadtest.metrics import MetricStore
from phasegate.policy.loadtest.summary import exit_code, render_text, summary_export
from phasegate.policy.loadtest.thresholds import (
    ThresholdResult,
    evaluate,
    evaluate_windows,
    parse_thresholds,
)

THRESHOLDS = {
    "http_req_duration": ["p(95)<300"],
    "http_req_duration{name:feedback}": ["p(95)<5000"],
    "errors": ["rate<0.01"],
    "dropped_iterations": ["count<1"],
    "llm_ttft": ["p(95)<1000"],
}


def _store() -> MetricStore:
    store = MetricStore(window_s=10)
    for i in range(400):  # 20 s at 20 requests/s
        t = i / 20
        name = "feedback" if i % 2 else "questions"
        tags = (("scenario", "phase1"), ("name", name))
        duration = 1200.0 if name == "feedback" else 40.0 + i % 10
        store.add("http_req_duration", duration, t, tags)
        store.add("http_reqs", 1, t, tags)
        store.add("http_req_failed", i % 100 == 0, t, tags)
        store.add("errors", i % 50 == 0, t)
        store.add("checks", True, t, (("check", "status is 200"),))
        store.add("checks", duration < 500, t, (("check", "response time < 500ms"),))
        store.add("vus", 10 + i % 3, t)
    return store


def _summary(aborted: Any = None) -> tuple[dict[str, Any], list[ThresholdResult]]:
    store = _store()
    thresholds = parse_thresholds(THRESHOLDS)
    results = evaluate(thresholds, store, elapsed_s=20)
    windows = evaluate_windows(thresholds, store)
    meta = {"duration_s": 20.0, "aborted": aborted, "target": "http://127.0.0.1:8080"}
    return summary_export(store, results, windows, meta), results


def test_summary_export_layout() -> None:
    summary, _ = _summary()
    metrics = summary["metrics"]
    assert set(metrics["http_req_duration"]) == {
        "avg", "min", "med", "max", "p(90)", "p(95)", "p(99)", "thresholds"}
    assert metrics["http_req_duration"]["max"] == 1200
    assert set(metrics["http_req_failed"]) == {"value", "passes", "fails"}
    assert (metrics["http_req_failed"]["passes"], metrics["http_req_failed"]["fails"]) == (4, 396)
    assert metrics["http_reqs"] == {"count": 400, "rate": 20}
    assert metrics["vus"] == {"value": 10, "min": 10, "max": 12}  # the last: 10 + 399 % 3
    assert summary["checks"] == {"status is 200": {"passes": 400, "fails": 0},
                                 "response time < 500ms": {"passes": 200, "fails": 200}}
    assert summary["state"] == {"testRunDurationMs": 20_000}
    assert summary["meta"] == {"target": "http://127.0.0.1:8080"}
    assert (summary["aborted"], summary["abort_reason"]) == (False, None)
    json.dumps(summary)  # JSON-ready as it is


def test_thresholds_are_written_per_metric_key_with_ok() -> None:
    metrics = _summary()[0]["metrics"]
    # ok means passed (k6's legacy summary-export writes the inverse as a bare boolean)
    assert metrics["http_req_duration"]["thresholds"]["p(95)<300"]["ok"] is False
    feedback = metrics["http_req_duration{name:feedback}"]
    assert feedback["thresholds"]["p(95)<5000"] == {"ok": True, "observed": 1200.0,
                                                     "no_data": False}
    assert feedback["med"] == 1200
    assert metrics["errors"]["thresholds"]["rate<0.01"]["ok"] is False  # 8 of 400 = 2 %
    assert metrics["dropped_iterations"]["thresholds"]["count<1"]["observed"] == 0
    ttft = metrics["llm_ttft"]
    assert ttft["p(95)"] is None and ttft["thresholds"]["p(95)<1000"] == {
        "ok": True, "observed": None, "no_data": True}
    assert "thresholds" not in metrics["http_reqs"]


def test_windows_rows() -> None:
    summary, _ = _summary()
    rows = summary["windows"]
    assert summary["window_s"] == 10
    assert len(rows) == len(THRESHOLDS) * 2
    assert set(rows[0]) == {"metric", "threshold", "window", "start_s", "end_s", "ok",
                            "observed", "no_data"}
    ttft = [r for r in rows if r["metric"] == "llm_ttft"]
    assert all(r["ok"] is None and r["no_data"] for r in ttft)


def test_render_text_is_k6_like() -> None:
    summary, _ = _summary(aborted="errors: rate<0.01 failed (abortOnFail)")
    text = render_text(summary)
    lines = text.splitlines()
    duration = next(line for line in lines if "http_req_duration..." in line)
    assert duration.lstrip().startswith("✗ http_req_duration")
    for stat in ("avg=", "min=", "med=", "max=", "p(90)=", "p(95)=", "p(99)=1.20s"):
        assert stat in duration
    assert any("{ name:feedback }" in line and line.lstrip().startswith("✓") for line in lines)
    assert "     ✓ status is 200" in lines and "     ✗ response time < 500ms" in lines
    assert "      ↳  50% — ✓ 200 / ✗ 200" in lines
    assert any(line.startswith("     http_reqs....") and "20/s" in line for line in lines)
    assert "   ✗ errors: rate<0.01  (rate=2.00%)" in lines
    assert "   ✓ llm_ttft: p(95)<1000  (no data)" in lines
    assert any("http_req_duration: p(95)<300  failed in 2 of 2 windows" in line
               for line in lines)
    assert lines[-1] == "   aborted: errors: rate<0.01 failed (abortOnFail)"


@pytest.mark.parametrize(("oks", "aborted", "code"), [
    ([True, True], None, 0),
    ([], False, 0),
    ([True, False], None, 99),
    ([False], "abortOnFail: errors rate<0.01", 99),
    ([True], "interrupted", 105),
    ([True], True, 105),
])
def test_exit_codes(oks: list[bool], aborted: Any, code: int) -> None:
    threshold = parse_thresholds({"errors": ["rate<0.01"]})[0]
    results = [ThresholdResult(threshold, ok, None, no_data=False) for ok in oks]
    assert exit_code(results, aborted) == code


def test_exit_code_of_a_real_summary() -> None:
    summary, results = _summary()
    assert exit_code(results, summary["aborted"]) == 99
