"""k6 scenarios: parsing (k6 spellings, every bad field named), schedules against closed forms,
durations as k6 counts them, time scaling. Pure and fast."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from phasegate.errors import PlanError
from phasegate.policy.loadtest.scenario import (
    ConstantArrivalRate,
    ConstantVus,
    Options,
    RampingArrivalRate,
    RampingVus,
    arrival_offsets,
    duration_s,
    parse_options,
    rate_at,
    run_duration_s,
    scaled,
    vus_at,
)
from phasegate.policy.plan import load_plan


def _one(scenario: dict[str, Any], thresholds: dict[str, Any] | None = None) -> Any:
    options = parse_options({"scenarios": {"s": scenario}, "thresholds": thresholds or {}})
    return options.scenarios["s"]


def _problems(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(PlanError) as info:
        parse_options(data)
    return info.value.problems


CAR = {"executor": "constant-arrival-rate", "rate": 200, "duration": "15s",
       "preAllocatedVUs": 10}
RAR = {"executor": "ramping-arrival-rate", "preAllocatedVUs": 10,
       "stages": [{"duration": "10s", "target": 100}]}
PHASE2 = {"executor": "ramping-vus", "startVUs": 0, "stages": [
    {"duration": "2m", "target": 500}, {"duration": "5m", "target": 500},
    {"duration": "2m", "target": 0}]}


# ---------------------------------------------------------------- parsing

def test_k6_spellings_and_defaults() -> None:
    car = _one({**CAR, "timeUnit": "1m", "startTime": "5s", "gracefulStop": "0s",
                "tags": {"phase": 2}, "exec": "llm"})
    assert isinstance(car, ConstantArrivalRate)
    assert (car.time_unit, car.start_time, car.graceful_stop) == (
        timedelta(minutes=1), timedelta(seconds=5), timedelta(0))
    assert (car.pre_allocated_vus, car.max_vus) == (10, 10)  # maxVUs defaults to preAllocated
    assert car.tags == {"phase": "2"} and car.exec == "llm"
    rvu = _one({"executor": "ramping-vus", "stages": [{"duration": "1m", "target": 5}]})
    assert isinstance(rvu, RampingVus)
    # k6's defaults: startVUs 1, gracefulRampDown 30s, gracefulStop 30s, exec our journey
    assert (rvu.start_vus, rvu.graceful_ramp_down, rvu.graceful_stop, rvu.exec) == (
        1, timedelta(seconds=30), timedelta(seconds=30), "journey")
    rar = _one({**RAR, "startRate": 5, "maxVUs": 50, "preAllocatedVUs": 1})
    assert isinstance(rar, RampingArrivalRate) and (rar.start_rate, rar.max_vus) == (5, 50)
    snake = _one({"executor": "constant-vus", "vus": 3, "duration": "1m",
                  "graceful_stop": "10s", "start_time": "1s"})
    assert isinstance(snake, ConstantVus) and snake.graceful_stop == timedelta(seconds=10)


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("negative vus", {"executor": "constant-vus", "vus": -1, "duration": "1m"},
     "scenarios.s.vus", "greater than 0"),
    ("zero vus", {"executor": "constant-vus", "vus": 0, "duration": "1m"},
     "scenarios.s.vus", "greater than 0"),
    ("zero duration", {"executor": "constant-vus", "duration": "0s"},
     "scenarios.s.duration", "must be longer than 0s"),
    ("bad duration", {"executor": "constant-vus", "duration": "5 minutes"},
     "scenarios.s.duration", "cannot parse duration"),
    ("bare number duration", {"executor": "constant-vus", "duration": 300},
     "scenarios.s.duration", "expected a duration string"),
    ("missing duration", {"executor": "constant-vus"},
     "scenarios.s.duration", "required key is missing"),
    ("unknown key", {"executor": "constant-vus", "duration": "1m", "iterations": 3},
     "scenarios.s.iterations", "unknown key"),
    ("unknown executor", {"executor": "shared-iterations"},
     "scenarios.s", "unknown executor 'shared-iterations'"),
    ("no executor", {"duration": "1m"}, "scenarios.s", "required key executor is missing"),
    ("stages empty", {"executor": "ramping-vus", "stages": []},
     "scenarios.s.stages", "at least 1 item"),
    ("all targets 0", {"executor": "ramping-vus", "startVUs": 0,
                       "stages": [{"duration": "1m", "target": 0}]},
     "scenarios.s.stages", "either start_vus or one stage's target must be above 0"),
    ("stages of 0s", {"executor": "ramping-vus", "stages": [{"duration": "0s", "target": 5}]},
     "scenarios.s.stages", "the stages last 0s in total"),
    ("negative stage target", {"executor": "ramping-vus",
                               "stages": [{"duration": "1m", "target": -5}]},
     "scenarios.s.stages[0].target", "greater than or equal to 0"),
    ("negative startVUs", {"executor": "ramping-vus", "startVUs": -1,
                           "stages": [{"duration": "1m", "target": 5}]},
     "scenarios.s.startVUs", "greater than or equal to 0"),
    ("rate 0", {**CAR, "rate": 0}, "scenarios.s.rate", "greater than 0"),
    ("rate 0 with no stages", {**RAR, "stages": [{"duration": "10s", "target": 0}]},
     "scenarios.s.stages", "either start_rate or one stage's target must be above 0"),
    ("max < preallocated", {**CAR, "maxVUs": 5},
     "scenarios.s.max_vus", "5 is less than pre_allocated_vus (10)"),
    ("missing preAllocatedVUs", {"executor": "constant-arrival-rate", "rate": 1,
                                 "duration": "1m"},
     "scenarios.s.pre_allocated_vus", "required key is missing"),
    ("zero timeUnit", {**CAR, "timeUnit": "0s"}, "scenarios.s.timeUnit", "longer than 0s"),
    ("bad gracefulStop", {**CAR, "gracefulStop": "-1s"},
     "scenarios.s.gracefulStop", "cannot parse duration"),
    ("unknown exec", {**CAR, "exec": "default"}, "scenarios.s.exec", "got 'default'"),
]


@pytest.mark.parametrize(("scenario", "path", "reason"), [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_scenario_names_the_field(scenario: dict[str, Any], path: str, reason: str) -> None:
    problems = _problems({"scenarios": {"s": scenario}})
    assert any(p == path and reason in r for p, r in problems), problems


def test_every_problem_at_once_with_thresholds() -> None:
    problems = _problems({
        "scenarios": {"a": {"executor": "constant-vus", "vus": 0, "duration": "1m"},
                      "b c": {"executor": "constant-vus", "duration": "1m"}},
        "thresholds": {"http_req_duration": ["p95<300"],
                       "errors": [{"threshold": "rate<0.01", "abortOnFail": "maybe"}]},
        "vus": 10,
    })
    paths = {p for p, _ in problems}
    assert {"scenarios.a.vus", "scenarios.b c", 'thresholds["http_req_duration"]',
            'thresholds["errors"]', "vus"} <= paths, problems


@pytest.mark.parametrize("data", [[], {"scenarios": {}}, {"thresholds": {}}])
def test_options_need_scenarios(data: Any) -> None:
    assert _problems(data)


def test_options_keep_thresholds_and_parse_them() -> None:
    options = parse_options({"scenarios": {"p": CAR}, "thresholds": {
        "http_req_duration{scenario:p}": ["p(95)<300", {"threshold": "p(99)<900",
                                                         "abortOnFail": True,
                                                         "delayAbortEval": "10s"}]}})
    parsed = options.parsed_thresholds()
    assert [t.expression for t in parsed] == ["p(95)<300", "p(99)<900"]
    assert parsed[1].abort_on_fail and parsed[1].delay_abort_eval_s == 10
    assert parsed[0].tag_filter == {"scenario": "p"}


# ---------------------------------------------------------------- schedules

def test_constant_rate_200_per_s_for_15s() -> None:
    offsets = np.fromiter(arrival_offsets(_one(CAR)), float)
    assert len(offsets) == 3001  # k6 1.1 also starts one at the end (measured)
    assert offsets[0] == 0 and offsets[-1] == pytest.approx(15.0)
    assert np.allclose(np.diff(offsets), 0.005)


def test_ramp_0_to_100_per_s_over_10s_is_sqrt_spaced() -> None:
    # rate(t) = 10 t, so the count by t is 5 t^2: iteration i starts at sqrt(i / 5)
    offsets = np.fromiter(arrival_offsets(_one(RAR)), float)
    assert len(offsets) == 500
    assert np.allclose(offsets, np.sqrt(np.arange(1, 501) / 5), rtol=1e-12, atol=1e-12)
    assert offsets[-1] == pytest.approx(10.0)


def test_time_unit_one_minute() -> None:
    per_minute = _one({**CAR, "rate": 60, "timeUnit": "1m", "duration": "1m"})
    offsets = list(arrival_offsets(per_minute))
    assert len(offsets) == 61 and offsets[:3] == pytest.approx([0, 1, 2])
    assert rate_at(per_minute, 30) == pytest.approx(1.0)
    ramp = _one({**RAR, "timeUnit": "1m", "stages": [{"duration": "1m", "target": 120}]})
    assert rate_at(ramp, 30) == pytest.approx(1.0)  # 60/min halfway = 1/s
    assert len(list(arrival_offsets(ramp))) == 60   # integral of 2t/60 over 60s


def test_multi_stage_ramp_matches_the_integral() -> None:
    # 10/s for 5s (50), ramp 10 -> 30/s over 10s (200), flat 30/s 2s (60), down to 0 in 4s (60)
    ramp = _one({**RAR, "startRate": 10, "stages": [
        {"duration": "5s", "target": 10}, {"duration": "10s", "target": 30},
        {"duration": "2s", "target": 30}, {"duration": "0s", "target": 0},
        {"duration": "4s", "target": 0}, {"duration": "0s", "target": 30},
        {"duration": "4s", "target": 0}]})
    offsets = np.fromiter(arrival_offsets(ramp), float)
    assert len(offsets) == 50 + 200 + 60 + 60
    assert np.all(np.diff(offsets) > 0)

    def cumulative(t: float) -> float:  # closed form of the integral of the rate
        if t <= 5:
            return 10 * t
        if t <= 15:
            return 50 + 10 * (t - 5) + (t - 5) ** 2
        if t <= 17:
            return 250 + 30 * (t - 15)
        if t <= 21:
            return 310
        return 310 + 30 * (t - 21) - 3.75 * (t - 21) ** 2

    assert np.allclose([cumulative(t) for t in offsets], np.arange(1, len(offsets) + 1))
    assert not np.any((offsets > 17) & (offsets < 21))  # a 0/s stretch starts nothing


@pytest.mark.parametrize(("t", "rate"), [(-1, 0), (0, 0), (2.5, 25), (9.99, 99.9), (10, 0)])
def test_rate_at(t: float, rate: float) -> None:
    assert rate_at(_one(RAR), t) == pytest.approx(rate)


# The seed's phase 2: 0 -> 500 VUs over 2m (one more every 0.24 s), 5m at 500, 2m down to 0.
@pytest.mark.parametrize(("t", "vus"), [
    (-1, 0), (0, 0), (0.2399, 0), (0.24, 1), (0.48, 2), (60, 250), (119.99, 499), (120, 500),
    (300, 500), (420, 500), (420.2399, 500), (420.24, 499), (480, 250), (539.99, 1), (540, 0),
])
def test_phase2_vu_curve(t: float, vus: int) -> None:
    assert vus_at(_one(PHASE2), t) == vus


def test_vu_curve_jumps_and_constant() -> None:
    jump = _one({"executor": "ramping-vus", "startVUs": 2, "stages": [
        {"duration": "0s", "target": 10}, {"duration": "10s", "target": 10}]})
    assert [vus_at(jump, t) for t in (0, 5, 9.99, 10)] == [10, 10, 10, 0]
    constant = _one({"executor": "constant-vus", "vus": 7, "duration": "1m"})
    assert [vus_at(constant, t) for t in (-0.1, 0, 59.9, 60)] == [0, 7, 7, 0]


def test_the_plans_phase_curves_peak_at_their_targets() -> None:
    plan = load_plan()
    for number, peak in ((1, 100), (2, 500), (3, 3000)):
        scenario = plan.phase(number).load_test.scenario
        samples = [vus_at(scenario, t) for t in range(0, 1300)]
        assert max(samples) == peak == scenario.max_vus


def test_schedules_refuse_the_other_executor_family() -> None:
    with pytest.raises(TypeError):
        vus_at(_one(CAR), 1)
    with pytest.raises(TypeError):
        rate_at(_one(PHASE2), 1)
    with pytest.raises(TypeError):
        arrival_offsets(_one(PHASE2))


# ---------------------------------------------------------------- durations and scaling

@pytest.mark.parametrize(("scenario", "graceful", "plain"), [
    (PHASE2, 570, 540),                                      # 9m + gracefulStop 30s
    ({**CAR, "gracefulStop": "5s"}, 20, 15),
    ({**RAR, "gracefulStop": "0s"}, 10, 10),
    ({"executor": "constant-vus", "vus": 1, "duration": "5m"}, 330, 300),
])
def test_duration_s_counts_graceful_stop(scenario: dict[str, Any], graceful: float,
                                         plain: float) -> None:
    parsed = _one(scenario)
    assert duration_s(parsed) == graceful
    assert duration_s(parsed, graceful=False) == plain


def test_run_duration_honours_start_time() -> None:
    options = Options.model_validate({"scenarios": {
        "a": CAR, "b": {**CAR, "startTime": "30s", "gracefulStop": "0s"}}})
    assert run_duration_s(options) == 45 and run_duration_s(options, graceful=False) == 45
    assert run_duration_s(options.model_copy(update={"scenarios": {
        "a": options.scenarios["a"]}})) == 45


def test_scaled_keeps_rates_and_scales_time() -> None:
    lab = scaled(_one({**PHASE2, "startTime": "10s"}), 0.1)
    assert isinstance(lab, RampingVus)
    assert [s.duration for s in lab.stages] == [timedelta(seconds=12), timedelta(seconds=30),
                                                 timedelta(seconds=12)]
    # iterations keep their real length, so their graceful periods do too
    assert (lab.start_time, lab.graceful_stop, lab.graceful_ramp_down) == (
        timedelta(seconds=1), timedelta(seconds=30), timedelta(seconds=30))
    assert vus_at(lab, 6) == 250 and lab.max_vus == 500
    fast = scaled(_one({**CAR, "timeUnit": "1m", "rate": 600}), 0.5)
    assert isinstance(fast, ConstantArrivalRate)
    assert fast.time_unit == timedelta(minutes=1) and rate_at(fast, 1) == 10
    assert len(list(arrival_offsets(fast))) == math.floor(7.5 * 10) + 1
    with pytest.raises(ValueError):
        scaled(fast, 0)


def test_models_dump_k6_durations_and_round_trip() -> None:
    options = parse_options({"scenarios": {"p2": PHASE2, "car": CAR},
                             "thresholds": {"errors": [{"threshold": "rate<0.01",
                                                        "delayAbortEval": "1m"}]}})
    dumped = options.model_dump(mode="json")
    assert dumped["scenarios"]["p2"]["stages"][0]["duration"] == "2m"
    assert dumped["thresholds"]["errors"][0]["delay_abort_eval"] == "1m"
    assert parse_options(dumped) == options


def test_plan_load_test_becomes_options() -> None:
    options = load_plan().phase(2).load_test.to_options("phase2")
    assert list(options.scenarios) == ["phase2"]
    assert {t.key for t in options.parsed_thresholds()} == {
        "http_req_duration{name:questions}", "errors", "http_req_duration{name:feedback}"}
