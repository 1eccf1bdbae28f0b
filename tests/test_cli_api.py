"""phasegate.cli.api: which Prefect API a command uses, against a real local HTTP server."""

from __future__ import annotations

import contextvars
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from phasegate.cli.api import prefect_api, prefect_api_url
from phasegate.errors import ConfigError
from phasegate.lab.procs import free_port


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def prefect_like() -> Iterator[str]:
    """A server answering /api/health like Prefect's; its API URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def _lab(tmp_path: Path, api_url: str) -> str:
    (tmp_path / "lab.json").write_text(json.dumps({"prefect": {"api_url": api_url}}))
    return str(tmp_path)


def test_prefects_own_setting_comes_first(tmp_path: Path, prefect_like: str) -> None:
    with temporary_settings(updates={PREFECT_API_URL: "https://prefect.example/api"}):
        assert prefect_api_url(_lab(tmp_path, prefect_like)) == "https://prefect.example/api"


def test_else_the_running_labs_server(tmp_path: Path, prefect_like: str) -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert prefect_api_url(_lab(tmp_path, prefect_like)) == prefect_like


def test_a_lab_whose_server_is_gone_or_absent_gives_none(tmp_path: Path) -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert prefect_api_url(_lab(tmp_path, f"http://127.0.0.1:{free_port()}/api")) is None
        assert prefect_api_url(str(tmp_path / "nothing-here")) is None
        with pytest.raises(ConfigError, match="no Prefect API"), \
                prefect_api(str(tmp_path / "nothing-here")):
            pass


def test_threads_and_child_processes_see_the_same_api(tmp_path: Path, prefect_like: str) -> None:
    before = os.environ.get("PREFECT_API_URL")
    seen: dict[str, str | None] = {}
    def look() -> None:
        from prefect.settings import get_current_settings

        seen["thread"] = get_current_settings().api.url

    with temporary_settings(restore_defaults={PREFECT_API_URL}), \
            prefect_api(_lab(tmp_path, prefect_like)) as url:
        # Prefect's settings live in context variables: a thread runs in a copy of them (as
        # tasks.transitions.keep_slot's lease renewal does); a child process reads the env.
        t = threading.Thread(target=contextvars.copy_context().run, args=(look,))
        t.start()
        t.join(10)
        seen["env"] = os.environ.get("PREFECT_API_URL")
    assert seen == {"thread": url, "env": url} and url == prefect_like
    assert os.environ.get("PREFECT_API_URL") == before
