"""Notifications through a Prefect notification Block (Slack in production; the lab's
receiver via a generic webhook). Secrets stay inside the Block."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

from prefect import task
from prefect.blocks.core import Block
from prefect.blocks.notifications import NotificationBlock

__all__ = ["describe_notifications", "send_notification"]


@task(timeout_seconds=60)
def send_notification(block_ref: str, subject: str, body: str) -> None:
    """Send `body` through the notification Block `block_ref` ("<block-type-slug>/<name>",
    e.g. "slack-webhook/phasegate-alerts"). Not retried: a repeated send is a duplicate
    message; the caller records whether it went out."""
    block = cast(NotificationBlock, Block.load(block_ref))
    _ = block.notify(body=body, subject=subject)  # sync_compatible: synchronous in a task


def describe_notifications(block_ref: str) -> str:
    """The preflight's check: the Block loads and points at a webhook. Sends nothing; shows
    only the URL's scheme and host (a Slack webhook's path is its secret)."""
    block = Block.load(block_ref)
    raw: Any = getattr(block, "url", None)
    url = raw.get_secret_value() if hasattr(raw, "get_secret_value") else raw
    if not url:
        raise ValueError(f"notification Block {block_ref} has no webhook URL")
    parts = urlsplit(str(url))
    return f"{type(block).__name__} -> {parts.scheme}://{parts.hostname}"
