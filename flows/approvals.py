"""The approval gate: pause the run until the plan's roles (CTO, CFO) have answered.

Answers come from the Prefect UI (a typed form) or `phasegate approve RUN_ID ...`; policy
decides (distinct people, rejection, unknown roles). Safe defaults: an empty answer is "not
approved". Every answer is recorded; an approval that times out is recorded as expired.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from phasegate.errors import ApprovalExpired, ApprovalRejected
from phasegate.policy.plan import Approvals
from phasegate.policy.transition import ApprovalAnswer, ApprovalDecision, approval_outcome

__all__ = ["ApprovalForm", "request_approvals"]


class ApprovalForm(RunInput):
    """What an approver fills in. Defaults are safe: not approved."""

    approved: bool = False
    name: str = ""
    role: str = ""
    comment: str = ""


def request_approvals(rules: Approvals, evidence_md: str, timeout_s: int, poll_s: int,
                      record: Any) -> ApprovalDecision:
    """Pause until every role has approved (returns the decision) or someone rejects (raises
    ApprovalRejected). `record(answer_or_None, decision)` stores each answer and the expiry.
    A timeout raises ApprovalExpired after recording it."""
    answers: list[ApprovalAnswer] = []
    decision = approval_outcome(answers, rules.roles, rules.distinct_people)
    get_run_logger().warning(
        "waiting for approval by %s: answer in the Prefect UI, or run "
        "`phasegate approve %s --as NAME --role ROLE [--reject]`",
        " and ".join(rules.roles), flow_run.get_id())
    for _ in range(3 * len(rules.roles)):  # bounded: invalid answers are asked again
        form = _pause(evidence_md, decision, timeout_s, poll_s, record)
        answer = ApprovalAnswer(approved=form.approved, name=form.name, role=form.role,
                                comment=form.comment, at=datetime.now(UTC))
        candidate = approval_outcome([*answers, answer], rules.roles, rules.distinct_people)
        record(answer, candidate)
        if candidate.status == "invalid":
            get_run_logger().warning("approval refused: %s", candidate.message)
            decision = candidate
            continue
        answers.append(answer)
        decision = candidate
        if decision.status == "rejected":
            raise ApprovalRejected(decision.message)
        if decision.status == "approved":
            return decision
    raise ApprovalRejected("too many invalid approval answers")


def _pause(evidence_md: str, decision: ApprovalDecision, timeout_s: int, poll_s: int,
           record: Any) -> ApprovalForm:
    note = "" if decision.status == "pending" and not decision.message else \
        f"\n\n**{decision.message}**"
    description = f"{evidence_md}\n\nStill needed: {', '.join(decision.missing_roles)}{note}"
    try:
        form = pause_flow_run(
            wait_for_input=ApprovalForm.with_initial_data(description=description,
                                                          approved=False),
            timeout=timeout_s, poll_interval=poll_s)
    except FlowPauseTimeout:
        record(None, decision)
        raise ApprovalExpired(f"approval expired after {timeout_s} s "
                               f"(still needed: {', '.join(decision.missing_roles)})") from None
    assert isinstance(form, ApprovalForm)
    return form
