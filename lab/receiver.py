"""Webhook receiver: the lab's Slack and Alertmanager webhook endpoints.

`python -m lab.receiver --port P --lab-dir D`

- POST /slack/<anything>: a Slack incoming webhook. Like Slack it answers 200 "ok", 400
  "invalid_payload" for a body that is not a JSON object and 400 "no_text" without text/blocks.
- POST /alertmanager: Alertmanager's webhook (JSON object with version, status, alerts).
- POST /hook/<name>: anything (JSON or text), stored under channel <name>.
- GET /messages?channel=slack: the stored messages as a JSON list.

Each accepted request appends one line {received_at, path, body} to `<lab>/inbox/<channel>.jsonl`
under an exclusive flock, so lines never interleave even with several writers.
`read_inbox(layout, channel)` reads them back.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from phasegate.lab.layout import LabLayout

__all__ = ["append_message", "channel_for", "inbox_file", "main", "read_inbox"]

log = logging.getLogger("phasegate.lab.receiver")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_BODY = 1024 * 1024


class Rejected(Exception):
    """A request the real endpoint would refuse: HTTP status and body text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def inbox_file(layout: LabLayout, channel: str) -> Path:
    """`<lab>/inbox/<channel>.jsonl`; ValueError for a channel name that is not a plain word."""
    if not CHANNEL_RE.match(channel):
        raise ValueError(f"invalid channel name {channel!r}")
    return layout.inbox_dir / f"{channel}.jsonl"


def channel_for(path: str) -> str | None:
    """The channel a POST path stores into (slack, alertmanager or the hook name), or None."""
    if path.startswith("/slack/") and len(path) > len("/slack/"):
        return "slack"
    if path.rstrip("/") == "/alertmanager":
        return "alertmanager"
    if path.startswith("/hook/"):
        name = path[len("/hook/"):].strip("/")
        return name if CHANNEL_RE.match(name) else None
    return None


def append_message(layout: LabLayout, channel: str, path: str, body: Any) -> dict[str, Any]:
    """Append one {received_at, path, body} line to the channel's inbox; return the record."""
    record = {"received_at": time.time(), "path": path, "body": body}
    line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode()
    target = inbox_file(layout, channel)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return record


def read_inbox(layout: LabLayout, channel: str) -> list[dict[str, Any]]:
    """Every message stored for `channel`, oldest first ([] when none); torn lines skipped."""
    try:
        text = inbox_file(layout, channel).read_text()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _parse_body(channel: str, raw: bytes) -> Any:
    """The stored body: JSON when it parses (required for slack/alertmanager), else text."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if channel == "slack":
        if not isinstance(data, dict):
            raise Rejected(400, "invalid_payload")
        if not data.get("text") and not data.get("blocks"):
            raise Rejected(400, "no_text")
        return data
    if channel == "alertmanager":
        if not isinstance(data, dict) or not isinstance(data.get("alerts"), list):
            raise Rejected(400, "invalid alertmanager payload")
        return data
    return data if data is not None else raw.decode("utf-8", "replace")


class Receiver:
    """The ASGI app; single event loop plus flock, so appends are whole lines."""

    def __init__(self, layout: LabLayout) -> None:
        self.layout = layout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, body, ctype = await self._handle(scope, receive)
        except Rejected as exc:
            status, body, ctype = exc.status, exc.text.encode(), "text/plain"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, str]:
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/healthz":
            return 200, b"ok", "text/plain"
        if method == "GET" and path == "/messages":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            channel = query.get("channel", [""])[0]
            if not CHANNEL_RE.match(channel):
                raise Rejected(400, "query parameter 'channel' is required")
            body = json.dumps(read_inbox(self.layout, channel), ensure_ascii=False)
            return 200, body.encode(), "application/json"
        channel = channel_for(path)
        if channel is None:
            raise Rejected(404, "not found")
        if method != "POST":
            raise Rejected(405, "method not allowed")
        data = _parse_body(channel, await _read_body(receive))
        append_message(self.layout, channel, path, data)
        log.info("stored %s message from %s", channel, path)
        return 200, b"ok", "text/plain"


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if len(body) > MAX_BODY:
            raise Rejected(413, "request body too large")
        if not msg.get("more_body"):
            return body


def main(argv: list[str] | None = None) -> None:
    """Serve the webhook endpoints on 127.0.0.1 until SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(prog="python -m lab.receiver",
                                description="Slack/Alertmanager webhook receiver for the lab")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lab-dir", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    layout = LabLayout(Path(args.lab_dir).resolve())
    layout.inbox_dir.mkdir(parents=True, exist_ok=True)
    log.info("receiver on 127.0.0.1:%d, inbox %s", args.port, layout.inbox_dir)
    uvicorn.run(Receiver(layout), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", lifespan="off", access_log=False, log_level="warning",
                timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
