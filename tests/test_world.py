"""World model invariants and the designed closeness to the phase 1 -> 2 thresholds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from phasegate.lab.world import CONDITION_KEYS, PLANS, REDIS_MAX_BYTES, TZ, World

NOW = datetime(2025, 11, 20, 15, 0, tzinfo=TZ)     # a Thursday afternoon in Seoul


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(NOW)


def test_shape_and_calendar(world: World) -> None:
    d = world.daily
    assert len(d) == 90 and d["day"].iloc[-1] == NOW.date()
    assert d["day"].iloc[0] == NOW.date() - timedelta(days=89)
    assert d["complete"].sum() == 89 and not d["complete"].iloc[-1]
    assert world.slots["ts"].is_monotonic_increasing
    assert world.slots["ts"].iloc[-1] <= NOW.timestamp()
    assert (np.diff(world.slots["ts"]) == 300).all()


def test_users_and_dau_invariants(world: World) -> None:
    d = world.daily
    assert d["users_total"].is_monotonic_increasing and (d["signups"] >= 0).all()
    assert (d["dau"] <= d["users_total"]).all()
    ratio = (d["dau"] / d["users_total"])[d["complete"]].iloc[-28:]
    assert ratio.between(0.24, 0.34).all()
    weekend = d[d["complete"] & d["weekday"].isin([5, 6])]["dau"] / d["users_total"]
    weekday = d[d["complete"] & d["weekday"].isin([0, 1, 2])]["dau"] / d["users_total"]
    assert weekend.mean() < weekday.mean()
    age = len(d) - 1 - np.arange(len(d))
    assert d["users_total"][age == 5].item() >= 1000 > d["users_total"][age == 6].item()
    assert len(world.users) == d["users_total"].iloc[-1]
    assert world.users["created_at"].is_monotonic_increasing
    assert world.users["created_at"].iloc[-1] < NOW.timestamp()


def test_sessions_give_exact_dau(world: World) -> None:
    s = world.sessions
    k = ((s["started_at"] - world.t0) // 86400).astype(int)
    distinct = s.groupby(k)["user_id"].nunique().reindex(range(world.days), fill_value=0)
    assert distinct.tolist() == world.daily["dau"].tolist()
    created = world.users.set_index("id")["created_at"]
    assert (created.loc[s["user_id"]].to_numpy() < s["started_at"].to_numpy()).all()


def test_money_tables(world: World) -> None:
    subs, pay = world.subscriptions, world.payments
    assert set(subs["plan"]) <= set(PLANS)
    assert (subs["monthly_price_usd"] == subs["plan"].map(PLANS)).all()
    created = world.users.set_index("id")["created_at"]
    assert (subs["started_at"].to_numpy() >= created.loc[subs["user_id"]].to_numpy()).all()
    assert (subs["canceled_at"].dropna() < NOW.timestamp()).all()
    assert set(pay["status"]) <= {"succeeded", "failed", "refunded"}
    assert pay["paid_at"].is_monotonic_increasing and (pay["paid_at"] < NOW.timestamp()).all()
    costs = world.infra_costs.groupby("month")["amount_usd"].sum()
    assert (costs == 100.0).all() and len(costs) in (3, 4)


def test_operational_ranges_recently(world: World) -> None:
    recent = world.daily[world.daily["complete"]].tail(7)
    assert recent["gpu_peak_util"].between(81, 90).all()
    assert recent["gpu_peak_util"].max() > 85
    assert recent["api_p95_peak_ms"].between(330, 560).all()
    assert recent["queue_p95_peak_s"].between(5, 12).all()
    assert recent["cache_miss_rate"].between(0.25, 0.33).all()
    s = world.slots[world.slots["ts"] > NOW.timestamp() - 7 * 86400]
    assert s["redis_used_bytes"].between(2 * 2**30, 3 * 2**30).all()
    assert s["redis_used_bytes"].max() < REDIS_MAX_BYTES
    assert s["db_tps"].max() < 100 and s["db_tps"].max() > 10
    hour = ((s["ts"] - 300 - world.t0) % 86400) // 3600
    assert s.groupby(hour)["rps"].mean().idxmax() in range(19, 23)


def test_phase1_conditions_are_borderline_as_designed(world: World) -> None:
    c = {x.key: x for x in world.phase1_conditions()}
    assert tuple(c) == CONDITION_KEYS
    met = {k for k, x in c.items() if x.met}
    assert met == {"gpu_85_peak_3d", "churn_10", "slow_10_weekly",
                   "peak_connection_failures", "ai_wait_rising"}
    streaks = {k: c[k].streak for k in ("users_1000_7d", "dau_300_5d", "gpu_85_peak_3d",
                                        "api_p95_500_2d", "queue_10s_peak_7d",
                                        "cache_miss_30_3d", "growth_15_3w")}
    assert streaks == {"users_1000_7d": 5, "dau_300_5d": 3, "gpu_85_peak_3d": 3,
                       "api_p95_500_2d": 0, "queue_10s_peak_7d": 0, "cache_miss_30_3d": 1,
                       "growth_15_3w": 0}
    close = {"growth_15_3w": 0.03, "api_p95_500_2d": 40, "queue_10s_peak_7d": 2.0,
             "cache_miss_30_3d": 0.01, "revenue_300": 30, "conversion_5": 0.005,
             "nps_40": 2.0, "slow_10_weekly": 0.015}
    for key, tol in close.items():
        assert abs(c[key].value - c[key].threshold) <= tol, c[key]


def test_conditions_stay_borderline_on_every_weekday() -> None:
    for shift in range(7):
        c = {x.key: x for x in World.build(NOW + timedelta(days=shift)).phase1_conditions()}
        assert c["users_1000_7d"].streak == 5 and not c["users_1000_7d"].met
        assert not c["growth_15_3w"].met and not c["queue_10s_peak_7d"].met
        assert c["dau_300_5d"].streak <= 6 and c["gpu_85_peak_3d"].streak <= 6
        assert 270 <= c["revenue_300"].value <= 345
        assert 0.035 <= c["conversion_5"].value <= 0.06 and c["churn_10"].value < 0.12
        numeric_met = sum(x.met for k, x in c.items() if k not in
                          ("peak_connection_failures", "ai_wait_rising"))
        assert 1 <= numeric_met <= 7


def test_feedback_complaints_at_peak(world: World) -> None:
    fb = world.feedback
    week = fb[fb["created_at"] >= NOW.timestamp() - 7 * 86400]
    hour = pd.to_datetime(week["created_at"], unit="s", utc=True).dt.tz_convert(TZ).dt.hour
    complaints = week["category"].isin(["connection_failure", "ai_wait"])
    assert (complaints & hour.between(19, 22)).sum() >= 3
    assert (fb["created_at"] < NOW.timestamp()).all()
    assert 0.09 <= (week["category"] == "slow").mean() <= 0.12


def test_deterministic_and_seeded() -> None:
    a, b = World.build(NOW, days=30), World.build(NOW, days=30)
    for name in ("daily", "slots", "users", "sessions", "feedback", "payments", "nps"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    c = World.build(NOW, days=30, seed=8)
    assert not a.slots["rps"].equals(c.slots["rps"])
    same_instant = World.build(NOW.astimezone(UTC), days=30)
    pd.testing.assert_frame_equal(a.daily, same_instant.daily)


def test_rows_and_errors(world: World) -> None:
    first = next(world.users_rows())
    assert len(first) == 4 and isinstance(first[1], datetime) and first[1].tzinfo is not None
    dau = list(world.daily_active_users_rows())
    assert [r[1] for r in dau] == world.daily["dau"].tolist()
    assert len(list(world.rows("marketing_spend"))) == len(world.marketing)
    sub = next(r for r in world.rows("subscriptions"))
    assert sub[5] is None or isinstance(sub[5], datetime)
    with pytest.raises(KeyError):
        world.rows("nope")
    with pytest.raises(ValueError):
        World.build(datetime(2025, 11, 20, 15, 0))
