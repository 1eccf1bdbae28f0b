"""The load-test engine against real local servers (tests/_targets.py, lab.vllm_sim).

Correctness, not speed: schedules honoured, latency from the intended send time, drops, VU
counts, checks, abortOnFail, LLM streaming metrics, target URLs, the HTTP client.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _targets import Running, answer_at, start_target, stop_target

from phasegate.errors import ConfigError
from phasegate.loadtest.engine import Progress, check_target, run
from phasegate.loadtest.http import HttpClient, Target, parse_target
from phasegate.loadtest.options import adhoc_options
from phasegate.policy.loadtest.scenario import arrival_offsets, parse_options

GET = {"METHOD": "GET", "PATH": "/"}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the targets log."""
    return tmp_path_factory.mktemp("targets")


def _target(logs: Path, mode: str, *args: str) -> Iterator[Running]:
    t = start_target(mode, logs / f"{mode}.log", *args)
    yield t
    stop_target(t)


@pytest.fixture(scope="module")
def fast(logs: Path) -> Iterator[Running]:
    """A target answering at once."""
    yield from _target(logs, "fast")


@pytest.fixture(scope="module")
def slow(logs: Path) -> Iterator[Running]:
    """A target answering after 100 ms, never frozen."""
    yield from _target(logs, "freeze", "--base-ms", "100", "--freeze-s", "0")


EPOCH = time.monotonic()


@pytest.fixture(scope="module")
def freezing(logs: Path) -> Iterator[Running]:
    """20 ms base, frozen for the last 0.5 s of every 2 s since EPOCH."""
    yield from _target(logs, "freeze", "--epoch", repr(EPOCH), "--base-ms", "20",
                       "--every-s", "2", "--freeze-s", "0.5")


@pytest.fixture(scope="module")
def api(logs: Path) -> Iterator[Running]:
    """The seed's two endpoints; every 4th request answers 503."""
    yield from _target(logs, "journey", "--base-ms", "2", "--fail-every", "4")


@pytest.fixture(scope="module")
def llm_stub(logs: Path) -> Iterator[Running]:
    """Streams 8 tokens: the first after 50 ms, then one every 10 ms."""
    yield from _target(logs, "llm", "--tokens", "8", "--ttft-ms", "50", "--itl-ms", "10")


def _metric(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return summary["metrics"][name]


def _percentile(values: list[float], p: float) -> float:
    """k6's linear-interpolation percentile of exact values."""
    ordered = sorted(values)
    x = p / 100 * (len(ordered) - 1)
    lo = int(x)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (x - lo)


def test_arrival_rate_runs_every_scheduled_iteration(fast: Running) -> None:
    opts = adhoc_options({"executor": "constant-arrival-rate", "rate": 100, "duration": "2s",
                          "pre_allocated_vus": 5, "max_vus": 20}, request=GET)
    t0 = time.monotonic()
    res = run(opts, fast.url)
    # rate x duration, and one due at the very end: k6 1.1 runs 201 too
    assert _metric(res.summary, "http_reqs")["count"] == 201
    assert res.summary["metrics"].get("dropped_iterations", {}).get("count", 0) == 0
    assert 1.9 < time.monotonic() - t0 < 4.0
    assert res.exit_code == 0 and res.aborted is None


def test_latency_counts_from_the_intended_send_time(freezing: Running) -> None:
    opts = adhoc_options({"executor": "constant-arrival-rate", "rate": 100, "duration": "4s",
                          "pre_allocated_vus": 80, "max_vus": 200}, request=GET)
    res = run(opts, freezing.url)
    truth = [1000 * (answer_at(res.started + o, EPOCH, 2.0, 0.5, 0.02) - (res.started + o))
             for o in arrival_offsets(opts.scenarios["adhoc"])]
    d = _metric(res.summary, "http_req_duration")
    for p in (95, 99):
        assert d[f"p({p})"] == pytest.approx(_percentile(truth, p), rel=0.1)
    assert d["p(95)"] > 5 * 20  # far above the base latency: the freezes are not hidden
    latency = _metric(res.summary, "http_req_latency")  # ours: from the intended send time
    assert latency["p(99)"] == pytest.approx(_percentile(truth, 99), rel=0.1)
    assert latency["max"] >= d["max"]


def test_no_free_vu_means_a_dropped_iteration(slow: Running) -> None:
    # 2 VUs at 100 ms each serve ~20 iterations/s of the 50 asked for.
    opts = adhoc_options({"executor": "constant-arrival-rate", "rate": 50, "duration": "2s",
                          "pre_allocated_vus": 1, "max_vus": 2}, request=GET)
    res = run(opts, slow.url)
    done = _metric(res.summary, "iterations")["count"]
    dropped = _metric(res.summary, "dropped_iterations")["count"]
    assert done + dropped == 101  # 50/s x 2 s, plus the one due at the end (as k6)
    assert 30 < dropped < 80
    assert _metric(res.summary, "vus_max")["max"] == 2


def test_closed_loop_runs_the_scheduled_vus(slow: Running) -> None:
    opts = adhoc_options({"executor": "ramping-vus", "start_vus": 0, "graceful_stop": "1s",
                          "stages": [{"duration": "1s", "target": 4},
                                     {"duration": "1500ms", "target": 4}]}, request=GET)
    seen: list[Progress] = []
    res = run(opts, slow.url, progress=seen.append)
    assert _metric(res.summary, "vus_max")["value"] == 4
    assert any(p.vus == 4 for p in seen)
    # ~1 s of 2 VUs on average in the ramp + 1.5 s of 4, at 10 iterations/s per VU: ~80.
    assert 60 <= _metric(res.summary, "iterations")["count"] <= 95


def test_constant_vus_iterate_back_to_back(slow: Running) -> None:
    opts = adhoc_options({"executor": "constant-vus", "vus": 3, "duration": "1s"}, request=GET)
    res = run(opts, slow.url)
    assert 24 <= _metric(res.summary, "iterations")["count"] <= 33  # 3 VUs x 10/s x 1 s


def test_seed_journey_checks_and_errors_rate(api: Running) -> None:
    opts = parse_options({"scenarios": {"p1": {"executor": "constant-vus", "vus": 4,
                                               "duration": "150s", "tags": {"phase": "1"}}},
                          "thresholds": {"errors": ["rate<0.01"],
                                         "http_req_duration{phase:1}": ["p(95)<500"]}})
    res = run(opts, api.url, scale=0.01)  # 1.5 s; sleeps 1 s and 2 s become 10 and 20 ms
    checks = res.summary["checks"]
    assert set(checks) == {"status is 200", "response time < 500ms", "AI feedback success",
                           "AI response time < 5s"}
    assert checks["status is 200"]["fails"] > 0 and checks["response time < 500ms"]["fails"] == 0
    errors = _metric(res.summary, "errors")
    assert 0.15 < errors["value"] < 0.35  # every 4th request fails: 1 in 4 check groups
    assert errors["thresholds"]["rate<0.01"]["ok"] is False
    assert _metric(res.summary, "http_req_duration{phase:1}")["thresholds"]["p(95)<500"]["ok"]
    assert res.exit_code == 99


def test_abort_on_fail_stops_the_run_early(fast: Running) -> None:
    opts = adhoc_options({"executor": "constant-vus", "vus": 2, "duration": "20s"},
                         {"http_req_duration": [{"threshold": "max<0.001", "abortOnFail": True,
                                                 "delayAbortEval": "1s"}]}, request=GET)
    t0 = time.monotonic()
    res = run(opts, fast.url)
    assert time.monotonic() - t0 < 5
    assert res.aborted and "abortOnFail" in res.aborted
    assert res.summary["aborted"] is True
    assert res.exit_code == 99


def _llm_opts(mode: str, model: str = "llama") -> Any:
    return parse_options({"scenarios": {"gen": {
        "executor": "constant-vus", "vus": 2, "duration": "1s", "exec": "llm",
        "env": {"MODE": mode, "MODEL": model, "MAX_TOKENS": "8"}}}, "thresholds": {
        "llm_errors": ["rate<0.01"], "llm_ttft": ["p(95)<2000"]}})


@pytest.mark.parametrize("mode", ["completions", "chat"])
def test_llm_mode_measures_ttft_itl_and_tokens(llm_stub: Running, mode: str) -> None:
    res = run(_llm_opts(mode), llm_stub.url)
    m = res.summary["metrics"]
    assert m["llm_errors"]["value"] == 0 and m["llm_errors"]["fails"] > 5
    assert 48 <= m["llm_ttft"]["med"] < 80
    assert 9 <= m["llm_itl"]["med"] < 20
    assert m["llm_tokens"]["count"] == 8 * m["iterations"]["count"]
    assert 80 <= m["llm_e2e"]["med"] < 160
    assert m["llm_tokens_per_s"]["med"] > 40
    assert res.exit_code == 0


def test_llm_mode_against_the_vllm_simulator(tmp_path: Path) -> None:
    from test_vllm_sim import make_lab, start

    from phasegate.lab.procs import stop_pid

    layout, model = make_lab(tmp_path, gpus=1)
    sim = start(layout, model, "--served-model-name", "llama", "--max-model-len", "2048",
                visible="0", name="lt")
    try:
        res = run(_llm_opts("chat"), sim.url)
    finally:
        stop_pid(sim.pid)
    m = res.summary["metrics"]
    assert m["llm_errors"]["value"] == 0
    assert m["llm_ttft"]["p(99)"] is not None and m["llm_tokens"]["count"] > 0
    assert m["llm_itl"]["med"] > 0


@pytest.mark.parametrize(("url", "target"), [
    ("https://api.example.com", Target("api.example.com", 443, "", True)),
    ("https://api.example.com:8443/base/", Target("api.example.com", 8443, "/base", True)),
    ("http://10.1.2.3", Target("10.1.2.3", 80, "", False)),
])
def test_any_http_or_https_target_is_accepted(url: str, target: Target) -> None:
    # parsed only: the tests send load to 127.0.0.1 alone
    assert check_target(url) == target and target.url.startswith(url.split(":")[0])


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:80", "https://"])
def test_other_targets_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        check_target(url)


def test_client_handles_keepalive_chunked_errors_and_timeouts(llm_stub: Running,
                                                             slow: Running) -> None:
    async def go() -> None:
        client = HttpClient(parse_target(llm_stub.url))
        body = b'{"prompt": "x", "stream": true}'
        pieces: list[bytes] = []
        r = await client.request("POST", "/v1/completions", body,
                                 sink=lambda d, t: pieces.append(d))
        assert r.status == 200 and b"".join(pieces).endswith(b"data: [DONE]\n\n")  # chunked
        r2 = await client.request("POST", "/v1/completions", b"{}")
        assert r2.status == 400 and b"bad request" in r2.body  # content-length, same socket
        late = await HttpClient(parse_target(slow.url)).request("GET", "/", timeout_s=0.02)
        assert late.status == 0 and late.error == "request timeout"
        refused = await HttpClient(Target("127.0.0.1", 1)).request("GET", "/")
        assert refused.status == 0 and refused.error
        client.close()
    asyncio.run(go())


def test_client_resends_a_get_when_the_server_closed_the_idle_connection(logs: Path) -> None:
    target = start_target("fast", logs / "short-keepalive.log", "--keep-alive-s", "0.2")

    async def go() -> list[int]:
        client = HttpClient(parse_target(target.url))
        first = await client.request("GET", "/")
        await asyncio.sleep(0.6)  # the server has closed the idle connection meanwhile
        second = await client.request("GET", "/")
        client.close()
        return [first.status, second.status]
    try:
        assert asyncio.run(go()) == [200, 200]
    finally:
        stop_target(target)


STOPPED_BY_SIGNAL = """
import signal, sys, time
from phasegate.loadtest.engine import run
from phasegate.loadtest.options import adhoc_options

class Stop(BaseException):  # what Prefect's TerminationSignal is: not an Exception
    pass

def handler(signum, frame):
    raise Stop(signum)

signal.signal(signal.SIGTERM, handler)
opts = adhoc_options({"executor": "constant-vus", "vus": 2, "duration": "60s"},
                     request={"METHOD": "GET", "PATH": "/"})
print("started", flush=True)
began = time.monotonic()
try:
    run(opts, sys.argv[1])
except Stop as exc:
    print(f"stopped by the caller's handler after {time.monotonic() - began:.1f} s", flush=True)
    # The caller's own handler is back in place once the test is over.
    print("handler restored:", signal.getsignal(signal.SIGTERM) is handler, flush=True)
    sys.exit(3)
print("ran to the end", flush=True)
"""


def test_sigterm_stops_the_test_and_reaches_the_callers_handler(slow: Running) -> None:
    """A SIGTERM mid-test (a worker stopping a cancelled run) ends the test at once and is
    raised by the caller's own handler; the loop neither swallows nor logs it."""
    child = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", STOPPED_BY_SIGNAL, slow.url], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "started\n"
        time.sleep(1.5)  # mid-test: VUs are sending
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == 3, (out, err)
    took = float(out.split("after ")[1].split(" s")[0])
    assert took < 5, out  # 1.5 s of test, then the stop: not the 60 s the test would run
    assert "handler restored: True" in out
    assert "Traceback" not in err and "Exception in callback" not in err, err
