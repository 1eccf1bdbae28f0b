"""The preflight's decisions (pure): what the plan asks of each system, and the verdict.

`phasegate doctor` (and the `doctor` deployment) checks every system the plan needs; the
phase transition runs the same checks before it asks for approval, so nobody approves a run
that cannot work. This module knows nothing of the systems: it lists the queries the plan
holds (`plan_queries`), turns what a probe saw into a `Check` (`query_check`), and says what
the checks add up to (`Verdict`). No data is never a pass: a query that returns no series is a
FAIL that names the selectors matching nothing, the usual production mistake being a job label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from phasegate.policy.plan import Plan, PromQLSource, SQLSource

__all__ = ["Check", "PlanQuery", "Verdict", "plan_queries", "query_check", "render_table",
           "unanswered"]

QueryKind = Literal["promql", "sql"]


@dataclass(frozen=True)
class Check:
    """One line of the preflight: `system` (postgres, gpu-1, ...), what was checked, whether
    it passed, and why (what was seen, or what is wrong)."""

    system: str
    name: str
    ok: bool
    why: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


@dataclass(frozen=True)
class PlanQuery:
    """One query of the plan and where it lives ("1->2 condition gpu-util")."""

    kind: QueryKind
    where: str
    query: str


def plan_queries(plan: Plan, transitions: Sequence[tuple[int, int]] | None = None
                 ) -> list[PlanQuery]:
    """Every PromQL and SQL query of the plan's transitions (all, or the ones named by their
    (from, to) phases): trigger conditions and watch metrics, in plan order, each once."""
    wanted = None if transitions is None else {tuple(sorted(t)) for t in transitions}
    found: dict[tuple[str, str], PlanQuery] = {}
    for tr in plan.transitions:
        if wanted is not None and (tr.from_phase, tr.to_phase) not in wanted:
            continue
        step = f"{tr.from_phase}->{tr.to_phase}"
        for cond in tr.conditions:
            if isinstance(cond.source, PromQLSource | SQLSource):
                q = PlanQuery(cond.source.kind, f"{step} condition {cond.id}", cond.source.query)
                found.setdefault((q.kind, q.query), q)
        for metric in tr.watch.metrics:
            q = PlanQuery("promql", f"{step} watch {metric.name}", metric.query)
            found.setdefault((q.kind, q.query), q)
    return list(found.values())


def query_check(q: PlanQuery, answered: int | None, error: str | None = None,
                empty: Sequence[str] = (), jobs: Mapping[str, Sequence[str]] | None = None,
                seconds: float = 0.0) -> Check:
    """The verdict on one plan query. `answered`: series (PromQL) or rows (SQL) returned, None
    when it failed with `error`. For an empty PromQL answer, `empty` lists its selectors that
    match nothing and `jobs` the job labels each of their metric names does carry."""
    system = "prometheus" if q.kind == "promql" else "postgres"
    name = f"{q.kind} {q.where}"
    if answered is None:
        return Check(system, name, False, error or "failed", seconds)
    unit = "series" if q.kind == "promql" else "rows"
    if answered > 0:
        return Check(system, name, True, f"{answered} {unit}", seconds)
    return Check(system, name, False, _why_empty(q.kind, empty, jobs or {}), seconds)


def _why_empty(kind: QueryKind, empty: Sequence[str], jobs: Mapping[str, Sequence[str]]) -> str:
    if kind == "sql":
        return "no rows for the last day (does the table have recent data?)"
    if not empty:
        return "no series, though each selector matches some: check the label matchers' overlap"
    parts = []
    for selector in empty:
        name = selector.split("{", 1)[0]
        seen = jobs.get(name, ())
        where = (f"{name} exists with job={', '.join(seen)}" if seen
                 else f"no series named {name} at all" if name else "")
        parts.append(f"{selector} matches nothing" + (f" ({where})" if where else ""))
    return "no series: " + "; ".join(parts)


def unanswered(system: str, name: str, deadline_s: float) -> Check:
    """The check of a probe that did not answer within its deadline."""
    return Check(system, name, False, f"no answer within {deadline_s:g} s", deadline_s)


@dataclass(frozen=True)
class Verdict:
    """What the checks add up to: ok only when every check passed (and there was one)."""

    checks: tuple[Check, ...]
    failures: tuple[Check, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "failures", tuple(c for c in self.checks if not c.ok))

    @property
    def ok(self) -> bool:
        """Every check passed; an empty preflight proves nothing and is not ok."""
        return bool(self.checks) and not self.failures

    @property
    def summary(self) -> str:
        """One line: "23 checks, all ok" or "23 checks, 2 FAIL: prometheus promql ..."."""
        if not self.checks:
            return "no checks ran"
        if self.ok:
            return f"{len(self.checks)} checks, all ok"
        named = "; ".join(f"{c.system} {c.name}" for c in self.failures)
        return f"{len(self.checks)} checks, {len(self.failures)} FAIL: {named}"

    @property
    def explained(self) -> str:
        """The summary with each failure's reason: what a refused run says."""
        if self.ok or not self.checks:
            return self.summary
        reasons = "; ".join(f"{c.system} {c.name}: {c.why}" for c in self.failures)
        return f"{len(self.checks)} checks, {len(self.failures)} FAIL: {reasons}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: ok, summary, checks."""
        return {"ok": self.ok, "summary": self.summary,
                "checks": [c.to_dict() for c in self.checks]}


def render_table(checks: Sequence[Check], markdown: bool = False) -> str:
    """The checks as a table (system, check, ok/FAIL, why), failures first."""
    rows = sorted(checks, key=lambda c: (c.ok, c.system, c.name))
    if markdown:
        lines = ["| system | check | result | why |", "|---|---|---|---|"]
        lines += [f"| {c.system} | {c.name} | {'ok' if c.ok else '**FAIL**'} | "
                  f"{c.why.replace('|', '/')} |" for c in rows]
        return "\n".join(lines)
    width = max([len(c.name) for c in rows] + [5])
    sys_width = max([len(c.system) for c in rows] + [6])
    lines = [f"{'system':<{sys_width}} {'check':<{width}} {'':<4}  why"]
    lines += [f"{c.system:<{sys_width}} {c.name:<{width}} {'ok' if c.ok else 'FAIL':<4}  "
              f"{c.why}" for c in rows]
    return "\n".join(lines)
