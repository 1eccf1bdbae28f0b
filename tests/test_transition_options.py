"""The phase-transition's parameters as the Prefect UI shows them, and TransitionOptions."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from phasegate.flows.options import TransitionOptions
from phasegate.flows.phase_transition import phase_transition


def test_the_form_has_the_target_the_plan_and_one_options_section() -> None:
    schema = phase_transition.parameters.model_dump(by_alias=True)
    assert list(schema["properties"]) == ["target_phase", "plan_path", "options"]
    assert schema["properties"]["target_phase"]["default"] is None  # the next phase
    options = schema["properties"]["options"]
    assert options["default"] == json.loads(TransitionOptions().model_dump_json())
    assert schema.get("required", []) == []


def test_defaults_are_productions() -> None:
    opts = TransitionOptions()
    assert (opts.dry_run, opts.load_test_scale) == (False, 1.0)
    # Empty durations mean the plan's own (a 2-hour watch, the plan's approval timeout).
    assert [opts.duration(n) for n in ("watch_duration", "watch_interval",
                                       "watch_min_window", "approval_timeout")] == [None] * 4
    assert opts.reports_dir is None  # the <prefix>-reports Block's directories


@pytest.mark.parametrize(("field", "value", "message"), [
    ("watch_duration", "2x", "watch_duration"),
    ("load_test_scale", 0, "load_test_scale"),
    ("load_test_scale", 2, "load_test_scale"),
    ("cash_usd", -1, "cash_usd"),
    ("watch", "2h", "watch"),          # a misspelt field is refused, never ignored
])
def test_bad_options_are_refused_before_the_run(field: str, value: object,
                                                message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TransitionOptions(**{field: value})


def test_durations_read_as_timedeltas() -> None:
    opts = TransitionOptions(watch_duration="24s", approval_timeout="30m")
    assert opts.duration("watch_duration").total_seconds() == 24  # type: ignore[union-attr]
    assert opts.duration("approval_timeout").total_seconds() == 1800  # type: ignore[union-attr]
