"""policy.postmortem: the seed's template F filled from measured facts, and the incident."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from phasegate.policy.outcomes import RunOutcome
from phasegate.policy.postmortem import (
    PostmortemFacts,
    TimelineEntry,
    format_elapsed,
    percent_change,
    render_incident,
    render_postmortem,
)
from phasegate.policy.transition import ApprovalAnswer

T0 = datetime(2025, 11, 20, 9, 0, tzinfo=UTC)

FACTS = PostmortemFacts(
    from_phase=1, to_phase=2, started=T0,
    ended=T0 + timedelta(hours=1, minutes=12, seconds=30), owner="alice",
    triggered_conditions=["GPU utilization > 85% (peak time, 3 consecutive days)",
               "API p95 latency > 500ms (2 consecutive days)"],
    actions=[("GPU (gpu-1)", "1", "2"), ("vLLM tensor parallel", "1", "2"),
             ("Cloud Run min instances", "0", "1"), ("Redis maxmemory", "4gb", "16gb")],
    metrics={"API p95": (420.0, 180.0, "ms"), "GPU utilization": (88.0, 72.5, "%"),
             "Error rate": (0.0, 0.2, "%"), "LLM queue p95": (None, 1.2, "s"),
             "Throughput": (10.0, 25.0, "req/s")},
    cost_expected=180, cost_actual=175.5,
    approvals=[ApprovalAnswer(True, "alice", "CTO", "go", T0),
               ApprovalAnswer(True, "bob", "CFO", "", T0 + timedelta(minutes=3))],
    timeline=[TimelineEntry("guards", T0, T0 + timedelta(seconds=2), "ok"),
              TimelineEntry("watch", T0 + timedelta(minutes=10),
                            T0 + timedelta(hours=1, minutes=10), "successful", "120 | 0")],
    run_url="http://127.0.0.1:4200/runs/flow-run/abc",
)

TEMPLATE_HEADINGS = ["# Scaling Postmortem: Phase 1 → 2", "## Basic information",
                     "## Reason for scaling", "## What was done", "## Results",
                     "### Performance improvement", "### Cost change", "## Problems",
                     "## Lessons learned", "## Action items"]


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (45, "45 s"), (60, "1 min"), (12 * 60 + 59, "12 min"), (3600, "1 h"),
    (3600 + 12 * 60 + 30, "1 h 12 min"), (26 * 3600 + 5 * 60, "26 h 5 min"),
])
def test_format_elapsed(seconds: int, text: str) -> None:
    assert format_elapsed(T0, T0 + timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(("end", "text"), [(None, "n/a"), (T0 - timedelta(seconds=1), "n/a")])
def test_format_elapsed_unknown(end: datetime | None, text: str) -> None:
    assert format_elapsed(T0, end) == text


@pytest.mark.parametrize(("before", "after", "text"), [
    (420.0, 180.0, "-57.1%"), (50.0, 75.0, "+50.0%"), (3.0, 3.0, "0.0%"), (-2.0, -1.0, "+50.0%"),
    (0.0, 0.2, "n/a"), (None, 1.0, "n/a"), (1.0, None, "n/a"),
])
def test_percent_change(before: float | None, after: float | None, text: str) -> None:
    assert percent_change(before, after) == text


def test_postmortem_follows_template_f_in_order() -> None:
    text = render_postmortem(FACTS)
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert [h for h in headings if h in TEMPLATE_HEADINGS] == TEMPLATE_HEADINGS


@pytest.mark.parametrize("line", [
    "- Date: 2025-11-20",
    "- Owner: @alice",
    "- Phase: 1 → 2",
    "- Time taken: 1 h 12 min",
    "- Result: completed: now in phase 2",
    "- Flow run: http://127.0.0.1:4200/runs/flow-run/abc",
    "  - alice (CTO) approved at 2025-11-20 09:00:00: go",
    "  - bob (CFO) approved at 2025-11-20 09:03:00",
    "  - [x] GPU utilization > 85% (peak time, 3 consecutive days)",
    "1. GPU (gpu-1): 1 → 2",
    "4. Redis maxmemory: 4gb → 16gb",
    "| Stage | Start | End | Duration | Outcome |",
    "| guards | 2025-11-20 09:00:00 | 2025-11-20 09:00:02 | 2 s | ok |",
    "| watch | 2025-11-20 09:10:00 | 2025-11-20 10:10:00 | 1 h | successful: 120 \\| 0 |",
    "- API p95: 420ms → 180ms (-57.1%)",
    "- GPU utilization: 88% → 72.5% (-17.6%)",
    "- Error rate: 0% → 0.2% (n/a)",
    "- LLM queue p95: n/a → 1.2s (n/a)",
    "- Throughput: 10 req/s → 25 req/s (+150.0%)",
    "- Expected: $180/month",
    "- Actual: $175.50/month",
    "- Difference: -$4.50/month",
    "## Problems\n- None",
    "1. What went well: ___",
    "3. Things to watch out for in the next scaling: ___",
    "- [ ] Update the documentation",
    "- [ ] Fix the automation scripts",
])
def test_postmortem_content(line: str) -> None:
    assert line in render_postmortem(FACTS)


def test_postmortem_with_rollback_problems_and_missing_values() -> None:
    facts = dataclasses.replace(
        FACTS, ended=None, triggered_conditions=[], actions=[], metrics={}, cost_actual=None,
        approvals=[], timeline=[], problems=["vLLM took 4 min to load"],
        rollback_reason="gpu-util: 4 failed measurements (limit 3)", run_url=None,
        lessons=["approvals in 3 min"], action_items=["Re-baseline the GPU band"])
    text = render_postmortem(facts)
    for line in ["- Time taken: n/a",
                 "- Result: rolled back: gpu-util: 4 failed measurements (limit 3)",
                 "- Approvals: none recorded", "  - none recorded (started by hand)",
                 "Nothing was changed.", "No stages recorded.", "- no measurements recorded",
                 "- Actual: n/a/month", "- Difference: n/a/month",
                 "- Problem 1: vLLM took 4 min to load",
                 "- Rolled back: gpu-util: 4 failed measurements (limit 3)",
                 "- Resolution: the phase 1 state was restored and verified",
                 "1. What went well: approvals in 3 min", "2. What to improve: ___",
                 "- [ ] Re-baseline the GPU band"]:
        assert line in text, line
    assert "Flow run" not in text


def test_rejected_approval_is_shown() -> None:
    facts = dataclasses.replace(FACTS, approvals=[ApprovalAnswer(False, " carol ", "CFO",
                                                                 "no budget")])
    assert "  - carol (CFO) rejected: no budget" in render_postmortem(facts)


def test_incident_report() -> None:
    facts = dataclasses.replace(FACTS, rollback_reason="api-p95: 5 consecutive errors (limit 4)",
                                problems=["Prometheus stopped at 10:02"])
    text = render_incident(facts)
    assert text.startswith("# Incident report: Phase 1 → 2 rolled back\n")
    for line in ["- Transition: phase 1 → 2, rolled back to phase 1",
                 "- Reason: api-p95: 5 consecutive errors (limit 4)",
                 "- Time from start to restored: 1 h 12 min",
                 "1. GPU (gpu-1): 2 → 1", "4. Redis maxmemory: 16gb → 4gb",
                 "## Timeline", "- API p95: 420ms → 180ms (-57.1%)",
                 "- Prometheus stopped at 10:02",
                 "- [ ] Find and fix the cause: api-p95: 5 consecutive errors (limit 4)"]:
        assert line in text, line


def test_incident_without_changes() -> None:
    text = render_incident(dataclasses.replace(FACTS, actions=[], problems=[]))
    assert "Nothing had been changed." in text
    assert "- Reason: not recorded" in text
    assert "- None besides the reason above" in text


def test_facts_are_json_ready() -> None:
    data = json.loads(json.dumps(FACTS.to_dict()))
    assert data["metrics"]["API p95"] == [420.0, 180.0, "ms"]
    assert data["timeline"][0]["ended"] == "2025-11-20T09:00:02+00:00"
    assert data["approvals"][1]["name"] == "bob"
    assert data["outcome"] == "succeeded"


def test_unmeasurable_values_are_null_in_json_and_na_for_people() -> None:
    # Prometheus answers NaN for a rate over no samples (the LLM queue with no requests).
    facts = dataclasses.replace(FACTS, metrics={"LLM queue p95": (0.285, float("nan"), "s"),
                                                "API p95": (float("inf"), 180.0, "ms")},
                                cost_actual=float("nan"))
    data = json.loads(json.dumps(facts.to_dict(), allow_nan=False))  # PostgreSQL's jsonb too
    assert data["metrics"] == {"LLM queue p95": [0.285, None, "s"],
                               "API p95": [None, 180.0, "ms"]}
    assert data["cost_actual"] is None
    text = render_postmortem(facts)
    assert "- LLM queue p95: 0.28s → n/a (n/a)" in text
    assert "- API p95: n/a → 180ms (n/a)" in text


@pytest.mark.parametrize(("outcome", "line"), [
    (RunOutcome.ROLLED_BACK, "- Transition: phase 1 → 2, rolled back to phase 1"),
    (RunOutcome.ROLLBACK_INCOMPLETE,
     "- Transition: phase 1 → 2, rollback INCOMPLETE: restore the rest by hand (see Problems)"),
])
def test_the_incident_says_whether_the_rollback_completed(outcome: RunOutcome,
                                                           line: str) -> None:
    facts = dataclasses.replace(FACTS, rollback_reason="load test failed", outcome=outcome)
    assert line in render_incident(facts).splitlines()
    assert facts.to_dict()["outcome"] == outcome.value


def test_timeline_and_approvals_from_mappings() -> None:
    """The flow keeps stages as dicts with start/end, the state store approvals as dicts."""
    facts = dataclasses.replace(
        FACTS,
        timeline=[{"stage": "backup", "start": T0, "end": T0 + timedelta(minutes=2),
                   "outcome": "ok"},
                  {"stage": "watch", "started": T0.isoformat(), "ended": None,
                   "outcome": "failed: SafetyStop"}],
        approvals=[{"approved": True, "name": "alice", "role": "CTO", "comment": "",
                    "at": T0.isoformat()}])
    text = render_postmortem(facts)
    assert "| backup | 2025-11-20 09:00:00 | 2025-11-20 09:02:00 | 2 min | ok |" in text
    assert "| watch | 2025-11-20 09:00:00 | n/a | n/a | failed: SafetyStop |" in text
    assert "  - alice (CTO) approved at 2025-11-20 09:00:00" in text
    json.dumps(facts.to_dict())
