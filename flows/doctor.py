"""`doctor`: the preflight. Does every system the plan needs answer, through its Block?

One probe per (system, check), all in parallel, each inside one deadline: PostgreSQL (both
databases, every SQL condition of the plan), Redis, Prometheus (every PromQL query of the plan
returns at least one series, else the selectors that match nothing are named), Alertmanager,
each GPU host over SSH with its host key verified (nvidia-smi, docker), vLLM health, the API's
health URL (TLS verified), Cloud Run, Compute, the notification Block, the report
directories and Prefect's one-transition-at-a-time limit. Nothing is changed, nothing is sent.

`phasegate doctor` calls `preflight` directly (no flow run: it is a quick look); the `doctor`
deployment runs the flow; the phase transition runs `preflight` before it asks for approval.
The decisions (which queries, what an empty answer means, the verdict) are policy.doctor's.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from prefect.states import Completed, Failed, State

from phasegate.blocks.systems import (
    GcpConnection,
    GpuHost,
    HttpEndpoint,
    PostgresConnection,
    PrometheusConnection,
    RedisConnection,
    ReportStore,
    load_block,
)
from phasegate.errors import PhasegateError, PreconditionFailed
from phasegate.policy.doctor import (
    Check,
    PlanQuery,
    Verdict,
    plan_queries,
    query_check,
    render_table,
    unanswered,
)
from phasegate.policy.plan import Plan, load_plan
from phasegate.policy.promql import selectors
from phasegate.policy.transition import vllm_containers
from phasegate.tasks import postgres, prometheus
from phasegate.tasks.backup import check_writable
from phasegate.tasks.cloud_run import read_service_settings
from phasegate.tasks.compute import zone_readable
from phasegate.tasks.gpu_hosts import detect_gpus, docker_answers
from phasegate.tasks.http_endpoints import probe_endpoint
from phasegate.tasks.notifications import describe_notifications
from phasegate.tasks.redis_cache import ping
from phasegate.tasks.state_store import read_current_phase
from phasegate.tasks.transitions import describe_limit
from phasegate.tasks.vllm import is_healthy

__all__ = ["Probe", "Scope", "doctor", "preflight", "run_probes"]

B = TypeVar("B", bound=Block)
DEFAULT_DEADLINE_S = 10.0
_PARALLEL = 16  # probes in flight at once (a plan holds ~40 queries; Prometheus takes 16 fine)


@dataclass(frozen=True)
class Probe:
    """One check to run: `fn` returns what it saw (or a whole Check); raising is a FAIL."""

    system: str
    name: str
    fn: Callable[[], str | Check]


@dataclass(frozen=True)
class Scope:
    """What to check. Empty fields: everything the plan has (the doctor); the transition
    names its phases (their hosts), its step (its queries), the phase it starts from, and the
    GPUs each host must have for the target phase."""

    phases: tuple[int, ...] = ()
    transitions: tuple[tuple[int, int], ...] = ()
    current_phase: int | None = None
    gpus_needed: tuple[tuple[str, int], ...] = ()


# ---------------------------------------------------------------- running probes


def run_probes(probes: Sequence[Probe], deadline_s: float) -> list[Check]:
    """Run every probe in parallel; a probe still running at the deadline is a FAIL ("no
    answer within N s"). Threads are daemons, so a hung probe never holds the process, and
    each runs in a copy of the caller's context (Prefect's settings live there)."""
    results: dict[int, Check] = {}
    lock, gate = threading.Lock(), threading.Semaphore(_PARALLEL)

    def one(index: int, probe: Probe) -> None:
        with gate:
            check = _run_one(probe)
        with lock:
            results[index] = check

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(one, i, p),
                                daemon=True, name=f"doctor-{p.system}")
               for i, p in enumerate(probes)]
    end = time.monotonic() + deadline_s
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    with lock:
        done = dict(results)
    return [done.get(i) or unanswered(p.system, p.name, deadline_s) for i, p in enumerate(probes)]


def _run_one(probe: Probe) -> Check:
    start = time.monotonic()
    try:
        seen = probe.fn()
    except Exception as exc:  # noqa: BLE001 - every failure is this check's FAIL, with why
        return Check(probe.system, probe.name, False, _reason(exc), time.monotonic() - start)
    took = time.monotonic() - start
    if isinstance(seen, Check):
        return replace(seen, seconds=took)
    return Check(probe.system, probe.name, True, seen, took)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, PhasegateError) and text else f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------- the preflight


def preflight(plan: Plan, prefix: str, notifications: str, scope: Scope | None = None,
              deadline_s: float = DEFAULT_DEADLINE_S, prometheus_block: str | None = None,
              now: datetime | None = None) -> Verdict:
    """Check every system the plan (or `scope`) needs through the Blocks `<prefix>-*`."""
    scope = scope or Scope()
    checks: list[Check] = []
    phases = scope.phases or tuple(plan.phases)
    hosts = sorted({h.name for p in phases for h in plan.phase(p).gpu_hosts})
    blocks = _Blocks(prefix, checks)
    probes = [
        *_postgres_probes(blocks.get(PostgresConnection, "postgres"), plan, scope, deadline_s,
                          now or datetime.now(UTC)),
        *_store_probes(blocks, notifications),
        *_prometheus_probes(blocks.get(PrometheusConnection, prometheus_block or "prometheus",
                                       exact=prometheus_block is not None), plan, scope),
        *_host_probes(plan, scope, {h: blocks.get(GpuHost, h) for h in hosts},
                      blocks.get(PostgresConnection, "postgres"), deadline_s),
        *_cloud_probes(blocks, deadline_s),
    ]
    return Verdict(tuple(checks + run_probes(probes, deadline_s)))


class _Blocks:
    """Blocks by short name, loaded once; a missing one is a FAIL check, and its probes are
    left out (they could only repeat that)."""

    def __init__(self, prefix: str, checks: list[Check]) -> None:
        self.prefix, self.checks = prefix, checks
        self._cache: dict[str, Any] = {}

    def get(self, cls: type[B], short: str, exact: bool = False) -> B | None:
        name = short if exact else f"{self.prefix}-{short}"
        if name not in self._cache:
            self._cache[name] = self._load(cls, name)
        return self._cache[name]

    def _load(self, cls: type[B], name: str) -> B | None:
        start = time.monotonic()
        try:
            return load_block(cls, name)
        except Exception as exc:  # noqa: BLE001 - a missing Block is a FAIL, with why
            why = (f"no {cls.__name__} Block '{name}' (docs/production.md says how to save "
                   "it)" if isinstance(exc, ValueError) else _reason(exc))
            self.checks.append(Check("prefect", f"Block {name}", False, why,
                                     time.monotonic() - start))
            return None


def _postgres_probes(pg: PostgresConnection | None, plan: Plan, scope: Scope,
                     deadline_s: float, now: datetime) -> Iterable[Probe]:
    if pg is None:
        return
    yield Probe("postgres", "app database", lambda: f"PostgreSQL "
                f"{postgres.server_version(pg, pg.app_database)}, database {pg.app_database}")
    yield Probe("postgres", "state database", lambda: _state(pg))
    tz = plan.peak_window.timezone
    for q in plan_queries(plan, scope.transitions or None):
        if q.kind == "sql":
            yield Probe("postgres", f"sql {q.where}", partial(
                _sql_check, pg, q, now - timedelta(days=1), now, tz, deadline_s))


def _state(pg: PostgresConnection) -> str:
    with pg.get_connection(pg.state_database) as conn:
        phase = read_current_phase(conn)
    return f"database {pg.state_database}, current phase {phase}"


def _sql_check(pg: PostgresConnection, q: PlanQuery, start: datetime, end: datetime, tz: str,
               deadline_s: float) -> Check:
    try:
        rows = postgres.count_sql_rows(pg, q.query, start, end, tz, timeout_s=deadline_s * 0.8)
    except PhasegateError as exc:
        return query_check(q, None, str(exc))
    return query_check(q, rows)


def _prometheus_probes(prom: PrometheusConnection | None, plan: Plan,
                       scope: Scope) -> Iterable[Probe]:
    if prom is None:
        return
    yield Probe("prometheus", "server", lambda: f"Prometheus {prometheus.server_version(prom)} "
                f"at {prom.url}")
    for q in plan_queries(plan, scope.transitions or None):
        if q.kind == "promql":
            yield Probe("prometheus", f"promql {q.where}",
                        partial(_promql_check, prom, q))


def _promql_check(prom: PrometheusConnection, q: PlanQuery) -> Check:
    """The query's series now; when none, which of its selectors match nothing and which
    jobs do carry those metrics (a wrong job label is the usual production mistake)."""
    try:
        answered = prometheus.count_series(prom, q.query)
        if answered:
            return query_check(q, answered)
        empty = [s for s in selectors(q.query)
                 if prometheus.count_series(prom, f"count({s})") == 0]
        names = {s.split("{", 1)[0] for s in empty} - {""}
        jobs = {name: prometheus.jobs_of(prom, name) for name in names}
    except PhasegateError as exc:
        return query_check(q, None, str(exc))
    return query_check(q, 0, empty=empty, jobs=jobs)


def _store_probes(blocks: _Blocks, notifications: str) -> Iterable[Probe]:
    redis = blocks.get(RedisConnection, "redis")
    if redis is not None:
        yield Probe("redis", "ping", lambda: ping(redis))
    store = blocks.get(ReportStore, "reports")
    if store is not None:
        yield Probe("reports", "reports dir", lambda: check_writable(Path(store.reports_dir)))
        yield Probe("reports", "backups dir", lambda: check_writable(Path(store.backups_dir)))
    yield Probe("notifications", notifications, lambda: describe_notifications(notifications))
    yield Probe("prefect", "transition limit", describe_limit)


def _host_probes(plan: Plan, scope: Scope, hosts: dict[str, GpuHost | None],
                 pg: PostgresConnection | None, deadline_s: float) -> Iterable[Probe]:
    needed = dict(scope.gpus_needed)
    for name, host in hosts.items():
        if host is None:
            continue
        yield Probe(name, "nvidia-smi", partial(_gpus, host, needed.get(name)))
        yield Probe(name, "docker", partial(docker_answers, host, deadline_s))
    live = {n: h for n, h in hosts.items() if h is not None}
    if live:
        yield Probe("vllm", "health", lambda: _vllm_health(plan, scope, live, pg, deadline_s))


def _gpus(host: GpuHost, needed: int | None) -> str:
    found = detect_gpus.fn(host)
    seen = f"{len(found)} GPU(s)" + (f": {', '.join(sorted({g.name for g in found}))}"
                                     if found else "")
    if needed is not None and len(found) < needed:
        raise PreconditionFailed(f"{seen}; the target phase needs {needed}")
    return seen


def _vllm_health(plan: Plan, scope: Scope, hosts: dict[str, GpuHost],
                 pg: PostgresConnection | None, deadline_s: float) -> str:
    """GET /health on every vLLM server of the current phase."""
    phase = scope.current_phase
    if phase is None:
        if pg is None:
            raise PreconditionFailed("current phase unknown: no PostgreSQL Block")
        with pg.get_connection(pg.state_database) as conn:
            phase = read_current_phase(conn)
    ports = {n: h.vllm_port for n, h in hosts.items()}
    urls = [f"http://{hosts[c.host].host}:{c.host_port}"
            for c in vllm_containers(plan, phase, ports) if c.host in hosts]
    down = [u for u in urls if not is_healthy(u, timeout_s=deadline_s / 2)]
    if down:
        raise PreconditionFailed(f"phase {phase}: not healthy: {', '.join(down)}")
    return f"phase {phase}: {len(urls)} server(s) healthy"


def _cloud_probes(blocks: _Blocks, deadline_s: float) -> Iterable[Probe]:
    api = blocks.get(HttpEndpoint, "api")
    if api is not None:
        yield Probe("api", api.url, lambda: probe_endpoint(api, timeout_s=deadline_s))
    alerts = blocks.get(HttpEndpoint, "alertmanager")
    if alerts is not None:
        yield Probe("alertmanager", alerts.url,
                    lambda: probe_endpoint(alerts, timeout_s=deadline_s))
    gcp = blocks.get(GcpConnection, "gcp")
    if gcp is not None:
        yield Probe("cloud run", gcp.cloud_run_service, lambda: _cloud_run(gcp))
        yield Probe("compute", f"{gcp.project}/{gcp.zone}",
                    lambda: zone_readable(gcp, timeout_s=deadline_s))


def _cloud_run(gcp: GcpConnection) -> str:
    s = read_service_settings.fn(gcp)
    return (f"min {s['min_instances']} max {s['max_instances']} instances, "
            f"{s['memory']} / {s['cpu']} CPU, {len(s.get('vllm_urls') or [])} vLLM upstream(s)")


# ---------------------------------------------------------------- the flow


@flow(name="doctor", log_prints=True)
def doctor(prefix: str = "lab", plan_path: str | None = None,
           notifications: str = "custom-webhook/lab-slack",
           deadline_s: float = DEFAULT_DEADLINE_S) -> dict[str, Any] | State:
    """Check that every system the plan needs answers (changes nothing, sends nothing).

    Args:
        prefix: Name prefix of the Blocks to check (lab, prod).
        plan_path: The plan file; empty: plans/dreamseed.yaml.
        notifications: The notification Block ("<type-slug>/<name>").
        deadline_s: Each check's deadline, in seconds (they run in parallel).
    """
    verdict = preflight(load_plan(plan_path), prefix, notifications, deadline_s=deadline_s)
    create_markdown_artifact(key="doctor", description=verdict.summary,
                             markdown=f"# Preflight: {verdict.summary}\n\n"
                                      f"{render_table(verdict.checks, markdown=True)}\n")
    print(render_table(verdict.checks))
    if verdict.ok:
        return Completed(message=verdict.summary, data=verdict.to_dict())
    return Failed(message=verdict.summary, data=verdict.to_dict())
