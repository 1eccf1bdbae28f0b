"""Which Prefect API a `phasegate` command talks to: one answer for every command.

Prefect's own setting first (PREFECT_API_URL from the environment or the active profile),
else the running lab's server (read from the lab's documented `lab.json`, and only if it
answers). The choice is put in the environment as well as in Prefect's settings context, so
threads (lease renewal) and child processes reach the same API as the command itself.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from phasegate.constants import DEFAULT_LAB_DIR, LAB_DIR_ENV
from phasegate.errors import ConfigError

__all__ = ["lab_dir", "prefect_api", "prefect_api_url", "quiet_console"]

# Prefect's console handler level for the commands that run a flow in this process.
CONSOLE_LEVEL_ENV = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"


def lab_dir(explicit: str | None = None) -> Path:
    """The lab directory: `explicit` (--dir), else $PHASEGATE_LAB, else .lab; absolute."""
    raw = explicit or os.environ.get(LAB_DIR_ENV) or DEFAULT_LAB_DIR
    return Path(raw).expanduser().resolve()


def _lab_api(directory: Path) -> str | None:
    """The lab's Prefect API URL when its lab.json names one and the server answers."""
    try:
        doc = json.loads((directory / "lab.json").read_text())
        url = str(doc["prefect"]["api_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        healthy = httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return None
    return url if healthy else None


def quiet_console() -> None:
    """Show only Prefect's warnings and errors on this terminal (e.g. "waiting for approval"),
    not a line per task run: the command prints its own result. The run's logs still reach
    the Prefect API (the UI) in full. Call it before Prefect is imported, which reads its
    logging setup then; a level the user set in the environment wins."""
    os.environ.setdefault(CONSOLE_LEVEL_ENV, "WARNING")
    # Prefect's queue services say "Still processing items: N items remaining..." at WARNING
    # whenever the process exits with events or logs still queued (they are still sent).
    for service in ("EventsWorker", "APILogWorker"):
        logging.getLogger(service).setLevel(logging.ERROR)


def prefect_api_url(explicit_lab_dir: str | None = None) -> str | None:
    """Prefect's configured API URL, else the running lab's, else None."""
    from prefect.settings import get_current_settings

    configured = get_current_settings().api.url
    return configured or _lab_api(lab_dir(explicit_lab_dir))


@contextmanager
def prefect_api(explicit_lab_dir: str | None = None) -> Iterator[str]:
    """Use that API inside the block (in this thread's settings, for new threads and for
    child processes). Raises ConfigError when there is none."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = prefect_api_url(explicit_lab_dir)
    if url is None:
        raise ConfigError("no Prefect API: set PREFECT_API_URL (or a Prefect profile) or "
                          "start the lab (`phasegate lab up`)")
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
