"""Product code (policy/, tasks/, flows/, blocks/) holds no name of the lab's estate: no app
table, no Prometheus job label, no mount point or network device. Those come from the plan (with
the seed's defaults) or are discovered; the lab's names may appear in comments only."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("policy", "tasks", "flows", "blocks")

# lab/app_schema.sql's tables: names no product module has another reason to spell
TABLES = ("payments", "subscriptions", "infra_costs", "nps_responses", "daily_active_users",
          "marketing_spend", "enterprise_inquiries", "user_sessions")
# tables whose names are ordinary words (the plan's `users`, the seed's "feedback" group):
# found only where SQL names a table
WORD_TABLES = ("users", "feedback", "questions")
_SQL_TABLE = re.compile(r"\b(?:from|join|into|update|table|truncate)\s+(?:public\.)?\"?("
                        + "|".join(WORD_TABLES) + r")\b", re.I)
_DISTINCT = re.compile(r"\b(" + "|".join(TABLES) + r")\b")
_JOB = re.compile(r"""\bjob\s*(?:=~?|!=|!~)\s*\\?["']""")
_PLACES = re.compile(r"/var/lib/postgresql|\b(?:mountpoint|device)\s*=~?\s*\\?[\"']"
                     r"|\b(?:eth\d|ens\d+|enp\d+s\d+)\b")


def _code_tokens(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every token but comments: names, strings, docstrings included."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [(t.start[0], t.string) for t in tokens
            if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)]


def lab_names(path: Path) -> list[str]:
    """'file:line: text' for every lab-specific name outside comments."""
    hits = []
    tokens = _code_tokens(path)
    for index, (line, text) in enumerate(tokens):
        after = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if text in ('"job"', "'job'") and after == ":":  # a label dict {"job": ...}
            hits.append(f"{path}:{line}: {text}")
        for pattern in (_DISTINCT, _SQL_TABLE, _JOB, _PLACES):
            match = pattern.search(text)
            if match:
                hits.append(f"{path}:{line}: {match.group(0)!r}")
    return hits


def product_files() -> list[Path]:
    return sorted(p for d in PRODUCT for p in (REPO / d).rglob("*.py"))


def test_product_code_names_no_lab_table_job_mount_or_device() -> None:
    files = product_files()
    assert len(files) > 30
    hits = [h for f in files for h in lab_names(f)]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("code", [
    'q = "SELECT count(*) FROM payments"',
    'q = "SELECT 1 FROM public.users WHERE true"',
    'q = \'sum(rate(x{job="api-server"}[5m]))\'',
    'labels = {"job": "node"}',
    'm = \'node_filesystem_avail_bytes{mountpoint="/data"}\'',
    'dev = "eth0"',
    'def f():\n    """Counts subscriptions."""\n',
])
def test_the_check_finds_what_it_looks_for(tmp_path: Path, code: str) -> None:
    path = tmp_path / "module.py"
    path.write_text(code + "\n")
    assert lab_names(path)


def test_comments_and_ordinary_words_pass(tmp_path: Path) -> None:
    path = tmp_path / "module.py"
    path.write_text('# SELECT * FROM payments, job="api"\nusers = 3\ngroup = "feedback"\n')
    assert lab_names(path) == []
