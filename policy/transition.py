"""Phase transition decisions (pure): the step guard, what changes, approvals, the money check.

Decide here, act in the flow (docs/transition.md). Everything takes the plan and plain values
and returns frozen, JSON-ready dataclasses; no clock, no I/O.

- `check_step` refuses anything but one step up, or one planned step down.
- `plan_changes` compares two phases: GPUs per host, the vLLM containers (placement by
  `vllm_containers`, as `policy.containers.Container`), Cloud Run fields, Redis memory,
  monthly cost.
  `ChangeSet.describe()` gives the human lines of the approval form.
- `approval_outcome` tallies the approval answers: every plan role must approve, by distinct
  people; one rejection ends it; answers that break a rule are refused with a reason.
- `financial_check` is the seed's D-1 check: revenue >= 3 x next month's cost, runway >= 3
  months; unknown inputs give unknown, never ok.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from phasegate.errors import SafetyStop
from phasegate.policy.containers import DEFAULT_HOST_PORT, Container, Gpus, replica_name
from phasegate.policy.plan import CloudRun, Phase, Plan, Redis, Vllm

__all__ = [
    "ROLLBACK_ORDER",
    "ApprovalAnswer",
    "ApprovalDecision",
    "ApprovalStatus",
    "ChangeSet",
    "Direction",
    "FinancialCheck",
    "FinancialItem",
    "HostGpus",
    "approval_outcome",
    "check_step",
    "next_phase",
    "cloud_run_settings",
    "financial_check",
    "format_redis_bytes",
    "plan_changes",
    "redis_bytes",
    "redis_settings",
    "vllm_args",
    "vllm_containers",
]

Direction = Literal["up", "down"]
ApprovalStatus = Literal["approved", "rejected", "pending", "invalid"]

# The order a failed transition restores its changes in (the seed's rollback script: vLLM
# first, so the known-good servers answer again; then Cloud Run; then Redis), whatever order
# they were applied in.
ROLLBACK_ORDER = ("vLLM", "Cloud Run", "Redis")


# ---------------------------------------------------------------- the step guard

def check_step(current: int, target: int, phases: Iterable[int]) -> Direction:
    """The direction of `current -> target`: "up" for current+1, "down" for current-1.

    Raises SafetyStop (nothing changed yet) for an unknown phase, target == current, or a
    jump of more than one phase.
    """
    known = sorted(set(phases))
    listed = ", ".join(map(str, known)) or "none"
    for role, number in (("current", current), ("target", target)):
        if number not in known:
            raise SafetyStop(f"{role} phase {number} is not in the plan (phases: {listed})")
    if target == current:
        raise SafetyStop(f"already in phase {current}: nothing to do")
    if target == current + 1:
        return "up"
    if target == current - 1:
        return "down"
    allowed = [f"{current} -> {n}" for n in (current + 1, current - 1) if n in known]
    raise SafetyStop(f"phase {current} -> {target} skips {abs(target - current) - 1} phase(s): "
                     f"one step at a time ({' or '.join(allowed)})")


def next_phase(current: int, phases: Iterable[int]) -> int:
    """The phase after `current` (a run started without a target goes there). Raises
    SafetyStop in the plan's last phase: a step down is only ever asked for by name."""
    known = sorted(set(phases))
    if current not in known:
        raise SafetyStop(f"current phase {current} is not in the plan "
                         f"(phases: {', '.join(map(str, known)) or 'none'})")
    if current + 1 not in known:
        raise SafetyStop(f"phase {current} is the plan's last: no next phase (a step down "
                         f"needs its target, e.g. {current - 1})")
    return current + 1


# ---------------------------------------------------------------- Redis sizes

# redis.conf: "1k => 1000 bytes, 1kb => 1024 bytes, 1m => 1000000 bytes, 1mb => 1024*1024
# bytes, 1g => 1000000000 bytes, 1gb => 1024*1024*1024 bytes"; units are case insensitive.
_REDIS_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
                "g": 1000**3, "gb": 1024**3}
_REDIS_SIZE = re.compile(r"(\d+)(b|k|kb|m|mb|g|gb)?", re.I)


def redis_bytes(text: str) -> int:
    """Bytes of a Redis size ("16gb" -> 17179869184, "1k" -> 1000). Raises ValueError."""
    match = _REDIS_SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a Redis size: {text!r} (e.g. '16gb', '512mb', '1000000')")
    return int(match[1]) * _REDIS_UNITS[(match[2] or "").lower()]


def format_redis_bytes(size: int) -> str:
    """The shortest binary Redis unit that is exact: 17179869184 -> "16gb", 1000 -> "1000"."""
    for unit in ("gb", "mb", "kb"):
        if size and size % _REDIS_UNITS[unit] == 0:
            return f"{size // _REDIS_UNITS[unit]}{unit}"
    return str(size)


# ---------------------------------------------------------------- containers

def vllm_args(vllm: Vllm) -> list[str]:
    """vLLM's OpenAI server CLI arguments for the plan's vLLM settings."""
    return ["--model", vllm.model_path, "--served-model-name", vllm.served_model_name,
            "--tensor-parallel-size", str(vllm.tensor_parallel_size),
            "--pipeline-parallel-size", str(vllm.pipeline_parallel_size),
            "--gpu-memory-utilization", f"{vllm.gpu_memory_utilization:g}",
            "--max-model-len", str(vllm.max_model_len)]


def vllm_containers(plan: Plan, phase: int,
                    base_port: Mapping[str, int] | None = None) -> list[Container]:
    """The phase's vLLM containers: `replicas` engines of TP x PP GPUs each.

    Hosts are filled in plan order, each replica on one host with contiguous device indices
    (the plan validated that they fit). The k-th replica on a host (k = 0, 1, ...) is named
    `vllm-server` then `vllm-server-<k>` and published on base_port[host] + k (hosts not in
    `base_port` use DEFAULT_HOST_PORT, the seed's 8000).
    """
    spec = plan.phase(phase)
    size, args = spec.vllm.gpus_per_replica, tuple(vllm_args(spec.vllm))
    ports = base_port or {}
    out: list[Container] = []
    for host in spec.gpu_hosts:
        for k in range(min(host.gpus // size, spec.vllm.replicas - len(out))):
            out.append(Container(
                host.name, replica_name(k), spec.vllm.image, args,
                Gpus.of(*range(k * size, (k + 1) * size)),
                ports.get(host.name, DEFAULT_HOST_PORT) + k))
    return out


# ---------------------------------------------------------------- Cloud Run and Redis

def cloud_run_settings(cloud_run: CloudRun) -> dict[str, Any]:
    """The Cloud Run fields a transition sets (keys as in docs/transition.md)."""
    return {"min_instances": cloud_run.min_instances, "max_instances": cloud_run.max_instances,
            "max_concurrency": cloud_run.max_concurrency,
            "timeout_s": int(cloud_run.timeout.total_seconds()),
            "cpu": cloud_run.cpu, "memory": cloud_run.memory}


def redis_settings(redis: Redis) -> dict[str, Any]:
    """The Redis settings a transition sets: maxmemory in bytes and the eviction policy."""
    return {"maxmemory": redis_bytes(redis.maxmemory), "maxmemory_policy": redis.maxmemory_policy}


# ---------------------------------------------------------------- the change set

@dataclass(frozen=True)
class HostGpus:
    """GPUs a host must have before and after the transition (0: not used)."""

    host: str
    before: int
    after: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"host": self.host, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class ChangeSet:
    """Everything a transition changes, before and after (the flow snapshots the live state;
    this is what the plan says)."""

    from_phase: int
    to_phase: int
    direction: Direction
    gpu_hosts: tuple[HostGpus, ...]
    containers_before: tuple[Container, ...]
    containers_after: tuple[Container, ...]
    cloud_run_before: dict[str, Any]
    cloud_run_after: dict[str, Any]
    redis_before: dict[str, Any]
    redis_after: dict[str, Any]
    cost_before_usd: float
    cost_after_usd: float
    manual: tuple[str, ...] = ()

    def vllm_summary(self, before: bool) -> str:
        """One line for the before (or after) layout: "gpu-1: 1 x TP2 (GPUs 0,1)"."""
        specs = self.containers_before if before else self.containers_after
        hosts = dict.fromkeys(c.host for c in specs)
        return "; ".join(f"{h}: {_host_layout([c for c in specs if c.host == h])}"
                         for h in hosts) or "none"

    def hosts_to_install(self) -> list[HostGpus]:
        """Hosts that need more GPUs after than before (installed by hand, beforehand)."""
        return [h for h in self.gpu_hosts if h.after > h.before]

    def describe(self) -> list[str]:
        """Short human lines for the approval form."""
        lines = _vllm_lines(self.containers_before, self.containers_after)
        lines.append(_cloud_run_line(self.cloud_run_before, self.cloud_run_after))
        lines.append(_redis_line(self.redis_before, self.redis_after))
        lines.append(f"Cost: {_usd(self.cost_before_usd)} -> {_usd(self.cost_after_usd)} / month")
        lines += [_gpu_line(h) for h in self.gpu_hosts if h.before != h.after]
        return lines + [f"Manual: {m}" for m in self.manual]

    def digest(self) -> str:
        """sha256 of the change set's canonical JSON: the approval covers exactly this; the
        run re-plans under the lock and refuses when the digest differs."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the flow stores it with the run and shows it in the form)."""
        return {
            "from_phase": self.from_phase, "to_phase": self.to_phase,
            "direction": self.direction, "gpu_hosts": [h.to_dict() for h in self.gpu_hosts],
            "containers_before": [c.to_dict() for c in self.containers_before],
            "containers_after": [c.to_dict() for c in self.containers_after],
            "cloud_run_before": dict(self.cloud_run_before),
            "cloud_run_after": dict(self.cloud_run_after),
            "redis_before": dict(self.redis_before), "redis_after": dict(self.redis_after),
            "cost_before_usd": self.cost_before_usd, "cost_after_usd": self.cost_after_usd,
            "manual": list(self.manual), "describe": self.describe(),
        }


def _host_gpus(before: Phase, after: Phase) -> tuple[HostGpus, ...]:
    counts_before = {h.name: h.gpus for h in before.gpu_hosts}
    counts_after = {h.name: h.gpus for h in after.gpu_hosts}
    names = dict.fromkeys([*counts_before, *counts_after])
    return tuple(HostGpus(n, counts_before.get(n, 0), counts_after.get(n, 0)) for n in names)


def _manual_steps(before: Phase, after: Phase) -> tuple[str, ...]:
    """What the plan changes that phasegate does not do itself (the seed's manual work)."""
    steps = []
    if after.redis.cluster != before.redis.cluster:
        steps.append(f"Redis cluster mode {'on' if after.redis.cluster else 'off'} "
                     f"(built by hand)")
    if after.db_read_replicas != before.db_read_replicas:
        steps.append(f"DB read replicas {before.db_read_replicas} -> {after.db_read_replicas} "
                     f"(set up by hand)")
    return tuple(steps)


def plan_changes(plan: Plan, from_phase: int, to_phase: int,
                 base_port: Mapping[str, int] | None = None) -> ChangeSet:
    """What moving from `from_phase` to `to_phase` changes, by the plan.

    Raises SafetyStop when the step is not allowed (see `check_step`).
    """
    direction = check_step(from_phase, to_phase, plan.phases)
    before, after = plan.phase(from_phase), plan.phase(to_phase)
    return ChangeSet(
        from_phase, to_phase, direction, _host_gpus(before, after),
        tuple(vllm_containers(plan, from_phase, base_port)),
        tuple(vllm_containers(plan, to_phase, base_port)),
        cloud_run_settings(before.cloud_run), cloud_run_settings(after.cloud_run),
        redis_settings(before.redis), redis_settings(after.redis),
        float(before.monthly_cost_usd), float(after.monthly_cost_usd),
        _manual_steps(before, after),
    )


# ---------------------------------------------------------------- describe() lines

def _usd(value: float) -> str:
    """"$3,500", "$180.50", "-$5"."""
    sign, value = ("-" if value < 0 else ""), abs(value)
    return sign + (f"${value:,.0f}" if value == int(value) else f"${value:,.2f}")


def _layout(args: Sequence[str]) -> str:
    """"TP2" or "TP1 x PP2" from a container's vLLM args."""
    opts = dict(zip(args[::2], args[1::2], strict=False))
    pp = opts.get("--pipeline-parallel-size", "1")
    return f"TP{opts.get('--tensor-parallel-size', '?')}" + (f" x PP{pp}" if pp != "1" else "")


def _host_layout(specs: Sequence[Container]) -> str:
    """"1 x TP2 (GPUs 0,1)", "3 x TP1 (GPUs 0,1,2)", "none"."""
    if not specs:
        return "none"
    gpus = sorted({g for s in specs if s.gpus for g in (s.gpus.indices or ())})
    word = "GPU" if len(gpus) == 1 else "GPUs"
    layouts = " + ".join(dict.fromkeys(_layout(s.args) for s in specs))
    return f"{len(specs)} x {layouts} ({word} {','.join(map(str, gpus))})"


def _vllm_lines(before: Sequence[Container], after: Sequence[Container]) -> list[str]:
    lines = []
    for host in dict.fromkeys([c.host for c in (*before, *after)]):
        old = [c for c in before if c.host == host]
        new = [c for c in after if c.host == host]
        change = (f"unchanged ({_host_layout(new)})" if old == new
                  else f"{_host_layout(old)} -> {_host_layout(new)}")
        lines.append(f"vLLM on {host}: {change}")
    return lines


# Labels in the approval form's order; timeout is shown in seconds as gcloud's --timeout.
_CLOUD_RUN_LABELS = (("min_instances", "min"), ("max_instances", "max"), ("memory", "memory"),
                     ("cpu", "cpu"), ("max_concurrency", "concurrency"),
                     ("timeout_s", "timeout (s)"))


def _cloud_run_line(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    changes = [f"{label} {before.get(key)} -> {after.get(key)}"
               for key, label in _CLOUD_RUN_LABELS if before.get(key) != after.get(key)]
    return "Cloud Run: " + (", ".join(changes) or "unchanged")


def _redis_line(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    changes = []
    if before["maxmemory"] != after["maxmemory"]:
        changes.append(f"maxmemory {format_redis_bytes(before['maxmemory'])} -> "
                       f"{format_redis_bytes(after['maxmemory'])}")
    if before["maxmemory_policy"] != after["maxmemory_policy"]:
        changes.append(f"policy {before['maxmemory_policy']} -> {after['maxmemory_policy']}")
    return "Redis: " + (", ".join(changes) or "unchanged")


def _gpu_line(host: HostGpus) -> str:
    if host.after > host.before:
        return f"GPUs needed: {host.host} {host.after} (has to be installed before)"
    return f"GPUs freed: {host.host} {host.before} -> {host.after}"


# ---------------------------------------------------------------- approvals

@dataclass(frozen=True)
class ApprovalAnswer:
    """One answer to the approval form."""

    approved: bool
    name: str
    role: str
    comment: str = ""
    at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`at` as ISO 8601)."""
        return {"approved": self.approved, "name": self.name, "role": self.role,
                "comment": self.comment, "at": self.at.isoformat() if self.at else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApprovalAnswer:
        """Inverse of `to_dict`."""
        at = data.get("at")
        return cls(bool(data["approved"]), str(data["name"]), str(data["role"]),
                   str(data.get("comment") or ""),
                   datetime.fromisoformat(at) if isinstance(at, str) else at)


@dataclass(frozen=True)
class ApprovalDecision:
    """The tally of the answers so far.

    status: approved (every role approved), rejected (a role said no), invalid (the latest
    answer was refused; `message` says why, the flow may ask again), pending (waiting for
    `missing_roles`). `approved_by` is ((role, name), ...); `refused` is ((name, role,
    reason), ...) for every answer that broke a rule.
    """

    status: ApprovalStatus
    message: str
    missing_roles: tuple[str, ...]
    approved_by: tuple[tuple[str, str], ...] = ()
    refused: tuple[tuple[str, str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"status": self.status, "message": self.message,
                "missing_roles": list(self.missing_roles),
                "approved_by": [{"role": r, "name": n} for r, n in self.approved_by],
                "refused": [{"name": n, "role": r, "reason": why} for n, r, why in self.refused]}


def _person(name: str) -> str:
    """Names compare trimmed and case-insensitively: "Alice " is "alice"."""
    return name.strip().casefold()


def _refusal(answer: ApprovalAnswer, role: str | None, answered: Mapping[str, str],
             roles: Sequence[str], distinct_people: bool) -> str | None:
    """Why `answer` cannot count, or None. `answered` maps role -> name of earlier answers."""
    name = answer.name.strip()
    if not name:
        return "an answer needs the approver's name"
    if role is None:
        return f"unknown role {answer.role.strip()!r}: the plan asks {', '.join(roles)}"
    if role in answered:
        return f"{role} has already answered (by {answered[role]})"
    if distinct_people:
        other = next((r for r, n in answered.items() if _person(n) == _person(name)), None)
        if other is not None:
            return f"{name} cannot approve both {other} and {role}"
    return None


def approval_outcome(answers: Sequence[ApprovalAnswer], roles: Sequence[str],
                     distinct_people: bool = True) -> ApprovalDecision:
    """Tally `answers` (oldest first) against the plan's `roles`.

    One answer per role; roles match case-insensitively; with `distinct_people`, one person
    (name trimmed, case-insensitive) answers for one role only. The first valid rejection
    ends it ("rejected by NAME (ROLE): comment"); answers after a decision are ignored.
    """
    by_key = {r.strip().casefold(): r for r in roles}
    answered: dict[str, str] = {}
    refused: list[tuple[str, str, str]] = []
    last_refused = False
    for answer in answers:
        role = by_key.get(answer.role.strip().casefold())
        reason = _refusal(answer, role, answered, roles, distinct_people)
        last_refused = reason is not None
        if reason is not None or role is None:
            refused.append((answer.name.strip(), answer.role.strip(), reason or ""))
            continue
        name = answer.name.strip()
        if not answer.approved:
            comment = answer.comment.strip()
            message = f"rejected by {name} ({role})" + (f": {comment}" if comment else "")
            return ApprovalDecision("rejected", message, _missing(roles, answered),
                                    tuple(answered.items()), tuple(refused))
        answered[role] = name
        if not _missing(roles, answered):
            break
    return _tally(roles, answered, refused, last_refused)


def _missing(roles: Sequence[str], answered: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(r for r in roles if r not in answered)


def _tally(roles: Sequence[str], answered: Mapping[str, str],
           refused: list[tuple[str, str, str]], last_refused: bool) -> ApprovalDecision:
    missing = _missing(roles, answered)
    approved_by = tuple(answered.items())
    if not missing:
        who = ", ".join(f"{n} ({r})" for r, n in approved_by)
        return ApprovalDecision("approved", f"approved by {who}", (), approved_by,
                                tuple(refused))
    if last_refused:
        return ApprovalDecision("invalid", refused[-1][2], missing, approved_by, tuple(refused))
    return ApprovalDecision("pending", f"waiting for {', '.join(missing)}", missing,
                            approved_by, tuple(refused))


# ---------------------------------------------------------------- the financial check

@dataclass(frozen=True)
class FinancialItem:
    """One line of the seed's D-1 financial check; `ok` None means unknown."""

    name: str
    value: float | None
    bound: float | None
    ok: bool | None
    detail: str

    @property
    def status(self) -> Literal["ok", "not_ok", "unknown"]:
        """"ok", "not_ok" or "unknown"."""
        return "unknown" if self.ok is None else ("ok" if self.ok else "not_ok")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "value": self.value, "bound": self.bound, "ok": self.ok,
                "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class FinancialCheck:
    """The D-1 check: every item ok -> ok; any not ok -> not ok; otherwise unknown."""

    items: tuple[FinancialItem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool | None:
        """True when every item is ok, False when any is not, else None (unknown)."""
        if any(i.ok is False for i in self.items):
            return False
        return True if all(i.ok for i in self.items) else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"ok": self.ok, "items": [i.to_dict() for i in self.items]}


REVENUE_MULTIPLE = 3.0    # seed D-1 / phase 1 -> 2: "monthly revenue > monthly cost x 3"
RUNWAY_MONTHS = 3.0       # seed D-1: "3 months of runway"


def _known(value: float | None) -> float | None:
    """The value, or None when missing, NaN or infinite (unknown, never a pass)."""
    return value if value is not None and math.isfinite(value) else None


def _revenue_item(revenue: float | None, cost: float | None) -> FinancialItem:
    revenue, cost = _known(revenue), _known(cost)
    if revenue is None or cost is None:
        return FinancialItem("revenue", revenue, None, None,
                             "unknown: monthly revenue or next month's cost not available")
    bound = cost * REVENUE_MULTIPLE
    ok = revenue >= bound
    return FinancialItem("revenue", revenue, bound, ok,
                         f"monthly revenue {_usd(revenue)} {'>=' if ok else '<'} "
                         f"{REVENUE_MULTIPLE:g} x cost {_usd(cost)} = {_usd(bound)}")


def _runway_item(cash: float | None, burn: float | None) -> FinancialItem:
    cash, burn = _known(cash), _known(burn)
    if cash is None or burn is None:
        return FinancialItem("runway", None, RUNWAY_MONTHS, None,
                             "unknown: cash or monthly burn not available")
    if burn <= 0:
        # Not burning cash: the runway has no end; JSON has no infinity, so no value.
        return FinancialItem("runway", None, RUNWAY_MONTHS, True,
                             f"no monthly burn ({_usd(burn)}): runway unlimited")
    months = cash / burn
    ok = months >= RUNWAY_MONTHS
    return FinancialItem("runway", round(months, 2), RUNWAY_MONTHS, ok,
                         f"runway {months:.1f} months (cash {_usd(cash)} / burn {_usd(burn)}) "
                         f"{'>=' if ok else '<'} {RUNWAY_MONTHS:g} months")


def financial_check(revenue_month_usd: float | None, cost_next_month_usd: float | None,
                    cash_usd: float | None, burn_month_usd: float | None) -> FinancialCheck:
    """The seed's D-1 financial check for the approval form.

    revenue: monthly revenue >= 3 x the next phase's monthly cost; runway: cash / monthly burn
    >= 3 months. None, NaN or infinite inputs make the item unknown (never ok).
    """
    return FinancialCheck((_revenue_item(revenue_month_usd, cost_next_month_usd),
                           _runway_item(cash_usd, burn_month_usd)))
