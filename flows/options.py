"""The phase-transition run's options: one typed parameter with safe defaults.

A manager starting a run in the Prefect UI sees the target phase (empty: the next one), the
plan, and this one section; its defaults are production's (the plan's own durations, a real
load test, a real approval timeout). The lab, the demo and the tests override the durations
to compress time.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from phasegate.policy.durations import parse_duration

__all__ = ["TransitionOptions"]


class TransitionOptions(BaseModel):
    """Where the systems are, and the knobs of a run (time compression, money inputs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Options")

    dry_run: bool = Field(default=False, description="Ask for approvals, then change nothing.")
    prefix: str = Field(default="lab", description="Name prefix of the Blocks to use "
                        "(PREFIX-postgres, PREFIX-gpu-1, ...).")
    notifications: str = Field(default="custom-webhook/lab-slack",
                               description="The notification Block (type/name).")
    cash_usd: float | None = Field(default=None, ge=0, description="Cash on hand, for the "
                                   "approval form's runway check (seed D-1).")
    monthly_burn_usd: float | None = Field(default=None, description="Monthly net burn, for "
                                           "the runway check.")
    watch_duration: str | None = Field(default=None, description="Metric watch length "
                                       "(default: the plan's, 2h).")
    watch_interval: str | None = Field(default=None, description="Between two measurements "
                                       "(default: the plan's).")
    watch_min_window: str | None = Field(default=None, description="Shortest range window of "
                                         "a watch query (default: the plan's, 1m).")
    load_test_scale: float = Field(default=1.0, gt=0, le=1, description="Load-test time "
                                   "scale (1: the plan's durations).")
    approval_timeout: str | None = Field(default=None, description="How long approvals may "
                                         "take (default: the plan's).")
    approval_poll: str = Field(default="2s", description="How often the pause checks for an "
                               "answer.")
    vllm_ready_timeout: str = Field(default="10m", description="How long a new vLLM server "
                                    "may take to load its model.")
    time_limit: str | None = Field(default=None, description="How long the run may take "
                                   "after its approvals (default: the plan's, 4h).")
    reports_dir: str | None = Field(default=None, description="Reports and backups here "
                                    "(default: the PREFIX-reports Block's directories).")
    prometheus_block: str | None = Field(default=None, description="Another Prometheus Block "
                                         "(default: PREFIX-prometheus).")

    @field_validator("watch_duration", "watch_interval", "watch_min_window",
                     "approval_timeout", "approval_poll", "vllm_ready_timeout", "time_limit")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)  # raises ValueError with the plan's wording
        return value

    def duration(self, name: str) -> timedelta | None:
        """One of the duration options as a timedelta (None when not set)."""
        value = getattr(self, name)
        return None if value is None else parse_duration(value)
