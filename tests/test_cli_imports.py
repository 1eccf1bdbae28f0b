"""The CLI's import budget: `phasegate --help` loads no command module, `plan check` neither
Prefect nor a client library, no flow the Google clients or matplotlib; and the top-level
command table says what the command modules register. Each check runs in a fresh
interpreter, so nothing this test process imported counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from phasegate.cli.main import COMMANDS, build_parser

HEAVY = ("prefect", "google", "pandas", "matplotlib", "psycopg", "paramiko", "redis",
         "prometheus_api_client", "httpx", "pydantic", "yaml", "numpy")


def _loaded_after(code: str) -> set[str]:
    """Top-level packages of HEAVY that `code` leaves in sys.modules, in a fresh python."""
    probe = (f"import sys, json\n{code}\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & "
             f"set({list(HEAVY)!r}))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_help_imports_no_heavy_package() -> None:
    code = ("import contextlib, io\nfrom phasegate.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main(['--help'])")
    assert _loaded_after(code) == set()


def test_main_module_imports_no_heavy_package() -> None:
    assert _loaded_after("import phasegate.cli.main") == set()


def test_plan_check_imports_neither_prefect_nor_clients() -> None:
    code = ("import contextlib, io\nfrom phasegate.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['plan', 'check']) == 0")
    assert _loaded_after(code) & {"prefect", "google", "pandas", "matplotlib", "psycopg",
                                  "paramiko", "redis", "prometheus_api_client", "httpx"} == set()


def test_flows_import_no_google_client_nor_matplotlib() -> None:
    code = "\n".join(f"import phasegate.flows.{m}" for m in
                     ("phase_transition", "trigger_check", "capacity_forecast", "rollback",
                      "smoke"))
    assert _loaded_after(code) & {"google", "matplotlib", "pandas"} == set()


def _choices(parser: object) -> dict[str, str]:
    sub = next(a for a in parser._actions if a.dest == "command")  # type: ignore[attr-defined]
    return {a.dest: a.help for a in sub._choices_actions}


def test_command_table_is_what_the_modules_register() -> None:
    registered = _choices(build_parser())
    assert registered == {name: help_line for name, (_, help_line) in COMMANDS.items()}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_chosen_command_gets_its_full_parser(name: str) -> None:
    parser = build_parser([name])
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices[name]._actions[1:], f"{name} has no arguments of its own"
