"""Every Prefect task of phasegate has a deadline (issue 10): its own `timeout_seconds`, or a
named reason why its bound lives elsewhere."""

from __future__ import annotations

import importlib
import pkgutil

from prefect import Task

import phasegate.tasks

# Bounded by their own arguments, where a Prefect timeout would not work or would lie.
BOUNDED_ELSEWHERE = {
    # a SIGALRM in the main thread would be swallowed by the event loop; scenario durations
    # and the transition's time limit bound it
    "phasegate.tasks.loadtest.run_load_test",
    # polls until its timeout_s argument (the run's vllm_ready_timeout), then raises
    "phasegate.tasks.gpu_hosts.wait_vllm_ready",
}


def _tasks() -> dict[str, Task[..., object]]:
    found = {}
    for info in pkgutil.iter_modules(phasegate.tasks.__path__, "phasegate.tasks."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, Task) and value.fn.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    return found


def test_every_task_has_a_timeout_or_a_named_bound() -> None:
    tasks = _tasks()
    assert len(tasks) >= 20  # the scan sees the task modules
    missing = sorted(n for n, t in tasks.items()
                     if t.timeout_seconds is None and n not in BOUNDED_ELSEWHERE)
    assert missing == []
    assert set(tasks) >= BOUNDED_ELSEWHERE  # no stale exception


def test_retried_tasks_get_the_default_and_long_ones_more() -> None:
    from phasegate.tasks.retrying import DEFAULT_TIMEOUT_S

    tasks = _tasks()
    assert tasks["phasegate.tasks.redis_cache.apply_memory_config"].timeout_seconds == \
        DEFAULT_TIMEOUT_S
    assert tasks["phasegate.tasks.backup.backup_database"].timeout_seconds == 7200
