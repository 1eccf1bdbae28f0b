"""The postmortem and the incident report of a phase transition, as markdown (pure).

`render_postmortem` fills the seed's template F (section headings kept: Basic information,
Reason for scaling, What was done, Results, Problems, Lessons learned, Action items) from what
the flow measured, never from guesses: a missing value prints "n/a". `render_incident` is the
report after an automatic rollback (the seed's rollback script ends with "An incident report
needs to be written").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from phasegate.policy.outcomes import RunOutcome
from phasegate.policy.transition import ApprovalAnswer

__all__ = [
    "DEFAULT_ACTION_ITEMS",
    "PostmortemFacts",
    "TimelineEntry",
    "format_elapsed",
    "percent_change",
    "render_incident",
    "render_postmortem",
]

# The template's own action items; the facts may add more.
DEFAULT_ACTION_ITEMS = ("Update the documentation", "Improve monitoring",
                        "Fix the automation scripts")
_LESSONS = ("What went well", "What to improve", "Things to watch out for in the next scaling")
_BLANK = "___"


def _maybe_moment(value: object) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _moment(value: object) -> datetime:
    moment = _maybe_moment(value)
    if moment is None:
        raise ValueError("a timeline entry needs its start time")
    return moment


@dataclass(frozen=True)
class TimelineEntry:
    """One stage of the run: when it started and ended, and how it ended."""

    stage: str
    started: datetime
    ended: datetime | None
    outcome: str
    detail: str = ""

    @classmethod
    def coerce(cls, item: TimelineEntry | Mapping[str, Any]) -> TimelineEntry:
        """`item` itself, or one built from a mapping with stage, started (or start), ended
        (or end), outcome and optionally detail."""
        if isinstance(item, TimelineEntry):
            return item
        return cls(str(item["stage"]), _moment(item.get("started", item.get("start"))),
                   _maybe_moment(item.get("ended", item.get("end"))),
                   str(item.get("outcome", "")), str(item.get("detail") or ""))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"stage": self.stage, "started": self.started.isoformat(),
                "ended": self.ended.isoformat() if self.ended else None,
                "outcome": self.outcome, "detail": self.detail}


@dataclass(frozen=True)
class PostmortemFacts:
    """Everything the flow measured about one transition.

    actions: (what, before, after), e.g. ("vLLM tensor parallel", "1", "2").
    metrics: name -> (before, after, unit), e.g. "API p95" -> (420.0, 180.0, "ms").
    cost_expected / cost_actual: USD per month.
    approvals and timeline also take mappings (`ApprovalAnswer.to_dict()` /
    `TimelineEntry.coerce` forms), as the flow and the state store keep them.
    lessons: (what went well, what to improve, watch out next time); blanks when not given.
    outcome: how the run ended (default: rolled back when there is a rollback reason, else
    succeeded).
    """

    from_phase: int
    to_phase: int
    started: datetime
    ended: datetime | None
    owner: str
    triggered_conditions: Sequence[str] = ()
    actions: Sequence[tuple[str, str, str]] = ()
    metrics: Mapping[str, tuple[float | None, float | None, str]] = field(default_factory=dict)
    cost_expected: float | None = None
    cost_actual: float | None = None
    approvals: Sequence[ApprovalAnswer | Mapping[str, Any]] = ()
    timeline: Sequence[TimelineEntry | Mapping[str, Any]] = ()
    problems: Sequence[str] = ()
    rollback_reason: str | None = None
    run_url: str | None = None
    lessons: Sequence[str] = ()
    action_items: Sequence[str] = ()
    outcome: RunOutcome | None = None

    @property
    def approval_answers(self) -> list[ApprovalAnswer]:
        """The approvals as ApprovalAnswer values."""
        return [a if isinstance(a, ApprovalAnswer) else ApprovalAnswer.from_dict(a)
                for a in self.approvals]

    @property
    def timeline_entries(self) -> list[TimelineEntry]:
        """The timeline as TimelineEntry values."""
        return [TimelineEntry.coerce(t) for t in self.timeline]

    @property
    def rolled_back(self) -> bool:
        """Whether the transition ended in a rollback (complete or not)."""
        return self.rollback_reason is not None

    @property
    def result(self) -> RunOutcome:
        """How the run ended."""
        if self.outcome is not None:
            return self.outcome
        return RunOutcome.ROLLED_BACK if self.rolled_back else RunOutcome.SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored with the rendered markdown)."""
        return {
            "from_phase": self.from_phase, "to_phase": self.to_phase,
            "started": self.started.isoformat(),
            "ended": self.ended.isoformat() if self.ended else None, "owner": self.owner,
            "triggered_conditions": list(self.triggered_conditions),
            "actions": [list(a) for a in self.actions],
            "metrics": {k: [_finite(before), _finite(after), unit]
                        for k, (before, after, unit) in self.metrics.items()},
            "cost_expected": _finite(self.cost_expected),
            "cost_actual": _finite(self.cost_actual),
            "approvals": [a.to_dict() for a in self.approval_answers],
            "timeline": [t.to_dict() for t in self.timeline_entries],
            "problems": list(self.problems),
            "rollback_reason": self.rollback_reason, "run_url": self.run_url,
            "lessons": list(self.lessons), "action_items": list(self.action_items),
            "outcome": self.result.value,
        }


# ---------------------------------------------------------------- formatting

def _finite(value: float | None) -> float | None:
    """The value, or None when missing, NaN or infinite (JSON has neither; n/a to people)."""
    return value if value is not None and math.isfinite(value) else None


def format_elapsed(start: datetime, end: datetime | None) -> str:
    """"1 h 12 min", "12 min", "2 h", "45 s"; "n/a" without an end or when end < start."""
    if end is None or end < start:
        return "n/a"
    seconds = int((end - start) / timedelta(seconds=1))
    hours, minutes = seconds // 3600, seconds % 3600 // 60
    if not hours and not minutes:
        return f"{seconds} s"
    return " ".join(p for p in (f"{hours} h" if hours else "",
                                f"{minutes} min" if minutes else "") if p)


def percent_change(before: float | None, after: float | None) -> str:
    """"+12.5%" / "-57.1%" / "0.0%"; "n/a" when either is missing (or NaN) or before is 0."""
    before, after = _finite(before), _finite(after)
    if before is None or after is None or before == 0:
        return "n/a"
    return f"{100.0 * (after - before) / abs(before):+.1f}%".replace("+0.0%", "0.0%")


def _number(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _amount(value: float | None, unit: str) -> str:
    """"420ms", "72.5%", "3 req/s" (the template writes ms and % without a space)."""
    value = _finite(value)
    if value is None:
        return "n/a"
    return f"{_number(value)}{unit}" if unit in ("ms", "s", "%") else f"{_number(value)} {unit}"


def _usd(value: float | None) -> str:
    """"$180", "$175.50", "-$4.50", "n/a"."""
    value = _finite(value)
    if value is None:
        return "n/a"
    sign, value = ("-" if value < 0 else ""), abs(value)
    return sign + (f"${value:,.0f}" if value == int(value) else f"${value:,.2f}")


def _cell(text: str) -> str:
    """A markdown table cell: pipes escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "n/a"


# ---------------------------------------------------------------- sections

def _basic(facts: PostmortemFacts, result: str) -> list[str]:
    lines = ["## Basic information",
             f"- Date: {facts.started.date().isoformat()}",
             f"- Owner: @{facts.owner.lstrip('@')}",
             f"- Phase: {facts.from_phase} → {facts.to_phase}",
             f"- Time taken: {format_elapsed(facts.started, facts.ended)}",
             f"- Result: {result}"]
    if facts.run_url:
        lines.append(f"- Flow run: {facts.run_url}")
    lines.append("- Approvals:" if facts.approvals else "- Approvals: none recorded")
    for answer in facts.approval_answers:
        verdict = "approved" if answer.approved else "rejected"
        comment = f": {answer.comment.strip()}" if answer.comment.strip() else ""
        at = f" at {_when(answer.at)}" if answer.at else ""
        lines.append(f"  - {answer.name.strip()} ({answer.role}) {verdict}{at}{comment}")
    return lines


def _reason(facts: PostmortemFacts) -> list[str]:
    lines = ["## Reason for scaling", "- Conditions that triggered it:"]
    lines += [f"  - [x] {text}" for text in facts.triggered_conditions]
    if not facts.triggered_conditions:
        lines.append("  - none recorded (started by hand)")
    return lines


def _done(facts: PostmortemFacts) -> list[str]:
    lines = ["## What was done"]
    lines += [f"{i}. {what}: {before} → {after}"
              for i, (what, before, after) in enumerate(facts.actions, start=1)]
    if not facts.actions:
        lines.append("Nothing was changed.")
    return [*lines, "", *_timeline(facts.timeline_entries)]


def _timeline(timeline: Sequence[TimelineEntry], heading: str = "### Timeline") -> list[str]:
    if not timeline:
        return [heading, "No stages recorded."]
    lines = [heading, "| Stage | Start | End | Duration | Outcome |",
             "|---|---|---|---|---|"]
    for entry in timeline:
        outcome = entry.outcome + (f": {entry.detail}" if entry.detail else "")
        lines.append(f"| {_cell(entry.stage)} | {_when(entry.started)} | {_when(entry.ended)} "
                     f"| {format_elapsed(entry.started, entry.ended)} | {_cell(outcome)} |")
    return lines


def _performance(metrics: Mapping[str, tuple[float | None, float | None, str]]) -> list[str]:
    lines = ["### Performance improvement"]
    lines += [f"- {name}: {_amount(before, unit)} → {_amount(after, unit)} "
              f"({percent_change(before, after)})"
              for name, (before, after, unit) in metrics.items()]
    return lines if metrics else [*lines, "- no measurements recorded"]


def _cost(expected: float | None, actual: float | None) -> list[str]:
    expected, actual = _finite(expected), _finite(actual)
    difference = None if expected is None or actual is None else actual - expected
    return ["### Cost change", f"- Expected: {_usd(expected)}/month",
            f"- Actual: {_usd(actual)}/month", f"- Difference: {_usd(difference)}/month"]


def _problems(facts: PostmortemFacts) -> list[str]:
    lines = ["## Problems"]
    lines += [f"- Problem {i}: {text}" for i, text in enumerate(facts.problems, start=1)]
    if facts.rollback_reason is not None:
        lines += [f"- Rolled back: {facts.rollback_reason}",
                  f"- Resolution: the phase {facts.from_phase} state was restored and verified"]
    return lines if len(lines) > 1 else [*lines, "- None"]


def _lessons(lessons: Sequence[str]) -> list[str]:
    given = list(lessons) + [_BLANK] * (len(_LESSONS) - len(lessons))
    return ["## Lessons learned",
            *[f"{i}. {label}: {text}" for i, (label, text) in
              enumerate(zip(_LESSONS, given, strict=False), start=1)]]


def _actions(items: Sequence[str]) -> list[str]:
    return ["## Action items", *[f"- [ ] {item}" for item in (*DEFAULT_ACTION_ITEMS, *items)]]


def _join(*sections: list[str]) -> str:
    return "\n\n".join("\n".join(s) for s in sections) + "\n"


# ---------------------------------------------------------------- documents

def render_postmortem(facts: PostmortemFacts) -> str:
    """The seed's postmortem template F, filled from `facts` (markdown)."""
    result = (f"rolled back: {facts.rollback_reason}" if facts.rolled_back
              else f"completed: now in phase {facts.to_phase}")
    return _join(
        [f"# Scaling Postmortem: Phase {facts.from_phase} → {facts.to_phase}"],
        _basic(facts, result), _reason(facts), _done(facts),
        ["## Results", "", *_performance(facts.metrics), "",
         *_cost(facts.cost_expected, facts.cost_actual)],
        _problems(facts), _lessons(facts.lessons), _actions(facts.action_items),
    )


def render_incident(facts: PostmortemFacts) -> str:
    """The incident report of a transition that failed and was rolled back (markdown)."""
    reason = facts.rollback_reason or "not recorded"
    summary = [
        "## Summary",
        f"- Date: {facts.started.date().isoformat()}",
        f"- Owner: @{facts.owner.lstrip('@')}",
        f"- Transition: phase {facts.from_phase} → {facts.to_phase}, " + (
            f"rolled back to phase {facts.from_phase}"
            if facts.result is not RunOutcome.ROLLBACK_INCOMPLETE else
            "rollback INCOMPLETE: restore the rest by hand (see Problems)"),
        f"- Reason: {reason}",
        f"- Time from start to restored: {format_elapsed(facts.started, facts.ended)}",
    ] + ([f"- Flow run: {facts.run_url}"] if facts.run_url else [])
    restored = ["## What was restored"]
    restored += [f"{i}. {what}: {after} → {before}"
                 for i, (what, before, after) in enumerate(facts.actions, start=1)]
    if not facts.actions:
        restored.append("Nothing had been changed.")
    problems = ["## Problems", *(f"- {text}" for text in facts.problems)]
    if not facts.problems:
        problems.append("- None besides the reason above")
    return _join(
        [f"# Incident report: Phase {facts.from_phase} → {facts.to_phase} rolled back"],
        summary, restored, _timeline(facts.timeline_entries, "## Timeline"),
        ["## Metrics", *_performance(facts.metrics)[1:]], problems,
        _actions([f"Find and fix the cause: {reason}", *facts.action_items]),
    )
