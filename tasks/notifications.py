"""Notifications through a Prefect notification Block (Slack in production; the lab's
receiver via a generic webhook). Secrets stay inside the Block."""

from __future__ import annotations

from typing import cast

from prefect import task
from prefect.blocks.core import Block
from prefect.blocks.notifications import NotificationBlock

__all__ = ["send_notification"]


@task
def send_notification(block_ref: str, subject: str, body: str) -> None:
    """Send `body` through the notification Block `block_ref` ("<block-type-slug>/<name>",
    e.g. "slack-webhook/phasegate-alerts"). Not retried: a repeated send is a duplicate
    message; the caller records whether it went out."""
    block = cast(NotificationBlock, Block.load(block_ref))
    _ = block.notify(body=body, subject=subject)  # sync_compatible: synchronous in a task
