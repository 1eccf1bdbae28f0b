"""The one retry predicate tasks give Prefect: retry TransientError, nothing else."""

from __future__ import annotations

from typing import Any

from phasegate.errors import is_retryable

__all__ = ["only_transient"]


def only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks: True only when the failure is a TransientError
    (see phasegate.errors); reads are safe to repeat, changes check before they act."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the type decides
        return is_retryable(exc)
    return False
