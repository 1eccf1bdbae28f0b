"""`lab up` / `down` / `up` again in one directory: data kept, nothing left behind, a second
`up` while running refused. Its own small lab (no Prefect server, three weeks of history)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from conftest import processes_mentioning

from phasegate.errors import LabError
from phasegate.lab.layout import LabLayout
from phasegate.lab.supervisor import UpOptions, down, status, up

OPTS = UpOptions(prefect=False, history_days=21, traffic_rate=0.0, vllm_load_seconds=0.5)


def test_data_survives_down_and_up_and_down_leaves_nothing(tmp_path: Path) -> None:
    layout = LabLayout(tmp_path / "lab")
    doc = up(layout, OPTS)
    marks = [doc["dir"], doc["postgres"]["data_dir"]]
    try:
        with psycopg.connect(doc["postgres"]["state_dsn"], autocommit=True) as conn:
            conn.execute("INSERT INTO audit_log (actor, action) VALUES ('test', 'marker')")
        with pytest.raises(LabError, match="already running"):
            up(layout, OPTS)
        down(layout)
        assert not processes_mentioning(marks)
        assert not any(status(layout)["running"].values())
        again = up(layout, OPTS)
        with psycopg.connect(again["postgres"]["state_dsn"]) as conn:
            actions = [r[0] for r in conn.execute("SELECT action FROM audit_log")]
        assert actions == ["marker"]
        assert again["containers"], "the recorded vLLM container runs again"
    finally:
        down(layout, purge=True)
    assert not processes_mentioning(marks)
    assert not layout.root.exists() and not Path(doc["postgres"]["data_dir"]).exists()


def test_options_are_validated() -> None:
    with pytest.raises(LabError, match="history_days must be >= 21"):
        UpOptions(history_days=3)
