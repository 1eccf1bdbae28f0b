"""blocks.estate: the estate file becomes Blocks; no secret may be written in it. No server."""

from __future__ import annotations

from pathlib import Path

import pytest

from phasegate.blocks.estate import describe, estate_blocks
from phasegate.blocks.systems import GpuHost, PostgresConnection
from phasegate.errors import ConfigError


def _no_prompt(label: str) -> str:
    raise AssertionError(f"unexpected prompt {label}")


def test_references_resolve_and_secrets_never_show(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    monkeypatch.setenv("PG_PW", "s3cret-pw")
    doc = {"postgres": {"host": "db.internal", "user": "phasegate", "sslmode": "require",
                        "password": {"env": "PG_PW"}},
           "gpu_hosts": {"gpu-1": {"host": "10.0.0.11", "user": "deploy",
                                   "private_key": {"file": str(key)},
                                   "known_hosts": "10.0.0.11 ssh-ed25519 AAAA"}},
           "notifications": {"kind": "slack", "url": {"prompt": True}}}
    entries = estate_blocks(doc, "prod", lambda label: "https://hooks.slack.com/services/T/B/x")
    by_name = {e.name: e for e in entries}
    pg = by_name["prod-postgres"].block
    assert isinstance(pg, PostgresConnection) and pg.password is not None
    assert pg.password.get_secret_value() == "s3cret-pw" and pg.sslmode == "require"
    host = by_name["prod-gpu-1"].block
    assert isinstance(host, GpuHost) and host.name == "gpu-1"
    assert host.private_key.get_secret_value().startswith("-----BEGIN OPENSSH")
    assert by_name["prod-notifications"].ref == "slack-webhook/prod-notifications"
    shown = "\n".join(describe(e) for e in entries)
    assert "s3cret-pw" not in shown and "hooks.slack.com" not in shown and "abc" not in shown
    assert "password<-env:PG_PW" in shown and "url<-prompt" in shown


def test_a_literal_secret_is_refused() -> None:
    doc = {"redis": {"host": "cache", "password": "hunter2"}}
    with pytest.raises(ConfigError, match=r"prod-redis.password is a secret: give it as "
                       r"\{env: NAME\}"):
        estate_blocks(doc, "prod", _no_prompt)


def test_mistakes_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown systems in the estate file: grafana"):
        estate_blocks({"grafana": {}}, "prod", _no_prompt)
    with pytest.raises(ConfigError, match="environment variable NOPE_UNSET is not set"):
        estate_blocks({"prometheus": {"url": "https://p", "bearer_token": {"env": "NOPE_UNSET"}}},
                      "prod", _no_prompt)
    with pytest.raises(ConfigError, match=r"prod-postgres \(PostgresConnection\): user: "):
        estate_blocks({"postgres": {"host": "db"}}, "prod", _no_prompt)
    with pytest.raises(ConfigError, match="notifications.kind must be one of"):
        estate_blocks({"notifications": {"kind": "pager", "url": "x"}}, "prod", _no_prompt)


def test_secret_fields_are_found_from_the_block_types() -> None:
    doc = {"gcp": {"project": "p", "cloud_run_service": "api",
                   "service_account_info": '{"type": "service_account"}'}}
    with pytest.raises(ConfigError, match="prod-gcp.service_account_info is a secret"):
        estate_blocks(doc, "prod", _no_prompt)


def test_the_documented_example_is_valid(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    from phasegate.blocks.estate import read_estate

    doc = read_estate(Path(__file__).parent.parent / "docs" / "estate.example.yaml")
    for name in ("PHASEGATE_PG_PASSWORD", "PHASEGATE_REDIS_PASSWORD",
                 "PHASEGATE_PROMETHEUS_TOKEN", "PHASEGATE_SLACK_WEBHOOK_URL"):
        monkeypatch.setenv(name, "x")
    files = {"/etc/phasegate/phasegate-sa.json": '{"type": "service_account"}',
             "/etc/phasegate/ssh/id_ed25519": "key", "/etc/phasegate/ssh/known_hosts": "h"}
    for key, fields in [("gcp", doc["gcp"]), *((h, f) for h, f in doc["gpu_hosts"].items())]:
        for field, value in fields.items():
            if isinstance(value, dict) and "file" in value:
                path = tmp_path / f"{key}-{field}"
                path.write_text(files[value["file"]])
                fields[field] = {"file": str(path)}
    names = [e.name for e in estate_blocks(doc, doc["prefix"], _no_prompt)]
    assert names == ["prod-postgres", "prod-redis", "prod-prometheus", "prod-alertmanager",
                     "prod-api", "prod-gcp", "prod-reports", "prod-gpu-1", "prod-gpu-2",
                     "prod-notifications"]
