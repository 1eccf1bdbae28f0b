"""`phasegate plan check [FILE]`: validate a phase plan and print what it says.

A valid plan prints a summary (phases, transitions, load tests, watch) and exits 0; an invalid
one prints every problem as `field: reason`, one per line, and exits 1 - also for a missing
file or broken YAML, never with a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from phasegate.errors import PlanError
from phasegate.policy.durations import format_duration
from phasegate.policy.plan import DEFAULT_PLAN_PATH, Bound, Phase, Plan, Transition, load_plan

__all__ = ["check_command", "register", "render_summary"]


def register(subparsers: Any) -> None:
    """Add `plan check [FILE]` to the `phasegate` command line."""
    plan = subparsers.add_parser("plan", help="inspect the phase plan")
    plan_sub = plan.add_subparsers(dest="plan_command", required=True)
    check = plan_sub.add_parser("check", help="validate a plan file and summarize it")
    check.add_argument("file", nargs="?", default=None,
                       help=f"plan file (default: {DEFAULT_PLAN_PATH})")
    check.set_defaults(handler=check_command)


def check_command(args: argparse.Namespace) -> int:
    """Validate `args.file` (default plan if None); print a summary or every problem."""
    source = args.file or str(DEFAULT_PLAN_PATH)
    try:
        plan = load_plan(args.file)
    except PlanError as exc:
        for field, reason in exc.problems:
            print(f"{field}: {reason}")
        print(f"{len(exc.problems)} problem(s) in {source}")
        return 1
    print(render_summary(plan, source))
    return 0


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _layout(phase: Phase) -> str:
    v = phase.vllm
    pp = f" x PP{v.pipeline_parallel_size}" if v.pipeline_parallel_size > 1 else ""
    return f"{v.replicas} x TP{v.tensor_parallel_size}{pp}"


def _phase_row(number: int, phase: Phase) -> list[object]:
    run, redis = phase.cloud_run, phase.redis
    hosts = ", ".join(f"{h.name}:{h.gpus}" for h in phase.gpu_hosts)
    cluster = " (cluster)" if redis.cluster else ""
    return [
        number, phase.name, f"{phase.users:,}", phase.total_gpus, hosts, _layout(phase),
        f"{run.min_instances}-{run.max_instances} x {run.memory}/{run.cpu} CPU",
        f"{redis.maxmemory} {redis.maxmemory_policy}{cluster}",
        phase.db_read_replicas, f"{phase.monthly_cost_usd:,.0f}",
    ]


def _transition_row(transition: Transition) -> list[object]:
    groups = ", ".join(
        f"{g} {sum(c.group == g for c in transition.conditions)}" for g in transition.groups
    )
    quorum = transition.quorum
    counted = len(transition.conditions) if quorum.counts == "bullets" else len(transition.groups)
    watch = transition.watch
    items = sum(len(stage.items) for stage in transition.checklist)
    return [
        f"{transition.from_phase} -> {transition.to_phase}", len(transition.conditions), groups,
        f"{quorum.min_met} of {counted} {quorum.counts}",
        f"{format_duration(watch.duration)} every {format_duration(watch.interval)}",
        f"{len(transition.checklist)} stages, {items} items",
    ]


def _load_test_row(number: int, phase: Phase) -> list[object]:
    scenario = phase.load_test.scenario
    thresholds = "; ".join(
        f"{key} {', '.join(exprs)}" for key, exprs in phase.load_test.thresholds.items()
    )
    return [number, scenario.executor, scenario.max_vus,
            format_duration(scenario.total_duration), thresholds]


def _bound(bound: Bound | None) -> str:
    if bound is None:
        return "outside success"
    parts = [f"{op} {value:g}" for op, value in
             ((">", bound.gt), (">=", bound.ge), ("<", bound.lt), ("<=", bound.le))
             if value is not None]
    return " and ".join(parts)


def _watch_rows(plan: Plan) -> list[list[object]]:
    rows: list[list[object]] = []
    for t in plan.transitions:
        w = t.watch
        limits = (f"fail>{w.failure_limit} err>{w.consecutive_error_limit} "
                  f"inconcl>{w.inconclusive_limit}")
        for m in w.metrics:
            rows.append([f"{t.from_phase} -> {t.to_phase}", m.name, m.unit,
                         _bound(m.success), _bound(m.failure), limits])
    return rows


def render_summary(plan: Plan, source: str) -> str:
    """The human-readable summary `plan check` prints for a valid plan."""
    peak, approvals = plan.peak_window, plan.approvals
    header = [
        f"{source}: valid (format version {plan.version}, revision {plan.plan_revision})",
        f"peak window {peak.peak_start:%H:%M}-{peak.peak_end:%H:%M} {peak.timezone}; "
        f"approvals: {' + '.join(approvals.roles)}"
        f"{' (distinct people)' if approvals.distinct_people else ''}, "
        f"expire after {format_duration(approvals.timeout)}",
    ]
    phases = _table(
        ["phase", "name", "users", "GPUs", "hosts", "vLLM", "Cloud Run", "Redis",
         "DB replicas", "$/month"],
        [_phase_row(n, p) for n, p in sorted(plan.phases.items())])
    transitions = _table(
        ["step", "conditions", "groups", "quorum", "watch", "checklist"],
        [_transition_row(t) for t in plan.transitions])
    load_tests = _table(
        ["phase", "executor", "max VUs", "duration", "thresholds"],
        [_load_test_row(n, p) for n, p in sorted(plan.phases.items())])
    watch = _table(["step", "metric", "unit", "success", "failure", "limits"],
                   _watch_rows(plan))
    sections = [("Phases", phases), ("Transitions", transitions),
                ("Load tests (k6)", load_tests), ("Watch", watch)]
    return "\n".join(header) + "".join(f"\n\n{title}\n{body}" for title, body in sections)
