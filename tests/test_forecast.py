"""Pure tests of the capacity forecast (policy/forecast.py, policy/forecast_models.py).

Synthetic series with known answers; every random draw comes from a seeded Generator.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from phasegate.policy.forecast import (
    Bounds,
    Comparison,
    Eta,
    SeriesForecast,
    alerts_to_send,
    backtest,
    checklist_lead_days,
    choose_model,
    clamp,
    forecast_series,
    lead_time_alerts,
    prepare_history,
    stage_lead_days,
    threshold_eta,
)
from phasegate.policy.forecast_models import (
    DampedTrend,
    Linear,
    LogLinear,
    Prediction,
    WeeklyDamped,
    t_quantile,
    weekday_factors,
)
from phasegate.policy.plan import load_plan

TODAY = date(2025, 11, 20)
YESTERDAY = TODAY - timedelta(days=1)
WEEKDAY = np.array([1.04, 1.05, 1.04, 1.03, 0.99, 0.90, 0.93])


def daily(values: np.ndarray | list[float], end: date = YESTERDAY) -> pd.Series:
    """A series indexed by consecutive dates ending `end`."""
    n = len(values)
    return pd.Series(np.asarray(values, dtype=float),
                     index=[end - timedelta(days=n - 1 - i) for i in range(n)])


def exact_line(n: int = 60) -> np.ndarray:
    return 100.0 + 10.0 * np.arange(n)


# ---------------------------------------------------------------- known answers


@pytest.mark.parametrize(("comparison", "crossing_t"), [(">=", 90), (">", 91)])
def test_exact_linear_eta_is_exact_to_the_day(comparison: Comparison, crossing_t: int) -> None:
    # 100 + 10 t reaches 1000 at t = 90 (>= 1000) and first exceeds it at t = 91.
    y = exact_line()
    result = forecast_series("users", daily(y), [("1K", 1000.0, comparison)],
                             TODAY, Bounds.cumulative_count())
    eta = result.etas[0]
    expected = YESTERDAY + timedelta(days=crossing_t - 59)
    assert result.model == "linear"
    assert (eta.eta, eta.eta_early, eta.eta_late) == (expected, expected, expected)
    assert result.backtest["linear"].score == pytest.approx(0.0, abs=1e-9)


def test_exponential_growth_picks_log_linear_and_dates_the_crossing() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(60)
    y = 100 * 1.02**t * rng.lognormal(0, 0.01, t.size)
    threshold = 100 * 1.02**80  # the noise-free curve crosses at t = 80
    truth = YESTERDAY + timedelta(days=80 - 59)
    result = forecast_series("users", daily(y), [("x", threshold, ">=")], TODAY, Bounds.count())
    assert result.model == "log_linear"
    eta = result.etas[0]
    assert eta.eta is not None and abs((eta.eta - truth).days) <= 2
    assert eta.eta_early is not None and eta.eta_early <= eta.eta
    assert eta.eta_late is not None and eta.eta_late >= eta.eta
    baseline = threshold_eta(daily(y), threshold, ">=", Linear().fit(y), TODAY)
    assert baseline.eta is not None and baseline.eta > truth + timedelta(days=2)


@pytest.mark.parametrize("slope", [0.0, -2.0])
def test_flat_or_declining_series_never_crosses(slope: float) -> None:
    rng = np.random.default_rng(2)
    y = 500 + slope * np.arange(60) + rng.normal(0, 5, 60)
    eta = forecast_series("dau", daily(y), [("1K", 1000.0, ">=")], TODAY, Bounds.count()).etas[0]
    assert (eta.eta, eta.eta_early, eta.eta_late, eta.already_crossed) == (None, None, None,
                                                                           False)
    assert "never" in eta.note


def test_weekly_seasonal_dau_beats_or_ties_the_baseline() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(84)
    y = 80 * 1.015**t * WEEKDAY[t % 7] * rng.lognormal(0, 0.02, t.size)
    chosen, scores = choose_model(y, bounds=Bounds.count())
    assert scores[chosen].score <= scores["linear"].score
    assert chosen != "linear"


def test_declining_series_with_falling_threshold() -> None:
    y = 1000.0 - 10.0 * np.arange(40)  # 610 at t = 39; first < 500 at t = 51
    eta = threshold_eta(daily(y), 500.0, "<", Linear().fit(y), TODAY)
    assert eta.eta == YESTERDAY + timedelta(days=12)


def test_already_crossed_reports_when_the_current_run_began() -> None:
    y = np.array([80, 86, 84, 86, 87, 88], dtype=float)
    eta = threshold_eta(daily(y), 85.0, ">", Linear().fit(y), TODAY)
    since = YESTERDAY - timedelta(days=2)
    assert eta.already_crossed and (eta.eta, eta.eta_early, eta.eta_late) == (since,) * 3


# ---------------------------------------------------------------- bounds


@pytest.mark.parametrize(("bounds", "last", "mean", "expected"), [
    (Bounds.count(), 5.0, [3.0, -1.0, -4.0], [3.0, 0.0, 0.0]),
    (Bounds.percent(), 90.0, [95.0, 101.0, 120.0], [95.0, 100.0, 100.0]),
    (Bounds.cumulative_count(), 50.0, [49.0, 55.0, 53.0, 60.0], [50.0, 55.0, 55.0, 60.0]),
    (Bounds(None), 0.0, [-5.0], [-5.0]),
])
def test_clamp(bounds: Bounds, last: float, mean: list[float], expected: list[float]) -> None:
    m = np.array(mean)
    out = clamp(Prediction(m, m - 1, m + 1), bounds, last)
    assert out.mean.tolist() == expected


def test_forecasts_are_clamped_to_physical_bounds() -> None:
    rng = np.random.default_rng(4)
    t = np.arange(40)
    falling = forecast_series("dau", daily(300 - 8.0 * t), [], TODAY, Bounds.count())
    rising = forecast_series("gpu", daily(60 + 1.0 * t + rng.normal(0, 1, 40)), [], TODAY,
                             Bounds.percent())
    # A running total whose last days dip (a noisy reading): the path may not go below it.
    total = np.concatenate([1000 + 5.0 * t[:30], 1150 - 2.0 * np.arange(1, 11)])
    cumulative = forecast_series("users", daily(total), [], TODAY, Bounds.cumulative_count())
    assert falling.path is not None and rising.path is not None
    assert cumulative.path is not None
    assert min(falling.path.lower.min(), falling.path.mean.min()) >= 0
    assert max(rising.path.upper.max(), rising.path.mean.max()) <= 100
    for band in cumulative.path:
        assert band.min() >= total[-1] and (np.diff(band) >= 0).all()


# ---------------------------------------------------------------- history handling


def test_short_history_uses_the_baseline_without_backtest() -> None:
    result = forecast_series("users", daily(exact_line(15)), [("1K", 1000.0, ">=")], TODAY)
    assert result.model == "linear" and result.backtest == {}
    assert any("baseline linear used without a backtest" in n for n in result.notes)
    assert result.etas[0].eta == YESTERDAY + timedelta(days=90 - 14)


def test_too_short_for_any_model() -> None:
    result = forecast_series("users", daily([1.0, 2.0]), [("x", 10.0, ">")], TODAY)
    assert result.model is None and result.etas == []


def test_nan_and_missing_days_are_interpolated_and_partial_today_dropped() -> None:
    s = daily(exact_line())
    s.iloc[[10, 11, 40]] = np.nan
    s = s.drop(s.index[25])                       # an absent date, not only a NaN
    s[TODAY] = 3.0                                 # today's partial value
    hist = prepare_history(s, TODAY)
    assert np.allclose(hist.values, exact_line()) and hist.last_date == YESTERDAY
    assert any("4 missing day(s)" in n for n in hist.notes)
    assert any("incomplete day" in n for n in hist.notes)
    eta = forecast_series("users", s, [("1K", 1000.0, ">=")], TODAY).etas[0]
    assert eta.eta == YESTERDAY + timedelta(days=31)


def test_trailing_missing_days_move_the_forecast_origin() -> None:
    s = daily(exact_line())
    s.iloc[-2:] = np.nan
    hist = prepare_history(s, TODAY)
    assert hist.last_date == YESTERDAY - timedelta(days=2)
    assert any("last 2 day(s)" in n for n in hist.notes)
    eta = forecast_series("users", s, [("1K", 1000.0, ">=")], TODAY).etas[0]
    assert eta.eta == YESTERDAY + timedelta(days=31)   # same calendar date: the line is exact


def test_duplicate_days_are_refused() -> None:
    s = pd.Series([1.0, 2.0], index=[YESTERDAY, YESTERDAY])
    with pytest.raises(ValueError, match="more than one value"):
        prepare_history(s, TODAY)


# ---------------------------------------------------------------- backtest and intervals


def test_interval_coverage_matches_the_level_on_noisy_linear_data() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(150)
    y = 50 + 2.0 * t + rng.normal(0, 3, t.size)
    score = backtest(y, Linear(level=0.8))
    assert score.origins[7] == 150 - 21 - 7 + 1
    for h in (7, 14):
        assert 0.65 <= score.coverage[h] <= 0.95
    assert score.width_factor < 1.3


def test_ties_go_to_the_simpler_model() -> None:
    name, scores = choose_model(exact_line(), [DampedTrend(), Linear()])
    assert name == "linear"
    assert scores["damped_trend"].score == pytest.approx(0.0, abs=0.05)


def test_log_linear_is_not_applicable_to_non_positive_series() -> None:
    y = np.concatenate([[0.0], exact_line(40)])
    score = backtest(y, LogLinear(window=None))
    assert not score.applicable and "not applicable" in score.note
    name, _ = choose_model(y, [Linear(), LogLinear(window=None)])
    assert name == "linear"


def test_damped_trend_recovers_a_straight_line() -> None:
    fit = DampedTrend().fit(exact_line(30))
    assert fit.phi == 1.0
    assert np.allclose(fit.predict(5).mean, 100 + 10 * np.arange(30, 35))


def test_weekday_factors_are_recovered() -> None:
    t = np.arange(56)
    factors = weekday_factors(200 * 1.01**t * WEEKDAY[t % 7])
    assert np.allclose(factors, WEEKDAY / WEEKDAY.mean(), atol=0.01)
    assert WeeklyDamped().fit(200 * 1.01**t * WEEKDAY[t % 7]).predict(7).mean.size == 7


@pytest.mark.parametrize(("p", "dof", "expected"), [
    (0.9, 10, 1.3722), (0.975, 5, 2.5706), (0.9, 30, 1.3104), (0.9, float("inf"), 1.2816),
])
def test_t_quantile(p: float, dof: float, expected: float) -> None:
    assert t_quantile(p, dof) == pytest.approx(expected, rel=0.01)


def test_forecast_json_is_serializable() -> None:
    rng = np.random.default_rng(6)
    y = 100 * 1.02 ** np.arange(45) * rng.lognormal(0, 0.01, 45)
    result = forecast_series("users", daily(y), [("10K", 10_000.0, ">=")], TODAY)
    doc = json.loads(json.dumps(result.to_dict(include_path=True), allow_nan=False))
    assert doc["name"] == "users" and doc["model"] in doc["backtest"]
    assert doc["eta"] is not None and len(doc["eta_range"]) == 2
    assert set(doc["backtest"]) == {"linear", "log_linear", "damped_trend", "weekly_damped"}
    assert set(doc["backtest"]["linear"]["mape_pct"]) == {"7", "14"}


# ---------------------------------------------------------------- lead time


@pytest.mark.parametrize(("stage", "days"), [
    ("D-7", 7), ("D-3", 3), ("D-1", 1), ("D-Day", 0), ("D+1..7", None),
])
def test_stage_lead_days(stage: str, days: int | None) -> None:
    assert stage_lead_days(stage) == days


def test_checklist_lead_days_from_the_plan() -> None:
    transition = load_plan().transition(1, 2)
    assert checklist_lead_days(s.stage for s in transition.checklist) == 7
    assert checklist_lead_days(["D-Day", "D+1..7"]) == 0


def _eta(eta: int | None, early: int | None, late: int | None = None,
         crossed: bool = False) -> Eta:
    def day(n: int | None) -> date | None:
        return None if n is None else TODAY + timedelta(days=n)
    return Eta("phase 2->3: 10K users", 10_000.0, ">=", "log_linear", day(eta), day(early),
               day(late), crossed, 9_000.0, YESTERDAY, "")


@pytest.mark.parametrize(("eta", "basis"), [
    (_eta(5, 3, 9), "eta"),
    (_eta(7, 7, 7), "eta"),                 # exactly the lead time: today is the last day
    (_eta(20, 6, 40), "early_bound"),
    (_eta(None, 4, None), "early_bound"),
    (_eta(-3, -3, -3, crossed=True), "already_crossed"),
    (_eta(20, 10, 40), None),
    (_eta(None, None, None), None),
])
def test_lead_time_alerts(eta: Eta, basis: str | None) -> None:
    forecast = SeriesForecast("users_total", "log_linear", [eta], {}, [], YESTERDAY)
    alerts = lead_time_alerts([forecast], TODAY, lead_days=7)
    assert [a.basis for a in alerts] == ([basis] if basis else [])
    if alerts:
        message = alerts[0].message
        assert "10K users" in message and "D-7" in message and "purchase" in message
        json.dumps(alerts[0].to_dict())


def _alerts_on(day: date, eta: int, early: int, crossed: bool = False) -> list[Any]:
    """The lead-time alerts a forecast made on `day` raises (ETA offsets from TODAY)."""
    forecast = SeriesForecast("users_total", "log_linear", [_eta(eta, early, None, crossed)],
                              {}, [], YESTERDAY)
    return lead_time_alerts([forecast], day, lead_days=7)


def test_capacity_alerts_go_out_when_new_escalated_earlier_or_weekly_not_daily() -> None:
    def run(day: date, alerts: list[Any], previous: list[Any]) -> tuple[list[str], list[Any]]:
        send, notices = alerts_to_send(alerts, previous, day)
        json.dumps(notices)
        return [why for _, why in send], notices

    d = [TODAY + timedelta(days=n) for n in range(12)]
    sent, stored = run(d[0], _alerts_on(d[0], 5, 3), [])
    assert sent == ["new"]
    sent, stored = run(d[1], _alerts_on(d[1], 5, 3), stored)  # same crossing dates
    assert sent == []
    sent, stored = run(d[2], _alerts_on(d[2], 4, 2), stored)  # crossing a day earlier
    assert sent == ["earlier"]
    sent, stored = run(d[3], _alerts_on(d[3], 5, 3), stored)  # later again: no news
    assert sent == []
    sent, stored = run(d[4], _alerts_on(d[4], -1, -1, crossed=True), stored)
    assert sent == ["escalated"]
    quiet = stored
    for n in range(5, 11):  # still crossed, nothing new: silent until a week after the last
        sent, quiet = run(d[n], _alerts_on(d[n], -1, -1, crossed=True), quiet)
        assert sent == [], n
    sent, _ = run(d[11], _alerts_on(d[11], -1, -1, crossed=True), quiet)
    assert sent == ["reminder"]
    # Gone for a day (the forecast moved beyond the lead time), then back: new again.
    assert run(d[11], [], quiet)[1] == []
    assert run(d[11], _alerts_on(d[11], 5, 3), [])[0] == ["new"]
