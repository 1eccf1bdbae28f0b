"""The engine over https against local TLS targets signed by a private CA (tests/_tls.py).

Verification fails without the CA and passes with it (`--ca-file` or SSL_CERT_FILE), a
hostname mismatch is named, `--insecure` works and warns, keep-alive connections are reused
over TLS, and percentiles under injected stalls stay within 10 % of the truth, as over plain
HTTP. Loopback only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _targets import Running, answer_at, start_target, stop_target
from _tls import Pki, make_pki

from phasegate.cli.main import main
from phasegate.errors import TlsVerificationFailed
from phasegate.loadtest.engine import TlsOptions, run
from phasegate.loadtest.http import HttpClient, parse_target, tls_context
from phasegate.loadtest.options import adhoc_options
from phasegate.policy.loadtest.scenario import arrival_offsets

GET = {"METHOD": "GET", "PATH": "/"}
EPOCH = time.monotonic()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The private CA and its server certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _start(tmp: pytest.TempPathFactory, mode: str, cert: tuple[Path, Path],
           *args: str) -> Running:
    return start_target(mode, tmp.mktemp("tls") / f"{mode}.log", *args, cert=cert)


@pytest.fixture(scope="module")
def tls_fast(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """https on 127.0.0.1 with a certificate for 127.0.0.1, answering at once."""
    t = _start(tmp_path_factory, "fast", (pki.server_cert, pki.server_key))
    yield t
    stop_target(t)


@pytest.fixture(scope="module")
def tls_elsewhere(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """https on 127.0.0.1 with a valid certificate for another name (elsewhere.test)."""
    t = _start(tmp_path_factory, "fast", (pki.elsewhere_cert, pki.elsewhere_key))
    yield t
    stop_target(t)


@pytest.fixture(scope="module")
def tls_freezing(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """20 ms base, frozen for the last 0.5 s of every 2 s since EPOCH, over https."""
    t = _start(tmp_path_factory, "freeze", (pki.server_cert, pki.server_key), "--epoch",
               repr(EPOCH), "--base-ms", "20", "--every-s", "2", "--freeze-s", "0.5")
    yield t
    stop_target(t)


@pytest.fixture(autouse=True)
def _system_store_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # the private CA reaches the client only where a test hands it over
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def _short() -> object:
    return adhoc_options({"executor": "constant-vus", "vus": 2, "duration": "1s"}, request=GET)


def test_unknown_ca_ends_the_run_before_any_load(tls_fast: Running) -> None:
    t0 = time.monotonic()
    with pytest.raises(TlsVerificationFailed) as err:
        run(_short(), tls_fast.url)  # type: ignore[arg-type]
    message = str(err.value)
    assert f"127.0.0.1:{tls_fast.port}" in message and "\n" not in message
    assert "unable to get local issuer certificate" in message and "system store" in message
    assert time.monotonic() - t0 < 1.0  # no 1 s of failed requests first


def test_ca_file_verifies_and_the_run_passes(tls_fast: Running, pki: Pki) -> None:
    res = run(_short(), tls_fast.url, tls=TlsOptions(ca_file=str(pki.ca)))  # type: ignore[arg-type]
    m = res.summary["metrics"]
    assert res.exit_code == 0 and m["http_req_failed"]["passes"] == 0
    assert m["http_reqs"]["count"] > 100
    assert res.summary["meta"]["target"] == tls_fast.url


def test_ssl_cert_file_is_honoured(tls_fast: Running, pki: Pki,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    res = run(_short(), tls_fast.url)  # type: ignore[arg-type]
    assert res.exit_code == 0 and res.summary["metrics"]["http_req_failed"]["passes"] == 0


def test_hostname_mismatch_is_named(tls_elsewhere: Running, pki: Pki) -> None:
    with pytest.raises(TlsVerificationFailed) as err:
        run(_short(), tls_elsewhere.url, tls=TlsOptions(ca_file=str(pki.ca)))  # type: ignore[arg-type]
    assert "mismatch, certificate is not valid for '127.0.0.1'" in str(err.value)


def test_insecure_skips_verification_and_warns(tls_elsewhere: Running,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="phasegate.loadtest"):
        res = run(_short(), tls_elsewhere.url, tls=TlsOptions(insecure=True))  # type: ignore[arg-type]
    assert res.exit_code == 0 and res.summary["metrics"]["http_req_failed"]["passes"] == 0
    assert "verification is OFF" in caplog.text


def test_keep_alive_connections_are_reused_over_tls(tls_fast: Running, pki: Pki) -> None:
    async def go() -> tuple[list[int], int]:
        client = HttpClient(parse_target(tls_fast.url), ssl_context=tls_context(str(pki.ca)))
        statuses = [(await client.request("GET", "/")).status for _ in range(50)]
        client.close()
        return statuses, client.connects
    statuses, connects = asyncio.run(go())
    assert statuses == [200] * 50 and connects == 1


def test_percentiles_under_stalls_match_the_truth_over_tls(tls_freezing: Running,
                                                           pki: Pki) -> None:
    opts = adhoc_options({"executor": "constant-arrival-rate", "rate": 100, "duration": "4s",
                          "pre_allocated_vus": 80, "max_vus": 200}, request=GET)
    res = run(opts, tls_freezing.url, tls=TlsOptions(ca_file=str(pki.ca)))
    truth = sorted(1000 * (answer_at(res.started + o, EPOCH, 2.0, 0.5, 0.02) - (res.started + o))
                   for o in arrival_offsets(opts.scenarios["adhoc"]))
    d = res.summary["metrics"]["http_req_duration"]
    for p in (95, 99):
        x = p / 100 * (len(truth) - 1)
        lo = int(x)
        exact = truth[lo] + (truth[min(lo + 1, len(truth) - 1)] - truth[lo]) * (x - lo)
        assert d[f"p({p})"] == pytest.approx(exact, rel=0.1)
    assert d["p(95)"] > 5 * 20  # the freezes are not hidden


def _cli(url: str, *extra: str) -> list[str]:
    return ["loadtest", "run", "--target", url, "--executor", "constant-vus", "--vus", "1",
            "--duration", "1s", "--path", "/", "--quiet", *extra]


def test_cli_refused_certificate_is_one_line_exit_1(tls_fast: Running, pki: Pki,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(tls_fast.url)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: TLS to 127.0.0.1:")
    assert "Traceback" not in err
    assert main(_cli(tls_fast.url, "--ca-file", str(pki.ca))) == 0


def test_cli_insecure_prints_a_warning(tls_elsewhere: Running,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(tls_elsewhere.url, "--insecure")) == 0
    assert "warning: --insecure" in capsys.readouterr().err
