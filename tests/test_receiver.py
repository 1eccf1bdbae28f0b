"""lab.receiver: Slack / Alertmanager / generic webhooks stored as JSON lines in the inbox."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import _services as svc  # tests/ has no __init__.py: pytest puts tests/ itself on sys.path
import pytest

from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, pid_alive, stop_pid
from phasegate.lab.receiver import append_message, channel_for, read_inbox

ALERT = {"version": "4", "status": "firing", "receiver": "slack", "groupKey": "{}:{}",
         "commonLabels": {"alertname": "HighGPUUtilization"},
         "alerts": [{"status": "firing", "labels": {"alertname": "HighGPUUtilization"},
                     "annotations": {"summary": "GPU > 85%"}, "startsAt": "2026-01-01T00:00:00Z"}]}


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabLayout, str, int]]:
    layout = LabLayout(tmp_path_factory.mktemp("lab"))
    layout.ensure()
    port = free_port()
    pid = svc.start_module("phasegate.lab.receiver",
                           ["--port", str(port), "--lab-dir", str(layout.root)],
                           layout.logs_dir / "receiver.log", port=port)
    try:
        yield layout, f"http://127.0.0.1:{port}", pid
    finally:
        stop_pid(pid)


def test_slack_message_is_stored_and_listed(receiver: tuple[LabLayout, str, int]) -> None:
    layout, url, _ = receiver
    msg = {"text": "Phase 2 approved", "blocks": [{"type": "section",
                                                   "text": {"type": "mrkdwn", "text": "*ok*"}}]}
    assert svc.http_request("POST", url + "/slack/T000/B000/XXXX", msg) == (200, b"ok")
    status, body = svc.http_get(url + "/messages?channel=slack")
    listed = json.loads(body)
    assert status == 200 and listed[-1]["body"] == msg
    assert listed[-1]["path"] == "/slack/T000/B000/XXXX"
    assert read_inbox(layout, "slack")[-1]["body"] == msg
    assert abs(listed[-1]["received_at"] - time.time()) < 60


def test_slack_rejects_what_slack_rejects(receiver: tuple[LabLayout, str, int]) -> None:
    layout, url, _ = receiver
    before = len(read_inbox(layout, "slack"))
    assert svc.http_request("POST", url + "/slack/x", raw=b"not json") == (400, b"invalid_payload")
    assert svc.http_request("POST", url + "/slack/x", {"username": "bot"}) == (400, b"no_text")
    assert len(read_inbox(layout, "slack")) == before


def test_alertmanager_and_hooks(receiver: tuple[LabLayout, str, int]) -> None:
    layout, url, _ = receiver
    assert svc.http_request("POST", url + "/alertmanager", ALERT) == (200, b"ok")
    assert read_inbox(layout, "alertmanager")[-1]["body"] == ALERT
    assert svc.http_request("POST", url + "/alertmanager", {"x": 1})[0] == 400
    assert svc.http_request("POST", url + "/hook/deploys", raw=b"plain text") == (200, b"ok")
    assert read_inbox(layout, "deploys")[-1]["body"] == "plain text"
    assert svc.http_request("POST", url + "/hook/../etc")[0] == 404
    assert svc.http_get(url + "/nothing")[0] == 404
    assert svc.http_get(url + "/messages")[0] == 400
    assert svc.http_get(url + "/messages?channel=empty") == (200, b"[]")


def test_concurrent_posts_never_interleave(receiver: tuple[LabLayout, str, int]) -> None:
    layout, url, _ = receiver
    big = "가" * 20_000

    def post(i: int) -> int:
        return svc.http_request("POST", url + "/hook/burst", {"i": i, "pad": big})[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(post, range(40))) == {200}
    append_message(layout, "burst", "/local", {"i": 40, "pad": big})  # a second writer
    lines = (layout.inbox_dir / "burst.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["body"]["i"] for line in lines) == list(range(41))


def test_channel_mapping() -> None:
    assert channel_for("/slack/T/B/X") == "slack"
    assert channel_for("/alertmanager") == "alertmanager"
    assert channel_for("/hook/ops") == "ops"
    assert channel_for("/slack/") is None and channel_for("/hook/a/b") is None


def test_exits_on_sigterm(receiver: tuple[LabLayout, str, int]) -> None:
    _, _, pid = receiver
    start = time.monotonic()
    assert stop_pid(pid, timeout=2)
    assert time.monotonic() - start < 2 and not pid_alive(pid)
