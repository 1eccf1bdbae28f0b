"""Swapping one vLLM layout for another without dropping requests where GPUs allow (pure).

`plan_swap(old, new, live)` decides the order; the flow only carries the steps out (start,
await ready, route the API, drain, remove). Make before break:

1. New containers that conflict with no old container (other GPUs, other name) start first,
   and are awaited together with new containers that already run as planned (a resumed run:
   they are kept, never restarted).
2. The old containers that conflict with the new layout are replaced host by host (a wave per
   host). Before a wave, the API is routed to everything that can serve meanwhile (the early
   and kept ones, the old containers of other hosts, the new ones of earlier waves, old ones
   the new layout does not need) and the containers about to go are drained. When nothing can
   serve meanwhile (the new layout needs every GPU the old one holds: 1 -> 2 on one host), the
   wave is stop-start and says so (`outage`).
3. The API is routed to the new layout; old containers no new one conflicts with are drained
   and removed last.

Two containers conflict when they are on the same host and may share a GPU or have the same
name (docker allows one container of a name per host).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from phasegate.policy.containers import Container, LiveContainer, differences

__all__ = ["StepKind", "SwapPlan", "SwapStep", "conflicts", "plan_swap"]

StepKind = Literal["start", "await", "route", "drain", "remove"]


@dataclass(frozen=True)
class SwapStep:
    """One step: start these containers, await them ready, route the API to them (only),
    drain them, or stop and remove them."""

    kind: StepKind
    containers: tuple[Container, ...]

    def describe(self) -> str:
        """"start gpu-1/vllm-server, gpu-1/vllm-server-1"."""
        return f"{self.kind} " + (", ".join(f"{c.host}/{c.name}" for c in self.containers)
                                  or "nothing")


@dataclass(frozen=True)
class SwapPlan:
    """The ordered steps of one swap, and what the decision was based on."""

    steps: tuple[SwapStep, ...]
    kept: tuple[Container, ...]            # already running as planned: left serving
    outage_hosts: tuple[str, ...]          # hosts whose wave is stop-start (nothing serves)

    def of_kind(self, kind: StepKind) -> list[Container]:
        """Every container a step of this kind names, in order."""
        return [c for s in self.steps if s.kind == kind for c in s.containers]

    def describe(self) -> list[str]:
        """One line per step (logs, the approval form)."""
        return [s.describe() for s in self.steps]


def conflicts(a: Container, b: Container) -> bool:
    """Whether `a` and `b` cannot run at once: same host, and a GPU or the name in common."""
    if a.host != b.host:
        return False
    if a.name == b.name:
        return True
    return a.gpus is not None and b.gpus is not None and a.gpus.overlaps(b.gpus)


def _runs_as(live: dict[tuple[str, str], LiveContainer], wanted: Container) -> bool:
    found = live.get(wanted.key)
    return bool(found and found.running and not differences(found.container, wanted))


@dataclass(frozen=True)
class _Sides:
    """The old and new containers sorted by what the swap does with them."""

    kept: list[Container]       # new, already running as planned
    early: list[Container]      # new, conflicting with no old container still there
    doomed: list[Container]     # old, conflicting with a new one: replaced in a wave
    late: list[Container]       # old, conflicting with none: removed last
    later: list[Container]      # new, arriving in the wave of their host
    serving: set[tuple[str, str]]  # old containers that run (and so can serve meanwhile)


def _sides(old: Sequence[Container], new: Sequence[Container],
           live: Iterable[LiveContainer]) -> _Sides:
    seen = {lc.container.key: lc for lc in live}
    kept = [t for t in new if _runs_as(seen, t)]
    kept_keys = {t.key for t in kept}
    # An old container whose name a kept one took is gone already (replaced by a dead run).
    present = [o for o in old if o.key not in kept_keys and (not seen or o.key in seen)]
    todo = [t for t in new if t.key not in kept_keys]
    early = [t for t in todo if not any(conflicts(t, o) for o in present)]
    doomed = [o for o in present if any(conflicts(o, t) for t in todo)]
    return _Sides(kept, early, doomed, [o for o in present if o not in doomed],
                  [t for t in todo if t not in early],
                  {o.key for o in present if not seen or seen[o.key].running})


def plan_swap(old: Sequence[Container], new: Sequence[Container],
              live: Iterable[LiveContainer] = ()) -> SwapPlan:
    """The steps that replace the `old` layout by the `new` one, given what runs now (`live`,
    as inspected on the hosts; empty: assume `old` runs as recorded)."""
    sides = _sides(old, new, live)
    steps: list[SwapStep] = []
    _add(steps, "start", sides.early)
    _add(steps, "await", sides.early + sides.kept)
    ready = sides.early + sides.kept
    outages = []
    hosts = list(dict.fromkeys(o.host for o in sides.doomed))
    for i, host in enumerate(hosts):
        # Every new container that is not early conflicts with a doomed one on its own host,
        # so it arrives in that host's wave.
        arriving = [t for t in sides.later if t.host == host]
        waiting = [o for o in sides.doomed if o.host in hosts[i + 1:]]
        if not _wave(steps, sides, host, ready + waiting + sides.late):
            outages.append(host)
        _add(steps, "start", arriving)
        _add(steps, "await", arriving)
        ready = ready + arriving
    _route(steps, list(new))
    _add(steps, "drain", [o for o in sides.late if o.key in sides.serving])
    _add(steps, "remove", sides.late)
    return SwapPlan(tuple(steps), tuple(sides.kept), tuple(outages))


def _wave(steps: list[SwapStep], sides: _Sides, host: str,
          candidates: Sequence[Container]) -> bool:
    """Route to what can serve while `host`'s doomed containers go, drain and remove them.
    False when nothing can serve meanwhile (stop-start)."""
    going = [o for o in sides.doomed if o.host == host]
    others = [c for c in dict.fromkeys(candidates)
              if c not in sides.doomed + sides.late or c.key in sides.serving]
    if others:
        _route(steps, others)
        _add(steps, "drain", [o for o in going if o.key in sides.serving])
    _add(steps, "remove", going)
    return bool(others)


def _add(steps: list[SwapStep], kind: StepKind, containers: Sequence[Container]) -> None:
    if containers:
        steps.append(SwapStep(kind, tuple(containers)))


def _route(steps: list[SwapStep], containers: Sequence[Container]) -> None:
    """Route to exactly these, unless that is already the last routing."""
    last = next((s for s in reversed(steps) if s.kind == "route"), None)
    if containers and (last is None or set(last.containers) != set(containers)):
        steps.append(SwapStep("route", tuple(containers)))
