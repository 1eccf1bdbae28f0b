"""Retries: only a TransientError is retried, and one decorator says so.

`@retried` is Prefect's `@task` with two retries (after 1 s and 3 s) that fire only for a
`TransientError` (phasegate.errors): reads are safe to repeat, and every change checks first
whether it already happened. `transient_retries(n, delays)` is the same with other numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task

from phasegate.errors import is_retryable

__all__ = ["DEFAULT_TIMEOUT_S", "only_transient", "retried", "transient_retries"]

# Every task has a deadline. The tasks bound their own waits (SSH commands, rollouts, health
# polls: their timeout_s arguments); this is the backstop for a call that hangs where the
# task's own deadline cannot see it. 10 minutes: above every default wait of a retried task
# (a Cloud Run rollout waits 300 s), far below a transition's time limit.
DEFAULT_TIMEOUT_S = 600.0

P = ParamSpec("P")
R = TypeVar("R")


def only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks: True only when the failure is a TransientError
    (see phasegate.errors); reads are safe to repeat, changes check before they act."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the type decides
        return is_retryable(exc)
    return False


def transient_retries(retries: int = 2, delays_s: Sequence[float] = (1.0, 3.0),
                      timeout_s: float = DEFAULT_TIMEOUT_S
                      ) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A `@task` decorator retrying TransientError only, `retries` times after `delays_s`;
    each attempt ends after `timeout_s` (Prefect's TimeoutError: a failure, not retried)."""
    return task(retries=retries, retry_delay_seconds=list(delays_s),
                retry_condition_fn=only_transient, timeout_seconds=timeout_s)


retried = transient_retries()
