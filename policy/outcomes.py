"""How a phase-transition run ended: one spelling for the flow's result, the snapshots, the
audit table and the postmortem (pure).

A run that never ends (its process died) has no outcome: its snapshot stays open and the next
run from the same phase resumes from it (`RESUMED` closes it then).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RunOutcome"]


class RunOutcome(StrEnum):
    """The end of one transition run (the value is what the database and JSON hold)."""

    SUCCEEDED = "succeeded"              # the new phase is in place, watched and recorded
    ROLLED_BACK = "rolled-back"          # a failure after a change; every restore verified
    ROLLBACK_INCOMPLETE = "rollback-incomplete"  # a restore failed: people must finish it
    CANCELLED = "cancelled"              # cancelled (UI, Ctrl-C, SIGTERM); changes rolled back
    STOPPED = "stopped"                  # failed before any change (backup, GPUs): untouched
    REJECTED = "rejected"                # an approver said no: nothing changed
    EXPIRED = "expired"                  # nobody answered the approval in time
    DRY_RUN = "dry-run"                  # approvals only, by request
    RESUMED = "resumed"                  # (snapshot) a rerun took it over and went on
    RESTORED = "restored"                # (snapshot) the rollback flow restored it

    @property
    def label(self) -> str:
        """For people: "rolled back", "rollback incomplete", "dry run"."""
        return self.value.replace("-", " ")
