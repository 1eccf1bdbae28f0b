"""The lab's synthetic business: one deterministic model of the last N local days.

`World.build(now, days=90, seed=7)` models the service over the `days` Asia/Seoul local days
ending with the local day that contains `now` (that last day is partial: only what happened
before `now`). Nothing reads the clock; every random draw comes from a numpy Generator seeded
with `seed` (one independent stream per component), so the same (now, days, seed) gives the
same world, and the world is shaped relative to `now` (the same story whatever the date).

Everything else in the lab derives from it: `lab.seed_app` loads the entity tables into the app
database `dreamseed`, `lab.history` turns `slots` into 90 days of Prometheus history.

The story (default seed, any `now`): users grow ~35 %/week at first, ~15 %/week in the last
month, and pass 1,000 five local days before today; DAU is ~30 % of users with a weekday /
weekend rhythm and sits around 300; paid plans launched 38 days ago and convert ~5 % of new
users; one RTX A6000 serves the LLM and runs at ~85-88 % at peak (19:00-23:00 KST).

Phase 1 -> 2 conditions as `phase1_conditions()` evaluates them, always on COMPLETE local days
ending yesterday (streaks counted backwards from yesterday). Outcome for the default seed at
now = Thursday 2025-11-20 15:00 KST (tests/test_world.py pins it; other weekdays shift the
weekday-driven streaks, the story stays the same):

- users_1000_7d: users_total >= 1,000 on 7 consecutive days          NOT met, streak 5 (1,085)
- dau_300_5d: dau >= 300 on 5 consecutive days                      NOT met, streak 3 (333)
- growth_15_3w: users_total[d] / users_total[d-7] - 1 >= 15 % for d = yesterday, -7, -14
                                                                    NOT met (13.9 %, 15.4, 15.0)
- gpu_85_peak_3d: mean GPU util over 19:00-23:00 > 85 % on 3 days   MET, streak 3 (87.7 %)
- api_p95_500_2d: mean API p95 over 19:00-23:00 > 500 ms on 2 days  NOT met, streak 0 (495 ms)
- queue_10s_peak_7d: mean queue-wait p95 at 19:00-23:00 > 10 s, 7 d NOT met, streak 0 (9.1 s)
- cache_miss_30_3d: daily misses / lookups > 30 % on 3 days         NOT met, streak 1 (30.1 %)
- revenue_300: succeeded payments in the last 30 days > $300        NOT met ($299.74)
- conversion_5: subs started in 30 d / signups in 30 d > 5 %        NOT met (4.84 %)
- churn_10: cancellations in 30 d / subs active in them < 10 %      MET (7.4 %)
- nps_40: (promoters - detractors) / answers in 30 d x100 > 40     NOT met (39.4)
- slow_10_weekly: "slow" / all feedback over the last 7 days > 10 % MET (10.9 %)
- peak_connection_failures: connection_failure at 19-23h in 7 d     MET (3 reports)
- ai_wait_rising: ai_wait feedback last 7 d > the 7 d before        MET (+3)

So 5 of 14 bullets hold, but only 3 of the 11 numeric ones (GPU, churn, slow); by groups:
user count 0/3, performance 1/4, business 1/4, feedback 3/3.

See `phase1_conditions()` and tests/test_world.py for the exact outcome at a fixed `now`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

__all__ = [
    "CONDITION_KEYS",
    "FEEDBACK_SHARE",
    "Condition",
    "FEEDBACK_CATEGORIES",
    "GPU_FB_TOTAL_MIB",
    "INFRA_COST_SPLIT",
    "PLANS",
    "REDIS_MAX_BYTES",
    "SLOT_S",
    "TZ",
    "World",
    "norm_cdf",
]

TZ = ZoneInfo("Asia/Seoul")
SLOT_S = 300
DAY_S = 86_400
SLOTS_PER_DAY = DAY_S // SLOT_S
PEAK_START_H, PEAK_END_H = 19, 23
PLANS: dict[str, float] = {"basic": 9.99, "pro": 19.99}
INFRA_COST_SPLIT: dict[str, float] = {
    "gpu-power": 38.0, "cloud-run": 22.0, "db": 15.0, "redis": 10.0, "other": 15.0,
}
FEEDBACK_CATEGORIES = ("slow", "connection_failure", "ai_wait", "bug", "content", "praise",
                       "other")
GPU_FB_TOTAL_MIB = 49_140
GPU_FB_USED_MIB = 44_226            # vLLM --gpu-memory-utilization 0.9 preallocates
REDIS_MAX_BYTES = 4 * 2**30

CROSS_AGE = 5                       # users_total passes 1,000 this many local days before today
LAUNCH_AGE_DAYS = 38                # paid plans launched this many days before `now`
DAU_REF = 318.0                     # DAU whose peak load is x = 1 (the GPU's design point)
REQS_PER_DAU = 300.0                # API requests per active user per day
LLM_SHARE = 0.35                    # LLM generations per API request
FEEDBACK_SHARE = 0.15               # share of API requests that are POST /v1/feedback

# Relative traffic by local hour (KST), interpolated to 5-minute slots.
_HOURLY = np.array([0.55, 0.35, 0.2, 0.12, 0.1, 0.1, 0.18, 0.35, 0.55, 0.7, 0.8, 0.85,
                    0.9, 0.85, 0.85, 0.9, 1.0, 1.1, 1.3, 1.75, 2.0, 2.05, 1.85, 1.1])
_WD_SIGNUP = np.array([1.05, 1.05, 1.0, 1.0, 0.95, 0.92, 1.03])    # Mon..Sun
_WD_DAU = np.array([1.04, 1.05, 1.04, 1.03, 0.99, 0.90, 0.93])
_CHANNELS = ("naver_search", "instagram", "youtube", "google_ads", "referral", "organic")
_CHANNEL_P = np.array([0.28, 0.22, 0.14, 0.12, 0.10, 0.14])
_PAID_CHANNELS = {"naver_search": 0.35, "instagram": 0.30, "youtube": 0.20, "google_ads": 0.15}
_COUNTRIES = ("KR", "US", "JP", "VN", "CA")
_COUNTRY_P = np.array([0.88, 0.04, 0.03, 0.03, 0.02])
_STREAMS = ("users", "dau", "sessions", "subs", "pay", "nps", "fb", "mkt", "ops", "meta")


@dataclass(frozen=True)
class Condition:
    """One phase 1 -> 2 trigger condition evaluated on the world (complete days only)."""

    key: str
    description: str
    value: float            # the latest measured value (yesterday / last window)
    threshold: float
    met: bool
    streak: int             # consecutive complete days (weeks for growth) the rule held
    required: int           # streak the rule asks for (1 for window rules)


CONDITION_KEYS = (
    "users_1000_7d", "dau_300_5d", "growth_15_3w", "gpu_85_peak_3d", "api_p95_500_2d",
    "queue_10s_peak_7d", "cache_miss_30_3d", "revenue_300", "conversion_5", "churn_10",
    "nps_40", "slow_10_weekly", "peak_connection_failures", "ai_wait_rising",
)


@dataclass(frozen=True)
class _Cal:
    """The time grid: local days (Seoul has no DST, so every day is 86,400 s)."""

    now_ts: float
    t0: int                 # epoch seconds of local midnight of day 0
    days: int
    profile: np.ndarray     # traffic weight per 5-min slot of a day, mean 1
    cdf: np.ndarray         # its cumulative share at the 289 slot boundaries

    @property
    def today_start(self) -> int:
        return self.t0 + (self.days - 1) * DAY_S

    @property
    def today_frac(self) -> float:
        """Elapsed share of today (wall clock, 0..1)."""
        return (self.now_ts - self.today_start) / DAY_S

    def share_until(self, frac: float) -> float:
        """Share of a day's traffic that happens before local time-of-day `frac` (0..1)."""
        return float(np.interp(frac * SLOTS_PER_DAY, np.arange(SLOTS_PER_DAY + 1), self.cdf))

    def day_start(self, k: np.ndarray) -> np.ndarray:
        return self.t0 + k.astype(np.int64) * DAY_S

    def limit(self, k: np.ndarray) -> np.ndarray:
        """Upper bound (fraction of the day) for events on day k: 1, or `now` for today."""
        return np.where(k == self.days - 1, self.today_frac, 1.0)


def _calendar(now: datetime, days: int) -> _Cal:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if days < 21:
        raise ValueError("days must be >= 21")
    today = now.astimezone(TZ).date()
    first = today - timedelta(days=days - 1)
    t0 = int(datetime(first.year, first.month, first.day, tzinfo=TZ).timestamp())
    t = (np.arange(SLOTS_PER_DAY) + 0.5) / 12
    prof = np.interp(t, np.arange(24) + 0.5, _HOURLY, period=24)
    prof = prof / prof.mean()
    cdf = np.concatenate([[0.0], np.cumsum(prof)]) / prof.sum()
    return _Cal(now.timestamp(), t0, days, prof, cdf)


def _sample_times(rng: np.random.Generator, cal: _Cal, k: np.ndarray,
                  lo: np.ndarray | float = 0.0, hi: np.ndarray | float = 1.0) -> np.ndarray:
    """Epoch seconds of events on days `k`, distributed like traffic within [lo, hi) of the
    day (fractions), never after `now`."""
    hi_ = np.minimum(np.broadcast_to(hi, k.shape), cal.limit(k))
    lo_ = np.minimum(np.broadcast_to(lo, k.shape), hi_)
    grid = np.arange(SLOTS_PER_DAY + 1)
    c_lo = np.interp(lo_ * SLOTS_PER_DAY, grid, cal.cdf)
    c_hi = np.interp(hi_ * SLOTS_PER_DAY, grid, cal.cdf)
    u = c_lo + rng.uniform(size=k.shape) * (c_hi - c_lo)
    pos = np.interp(u, cal.cdf, grid)
    ts = cal.day_start(k) + pos * SLOT_S
    return np.minimum(ts, cal.now_ts - 1.0)


def _erf(x: np.ndarray) -> np.ndarray:
    """Vectorized erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7)."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorized."""
    return 0.5 * (1.0 + _erf(np.asarray(x, dtype=float) / math.sqrt(2.0)))


# ---------------------------------------------------------------- users and DAU

def _growth_curve(days: int) -> np.ndarray:
    """Expected users at the end of each day (arbitrary scale): weekly growth ~38 % -> ~15 %."""
    age = days - 1 - np.arange(days)
    weekly = 0.148 + 0.24 / (1.0 + np.exp(-(age - 50) / 9.0))
    return np.exp(np.cumsum(np.log1p(weekly) / 7.0))


def _users_by_day(rng: np.random.Generator, cal: _Cal, wd: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """(users_total reported, users_total full day, users before day 0).

    Scaled so the cumulative count passes 1,000 during the day CROSS_AGE days before today."""
    e = _growth_curve(cal.days)
    before = e[0] / (1.0 + (e[1] - e[0]) / e[0])
    expected = np.diff(np.concatenate([[before], e]))
    signups = expected * _WD_SIGNUP[wd] * rng.lognormal(0.0, 0.08, cal.days)
    cum = before + np.cumsum(signups)
    c = cal.days - 1 - CROSS_AGE
    scale = 1000.0 / (cum[c] - 0.35 * signups[c])
    full = np.round(cum * scale).astype(np.int64)
    base = int(round(before * scale))
    reported = full.copy()
    today_signups = (full[-1] - full[-2]) * cal.share_until(cal.today_frac)
    reported[-1] = full[-2] + int(round(today_signups))
    return reported, full, base


def _dau(rng: np.random.Generator, cal: _Cal, wd: np.ndarray, full_users: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray]:
    """(dau reported — today's is so far —, dau over the full day)."""
    ratio = 0.285 * _WD_DAU[wd] * rng.lognormal(0.0, 0.025, cal.days)
    dau_full = np.round(full_users * ratio).astype(np.int64)
    dau = dau_full.copy()
    dau[-1] = int(round(dau_full[-1] * cal.share_until(cal.today_frac)))
    return dau, dau_full


def _users_table(rng: np.random.Generator, cal: _Cal, users_total: np.ndarray, base: int
                 ) -> pd.DataFrame:
    """One row per user, ids 1..N in created_at order; base users predate day 0."""
    signups = np.diff(np.concatenate([[base], users_total]))
    k = np.repeat(np.arange(cal.days), signups)
    ts_days = _sample_times(rng, cal, k)
    ts_base = cal.t0 - 60 * DAY_S * (1.0 - np.sqrt(rng.uniform(size=base)))
    created = np.sort(np.concatenate([ts_base, np.sort(ts_days)]))
    n = created.size
    return pd.DataFrame({
        "id": np.arange(1, n + 1, dtype=np.int64),
        "created_at": created,
        "country": np.array(_COUNTRIES)[rng.choice(len(_COUNTRIES), n, p=_COUNTRY_P)],
        "acquisition_channel": np.array(_CHANNELS)[rng.choice(len(_CHANNELS), n,
                                                              p=_CHANNEL_P)],
    })


def _sessions_table(rng: np.random.Generator, cal: _Cal, dau: np.ndarray,
                    pool: np.ndarray) -> pd.DataFrame:
    """Sessions of exactly dau[k] distinct users per day, drawn from users created before."""
    users, days = [], []
    for k in range(cal.days):
        active = rng.choice(int(pool[k]), int(dau[k]), replace=False) + 1
        per_user = rng.choice([1, 2, 3], size=active.size, p=[0.6, 0.3, 0.1])
        users.append(np.repeat(active, per_user))
        days.append(np.full(int(per_user.sum()), k))
    user_id, k_all = np.concatenate(users), np.concatenate(days)
    started = _sample_times(rng, cal, k_all)
    order = np.argsort(started, kind="stable")
    dur = np.minimum(rng.lognormal(np.log(600), 0.8, user_id.size), 10_800).astype(np.int64)
    return pd.DataFrame({"id": np.arange(1, user_id.size + 1, dtype=np.int64),
                         "user_id": user_id[order], "started_at": started[order],
                         "duration_s": dur})


# ---------------------------------------------------------------- money

def _systematic(n: int, p: float, u0: float) -> np.ndarray:
    """Boolean mask selecting a share p of n ordered items as evenly as possible."""
    i = np.arange(n)
    return (np.floor((i + 1) * p + u0) - np.floor(i * p + u0)) > 0


def _subscriptions_table(rng: np.random.Generator, cal: _Cal, users: pd.DataFrame
                         ) -> pd.DataFrame:
    """Subscriptions since the paid launch: ~4.9 % of new users, a few earlier users; ~11 % of
    subscribers cancel 8-30 days after starting (~8 %/month churn)."""
    launch = cal.now_ts - LAUNCH_AGE_DAYS * DAY_S
    created = users["created_at"].to_numpy()
    new = created >= launch
    pick = np.zeros(created.size, bool)
    pick[new] = _systematic(int(new.sum()), 0.049, rng.uniform())
    pick[~new] = _systematic(int((~new).sum()), 0.004, rng.uniform())
    start = np.where(new, created + rng.exponential(3 * DAY_S, created.size),
                     launch + rng.exponential(8 * DAY_S, created.size))
    keep = pick & (start < cal.now_ts)
    start, uid = start[keep], users["id"].to_numpy()[keep]
    order = np.argsort(start)
    start, uid = start[order], uid[order]
    plan = np.where(rng.uniform(size=start.size) < 0.15, "pro", "basic")
    churner = _systematic(start.size, 0.11, rng.uniform())
    end = np.where(churner, start + rng.uniform(8 * DAY_S, 30 * DAY_S, start.size), np.inf)
    return pd.DataFrame({
        "id": np.arange(1, start.size + 1, dtype=np.int64), "user_id": uid, "plan": plan,
        "monthly_price_usd": np.array([PLANS[p] for p in plan]), "started_at": start,
        "canceled_at": np.where(end < cal.now_ts, end, np.nan),
    })


def _payments_table(rng: np.random.Generator, cal: _Cal, subs: pd.DataFrame) -> pd.DataFrame:
    """Monthly charges per subscription; ~4 % fail (retried next day), ~2 % refunded."""
    stop = np.fmin(subs["canceled_at"].to_numpy(), cal.now_ts)
    rows: list[pd.DataFrame] = []
    for m in range(12):
        t = subs["started_at"].to_numpy() + m * 30 * DAY_S
        live = t < stop
        if not live.any():
            break
        rows.append(pd.DataFrame({"user_id": subs["user_id"][live], "subscription_id":
                                  subs["id"][live], "paid_at": t[live], "amount_usd":
                                  subs["monthly_price_usd"][live], "stop": stop[live]}))
    pay = pd.concat(rows, ignore_index=True)
    u = rng.uniform(size=len(pay))
    pay["status"] = np.where(u < 0.04, "failed", np.where(u < 0.06, "refunded", "succeeded"))
    retry = pay[(pay["status"] == "failed") & (pay["paid_at"] + DAY_S < pay["stop"])].copy()
    retry["paid_at"] += DAY_S
    retry["status"] = "succeeded"
    pay = pd.concat([pay, retry], ignore_index=True).sort_values("paid_at", kind="stable")
    pay.insert(0, "id", np.arange(1, len(pay) + 1, dtype=np.int64))
    return pay.drop(columns="stop").reset_index(drop=True)


def _marketing_table(rng: np.random.Generator, cal: _Cal, signups: np.ndarray) -> pd.DataFrame:
    """Daily paid-acquisition spend per channel (CAC ~ $3.5 per signup)."""
    total = signups * 3.5 * rng.lognormal(0.0, 0.1, cal.days)
    frames = [pd.DataFrame({"day_idx": np.arange(cal.days), "channel": ch,
                            "amount_usd": np.round(total * share, 2)})
              for ch, share in _PAID_CHANNELS.items()]
    return pd.concat(frames, ignore_index=True).sort_values(["day_idx", "channel"],
                                                            ignore_index=True)


def _infra_costs_table(cal: _Cal) -> pd.DataFrame:
    """$100 per UTC month (phase 1), split into components, for every month touched."""
    first = datetime.fromtimestamp(cal.t0, ZoneInfo("UTC")).date().replace(day=1)
    last = datetime.fromtimestamp(cal.now_ts, ZoneInfo("UTC")).date().replace(day=1)
    months: list[date] = []
    m = first
    while m <= last:
        months.append(m)
        m = (m + timedelta(days=32)).replace(day=1)
    return pd.DataFrame([(mo, comp, amt) for mo in months for comp, amt in
                         INFRA_COST_SPLIT.items()], columns=["month", "component", "amount_usd"])


# ---------------------------------------------------------------- voice of the customer

def _allocate(n: int, shares: np.ndarray) -> np.ndarray:
    """Largest-remainder split of n items by shares (which sum to 1)."""
    raw = n * shares
    out = np.floor(raw).astype(np.int64)
    rest = n - int(out.sum())
    out[np.argsort(-(raw - out), kind="stable")[:rest]] += 1
    return out


def _blocks(days: int, width: int) -> np.ndarray:
    """Block number per day: today is block -1; then ages 1..width are 0, and so on."""
    age = days - 1 - np.arange(days)
    return np.where(age == 0, -1, (age - 1) // width)


def _categorize(rng: np.random.Generator, day_k: np.ndarray, block: np.ndarray,
                shares_of: dict[int, np.ndarray]) -> np.ndarray:
    """Category index per event: exact shares per block (largest remainder), shuffled."""
    cat = np.empty(day_k.size, np.int64)
    b_ev = block[day_k]
    for b in np.unique(b_ev):
        idx = np.flatnonzero(b_ev == b)
        shares = shares_of.get(int(max(b, 0)), shares_of[max(shares_of)])
        counts = _allocate(idx.size, shares)
        cat[idx] = rng.permutation(np.repeat(np.arange(shares.size), counts))
    return cat


def _event_days(rng: np.random.Generator, cal: _Cal, per_day: np.ndarray) -> np.ndarray:
    """Day index per event, Poisson counts around per_day (today's scaled to so far)."""
    lam = per_day.astype(float).copy()
    lam[-1] *= cal.share_until(cal.today_frac)
    return np.repeat(np.arange(cal.days), rng.poisson(lam))


_NPS_BLOCK = {0: 0.39, 1: 0.41, 2: 0.385}          # design NPS per 30-day block


def _nps_table(rng: np.random.Generator, cal: _Cal, dau_full: np.ndarray, pool: np.ndarray
               ) -> pd.DataFrame:
    """NPS answers: ~1.1 % of active users a day; NPS per 30-day block as designed."""
    k = _event_days(rng, cal, 0.011 * dau_full)
    shares = {b: np.array([(0.67 + v) / 2, 0.33, (0.67 - v) / 2]) for b, v in _NPS_BLOCK.items()}
    cat = _categorize(rng, k, _blocks(cal.days, 30), shares)
    prom = rng.choice([9, 10], k.size, p=[0.4, 0.6])
    pas = rng.choice([7, 8], k.size, p=[0.45, 0.55])
    det = rng.choice([2, 3, 4, 5, 6], k.size, p=[0.05, 0.1, 0.15, 0.3, 0.4])
    score = np.choose(cat, [prom, pas, det])
    t = _sample_times(rng, cal, k)
    order = np.argsort(t)
    uid = np.floor(rng.uniform(size=k.size) * pool[k]).astype(np.int64) + 1
    return pd.DataFrame({"id": np.arange(1, k.size + 1, dtype=np.int64),
                         "user_id": uid[order], "answered_at": t[order],
                         "score": score[order].astype(np.int64)})


#                        slow  conn   ai_wait bug   content praise other
_FB_BLOCK = {0: np.array([0.106, 0.09, 0.13, 0.13, 0.17, 0.24, 0.134]),
             1: np.array([0.095, 0.065, 0.10, 0.14, 0.18, 0.25, 0.17]),
             2: np.array([0.09, 0.045, 0.075, 0.14, 0.19, 0.26, 0.20]),
             3: np.array([0.07, 0.03, 0.05, 0.15, 0.20, 0.27, 0.23])}
_FB_MESSAGES = {
    "slow": ("문제 불러오는 게 너무 느려요", "The app is really slow in the evening",
             "채점 결과가 늦게 떠요", "Pages take forever to load"),
    "connection_failure": ("저녁에 접속이 안 돼요", "Connection failed during homework time",
                           "서버 연결 실패가 자주 떠요", "Got a network error twice tonight"),
    "ai_wait": ("AI 풀이 기다리는 시간이 길어요", "Waited over 10 seconds for the AI answer",
                "AI 피드백이 한참 걸려요", "The AI tutor keeps saying 'please wait'"),
    "bug": ("정답인데 오답으로 채점됐어요", "The graph does not render on iPad",
            "로그아웃이 자꾸 돼요"),
    "content": ("물리 문제가 더 많았으면 좋겠어요", "Please add more calculus practice",
                "해설이 조금 어려워요"),
    "praise": ("설명이 정말 친절해요!", "Love the step-by-step hints", "덕분에 시험 잘 봤어요"),
    "other": ("다크 모드 추가해 주세요", "Can I change my nickname?",
              "결제 영수증은 어디서 보나요?"),
}
_COMPLAINTS = {0, 1, 2}                             # slow, connection_failure, ai_wait


def _feedback_table(rng: np.random.Generator, cal: _Cal, dau_full: np.ndarray,
                    pool: np.ndarray) -> pd.DataFrame:
    """Feedback: ~2.8 % of active users a day, category shares per week as designed;
    complaints happen mostly at peak time (19:00-23:00 KST)."""
    k = _event_days(rng, cal, 0.028 * dau_full)
    cat = _categorize(rng, k, _blocks(cal.days, 7), _FB_BLOCK)
    at_peak = np.isin(cat, list(_COMPLAINTS)) & (rng.uniform(size=k.size) < 0.75)
    peak_ok = cal.limit(k) > PEAK_START_H / 24 + 0.01
    at_peak &= peak_ok
    t = np.where(at_peak, _sample_times(rng, cal, k, PEAK_START_H / 24, PEAK_END_H / 24),
                 _sample_times(rng, cal, k))
    names = np.array(FEEDBACK_CATEGORIES)[cat]
    msg = np.array([_FB_MESSAGES[c][int(i) % len(_FB_MESSAGES[c])]
                    for c, i in zip(names, rng.integers(0, 12, k.size), strict=True)])
    order = np.argsort(t)
    uid = np.floor(rng.uniform(size=k.size) * pool[k]).astype(np.int64) + 1
    return pd.DataFrame({"id": np.arange(1, k.size + 1, dtype=np.int64), "user_id": uid[order],
                         "created_at": t[order], "category": names[order],
                         "message": msg[order]})


def _enterprise_table(rng: np.random.Generator, cal: _Cal) -> pd.DataFrame:
    """Rare enterprise inquiries (academies and schools), business hours."""
    rows = [(70, "Hanbit Math Academy", 120), (33, "Seoul Science High School PTA", 60),
            (9, "Mirae Hagwon Group", 200)]
    rows = [r for r in rows if r[0] < cal.days - 1]
    k = np.array([cal.days - 1 - r[0] for r in rows], dtype=np.int64)
    t = _sample_times(rng, cal, k, 10 / 24, 17 / 24)
    return pd.DataFrame({"id": np.arange(1, len(rows) + 1, dtype=np.int64), "created_at": t,
                         "company": [r[1] for r in rows], "seats": [r[2] for r in rows]})


# ---------------------------------------------------------------- operations (5-min slots)

def _slot_grid(cal: _Cal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slot end timestamps, day index, slot-of-day index); slot i covers (ts-300, ts]."""
    end = int(cal.now_ts // SLOT_S) * SLOT_S
    ts = np.arange(cal.t0 + SLOT_S, end + 1, SLOT_S, dtype=np.int64)
    rel = ts - SLOT_S - cal.t0
    return ts, rel // DAY_S, (rel % DAY_S) // SLOT_S


def _ar1(rng: np.random.Generator, n: int, sigma: float, phi: float = 0.8) -> np.ndarray:
    """AR(1) noise with stationary std `sigma` (vectorized via a short FIR approximation)."""
    e = rng.normal(0.0, sigma * math.sqrt(1 - phi**2), n + 40)
    kernel = phi ** np.arange(40)
    return np.convolve(e, kernel, mode="full")[40:n + 40]


def _load(rng: np.random.Generator, cal: _Cal, day: np.ndarray, sod: np.ndarray,
          dau_full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rps, x): API requests/s per slot and normalized load x (1 = design peak)."""
    peak = cal.profile[PEAK_START_H * 12:PEAK_END_H * 12].mean()
    noise = np.exp(_ar1(rng, day.size, 0.06))
    x = dau_full[day] / DAU_REF * cal.profile[sod] / peak * noise
    rps = REQS_PER_DAU * dau_full[day] * cal.profile[sod] / DAY_S * noise
    return rps, x


def _slots_frame(rng: np.random.Generator, cal: _Cal, dau_full: np.ndarray,
                 users_at: np.ndarray) -> pd.DataFrame:
    """Per 5-min slot: load and everything derived from it."""
    ts, day, sod = _slot_grid(cal)
    rps, x = _load(rng, cal, day, sod, dau_full)
    util = np.minimum(3.0 + 95.0 * (1.0 - np.exp(-2.167 * x)), 99.5)
    rho = np.minimum(util / 100.0, 0.97)
    miss = (0.203 + 0.09 * users_at / 1000.0 + 0.015 * (x - 0.6)
            + rng.normal(0.0, 0.008, ts.size))
    frame = pd.DataFrame({
        "ts": ts, "day_idx": day, "slot_of_day": sod, "load_x": x, "rps": rps,
        "llm_rps": LLM_SHARE * rps, "gpu_util": util,
        "api_p95_ms": (140.0 + 330.0 * x**2.2) * np.exp(rng.normal(0, 0.03, ts.size)),
        "queue_p95_s": 0.3 + 1.2 * rho / (1.0 - rho),
        "cache_miss_rate": np.clip(miss, 0.05, 0.95), "users_total": users_at,
        "dau_so_far": np.round(dau_full[day] * cal.cdf[sod + 1]).astype(np.int64),
    })
    return _derived_gauges(rng, frame)


def _derived_gauges(rng: np.random.Generator, f: pd.DataFrame) -> pd.DataFrame:
    """Gauges that follow from the load: connections, vLLM state, Redis, DB, network."""
    n = len(f)
    rho = np.minimum(f["gpu_util"].to_numpy() / 100.0, 0.97)
    q_mean = f["queue_p95_s"].to_numpy() / math.exp(1.645) * math.exp(0.5)
    f["e2e_median_s"] = 4.0 + f["queue_p95_s"] / math.exp(1.645)
    f["vllm_running"] = np.minimum(f["llm_rps"] * 4.5 + 0.2 * rho, 32.0)
    f["vllm_waiting"] = f["llm_rps"] * q_mean
    f["kv_cache_usage"] = np.clip(0.05 + 0.85 * rho**1.5, 0.0, 1.0)
    f["active_connections"] = 1.0 + f["rps"] * 0.35 + f["rps"] * 2.0
    f["fb_used_mib"] = GPU_FB_USED_MIB + np.round(rng.normal(0, 20, n))
    diurnal = f["rps"] / max(float(f["rps"].mean()), 1e-9)
    f["redis_used_bytes"] = (1.55 + 0.95 * f["users_total"] / 1100.0 + 0.05 * diurnal) * 2**30
    f["db_tps"] = 4.0 + 9.0 * f["rps"]
    f["error_rate"] = 0.002 + 0.02 * np.maximum(f["load_x"] - 0.95, 0.0)
    return f


# ---------------------------------------------------------------- daily roll-up

def _peak_means(slots: pd.DataFrame, days: int, cols: list[str]) -> pd.DataFrame:
    """Mean of `cols` over each day's 19:00-23:00 slots (NaN before today's peak)."""
    sod = slots["slot_of_day"]
    peak = slots[(sod >= PEAK_START_H * 12) & (sod < PEAK_END_H * 12)]
    out = peak.groupby("day_idx")[cols].mean()
    return out.reindex(range(days))


def _cache_daily(slots: pd.DataFrame, days: int) -> pd.Series:
    """Daily traffic-weighted cache miss rate (misses / lookups)."""
    w = slots["rps"]
    num = (slots["cache_miss_rate"] * w).groupby(slots["day_idx"]).sum()
    return (num / w.groupby(slots["day_idx"]).sum()).reindex(range(days))


def _count_by_day(t: np.ndarray, cal: _Cal, weights: np.ndarray | None = None) -> np.ndarray:
    """Events (or summed weights) per local day of the window; events outside are ignored."""
    k = ((t - cal.t0) // DAY_S).astype(np.int64)
    inside = (k >= 0) & (k < cal.days)
    w = None if weights is None else weights[inside]
    out = np.bincount(k[inside], weights=w, minlength=cal.days)
    return out if weights is not None else out.astype(np.int64)


def _daily_frame(cal: _Cal, wd: np.ndarray, users_total: np.ndarray, base: int,
                 dau: np.ndarray, dau_full: np.ndarray, t: dict[str, pd.DataFrame],
                 slots: pd.DataFrame) -> pd.DataFrame:
    """One row per local day with the business and peak-time operational figures."""
    first = datetime.fromtimestamp(cal.t0, TZ).date()
    subs, pay, fb = t["subscriptions"], t["payments"], t["feedback"]
    ok = pay[pay["status"] == "succeeded"]
    fb_peak = fb[_is_peak(fb["created_at"].to_numpy(), cal)]
    d = pd.DataFrame({
        "day": [first + timedelta(days=i) for i in range(cal.days)], "weekday": wd,
        "complete": np.arange(cal.days) < cal.days - 1, "users_total": users_total,
        "signups": np.diff(np.concatenate([[base], users_total])), "dau": dau,
        "dau_full": dau_full,
        "new_subs": _count_by_day(subs["started_at"].to_numpy(), cal),
        "canceled_subs": _count_by_day(subs["canceled_at"].dropna().to_numpy(), cal),
        "revenue_usd": _count_by_day(ok["paid_at"].to_numpy(), cal,
                                     ok["amount_usd"].to_numpy(dtype=float)),
    })
    for cat in FEEDBACK_CATEGORIES:
        d[f"fb_{cat}"] = _count_by_day(fb.loc[fb["category"] == cat, "created_at"].to_numpy(),
                                       cal)
    d["fb_total"] = _count_by_day(fb["created_at"].to_numpy(), cal)
    d["fb_conn_peak"] = _count_by_day(fb_peak.loc[fb_peak["category"] == "connection_failure",
                                                  "created_at"].to_numpy(), cal)
    peak = _peak_means(slots, cal.days, ["gpu_util", "api_p95_ms", "queue_p95_s"])
    d["gpu_peak_util"] = peak["gpu_util"].to_numpy()
    d["api_p95_peak_ms"] = peak["api_p95_ms"].to_numpy()
    d["queue_p95_peak_s"] = peak["queue_p95_s"].to_numpy()
    d["cache_miss_rate"] = _cache_daily(slots, cal.days).to_numpy()
    return d


def _is_peak(t: np.ndarray, cal: _Cal) -> np.ndarray:
    tod = ((t - cal.t0) % DAY_S) / 3600.0
    return (tod >= PEAK_START_H) & (tod < PEAK_END_H)


# ---------------------------------------------------------------- conditions

def _streak(ok: np.ndarray) -> int:
    """Consecutive True values at the end of `ok`."""
    bad = np.flatnonzero(~ok)
    return int(ok.size if bad.size == 0 else ok.size - 1 - bad[-1])


def _streak_rules(d: pd.DataFrame) -> list[Condition]:
    """Rules of the form 'value vs threshold on N consecutive days'."""
    c = d[d["complete"]]
    specs = [("users_1000_7d", "registered users >= 1,000, 7 consecutive days", "users_total",
              1000.0, 7, True), ("dau_300_5d", "DAU >= 300, 5 consecutive days", "dau", 300.0,
                                 5, True),
             ("gpu_85_peak_3d", "GPU util > 85 % at peak, 3 consecutive days", "gpu_peak_util",
              85.0, 3, False),
             ("api_p95_500_2d", "API p95 > 500 ms at peak, 2 consecutive days",
              "api_p95_peak_ms", 500.0, 2, False),
             ("queue_10s_peak_7d", "LLM queue wait p95 > 10 s at peak, 7 consecutive days",
              "queue_p95_peak_s", 10.0, 7, False),
             ("cache_miss_30_3d", "cache miss rate > 30 %, 3 consecutive days",
              "cache_miss_rate", 0.30, 3, False)]
    out = []
    for key, desc, col, thr, need, inclusive in specs:
        v = c[col].to_numpy(dtype=float)
        s = _streak(v >= thr if inclusive else v > thr)
        out.append(Condition(key, desc, float(v[-1]), thr, s >= need, s, need))
    return out


def _growth_rule(d: pd.DataFrame) -> Condition:
    u = d.loc[d["complete"], "users_total"].to_numpy(dtype=float)[::-1]
    weeks = [u[7 * i] / u[7 * i + 7] - 1.0 for i in range((u.size - 1) // 7)]
    s = _streak(np.array(weeks[::-1]) >= 0.15)
    return Condition("growth_15_3w", "weekly user growth >= 15 %, 3 consecutive weeks",
                     float(weeks[0]), 0.15, s >= 3, s, 3)


def _window_rules(w: World) -> list[Condition]:
    """Business and feedback rules over trailing windows of complete days."""
    d = w.daily[w.daily["complete"]]
    m, wk, prev = d.tail(30), d.tail(7), d.iloc[-14:-7]
    lo, hi = w.day_bounds(len(w.daily) - 31), w.day_bounds(len(w.daily) - 2)[1]
    subs = w.subscriptions
    active = ((subs["started_at"] < hi) & (subs["canceled_at"].fillna(np.inf) >= lo[0])).sum()
    churn = float(m["canceled_subs"].sum()) / max(int(active), 1)
    nps = w.nps[(w.nps["answered_at"] >= lo[0]) & (w.nps["answered_at"] < hi)]["score"]
    nps_v = 100.0 * (float((nps >= 9).mean()) - float((nps <= 6).mean()))
    vals = [("revenue_300", "revenue (30 d) > 3 x infra cost ($300)",
             float(m["revenue_usd"].sum()), 300.0, "gt"),
            ("conversion_5", "paid conversion (30 d) > 5 %",
             float(m["new_subs"].sum()) / float(m["signups"].sum()), 0.05, "gt"),
            ("churn_10", "monthly churn < 10 %", churn, 0.10, "lt"),
            ("nps_40", "NPS (30 d) > 40", nps_v, 40.0, "gt"),
            ("slow_10_weekly", "'slow' complaints > 10 % of the week's feedback",
             float(wk["fb_slow"].sum()) / float(wk["fb_total"].sum()), 0.10, "gt"),
            ("peak_connection_failures", "connection failures reported at peak (7 d)",
             float(wk["fb_conn_peak"].sum()), 1.0, "ge"),
            ("ai_wait_rising", "ai_wait complaints rising week over week",
             float(wk["fb_ai_wait"].sum()) - float(prev["fb_ai_wait"].sum()), 0.0, "gt")]
    ops = {"gt": np.greater, "lt": np.less, "ge": np.greater_equal}
    return [Condition(k, desc, v, thr, bool(ops[op](v, thr)), int(bool(ops[op](v, thr))), 1)
            for k, desc, v, thr, op in vals]


# ---------------------------------------------------------------- the world

@dataclass(frozen=True, eq=False)
class World:
    """The modelled business. Times in the entity tables are epoch seconds (float, UTC)."""

    now: datetime
    days: int
    seed: int
    daily: pd.DataFrame
    slots: pd.DataFrame
    users: pd.DataFrame
    sessions: pd.DataFrame
    subscriptions: pd.DataFrame
    payments: pd.DataFrame
    nps: pd.DataFrame
    feedback: pd.DataFrame
    marketing: pd.DataFrame
    infra_costs: pd.DataFrame
    enterprise: pd.DataFrame
    t0: int = field(default=0)

    @classmethod
    def build(cls, now: datetime, days: int = 90, seed: int = 7) -> World:
        """Model the `days` local days (Asia/Seoul) ending with the day containing `now`."""
        cal = _calendar(now, days)
        g = {n: np.random.default_rng(s)
             for n, s in zip(_STREAMS, np.random.SeedSequence(seed).spawn(len(_STREAMS)),
                             strict=True)}
        first = datetime.fromtimestamp(cal.t0, TZ).date()
        wd = np.array([(first + timedelta(days=i)).weekday() for i in range(days)])
        users_total, full, base = _users_by_day(g["users"], cal, wd)
        dau, dau_full = _dau(g["dau"], cal, wd, full)
        tables = _entity_tables(g, cal, users_total, base, dau, dau_full)
        created = tables["users"]["created_at"].to_numpy()
        ts = _slot_grid(cal)[0]
        users_at = np.searchsorted(created, ts, side="right")
        slots = _slots_frame(g["ops"], cal, dau_full, users_at)
        daily = _daily_frame(cal, wd, users_total, base, dau, dau_full, tables, slots)
        return cls(now=now, days=days, seed=seed, daily=daily, slots=slots, t0=cal.t0,
                   **tables)

    def day_bounds(self, k: int) -> tuple[float, float]:
        """[start, end) epoch seconds of local day index k."""
        start = float(self.t0 + k * DAY_S)
        return start, start + DAY_S

    def phase1_conditions(self) -> list[Condition]:
        """The phase 1 -> 2 trigger conditions, evaluated on complete days (see module doc)."""
        rules = _streak_rules(self.daily)
        rules.insert(2, _growth_rule(self.daily))
        by_key = {c.key: c for c in rules + _window_rules(self)}
        return [by_key[k] for k in CONDITION_KEYS]

    def rows(self, table: str) -> Iterator[tuple[object, ...]]:
        """Rows of an app-database table, in lab/app_schema.sql column order."""
        return _rows(self, table)

    def users_rows(self) -> Iterator[tuple[object, ...]]:
        """Rows for `users`."""
        return self.rows("users")

    def daily_active_users_rows(self) -> Iterator[tuple[object, ...]]:
        """Rows for `daily_active_users`."""
        return self.rows("daily_active_users")


def _entity_tables(g: dict[str, np.random.Generator], cal: _Cal, users_total: np.ndarray,
                   base: int, dau: np.ndarray, dau_full: np.ndarray) -> dict[str, pd.DataFrame]:
    pool = np.concatenate([[base], users_total[:-1]])
    users = _users_table(g["users"], cal, users_total, base)
    subs = _subscriptions_table(g["subs"], cal, users)
    signups = np.diff(np.concatenate([[base], users_total]))
    return {
        "users": users, "sessions": _sessions_table(g["sessions"], cal, dau, pool),
        "subscriptions": subs, "payments": _payments_table(g["pay"], cal, subs),
        "nps": _nps_table(g["nps"], cal, dau_full, pool),
        "feedback": _feedback_table(g["fb"], cal, dau_full, pool),
        "marketing": _marketing_table(g["mkt"], cal, signups),
        "infra_costs": _infra_costs_table(cal), "enterprise": _enterprise_table(g["meta"], cal),
    }


# ---------------------------------------------------------------- DB rows

def _ts(v: np.ndarray) -> list[datetime | None]:
    utc = ZoneInfo("UTC")
    return [None if np.isnan(x) else datetime.fromtimestamp(float(x), utc) for x in v]


_TABLE_COLUMNS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # app table: (world attribute, columns, timestamp columns)
    "users": ("users", ("id", "created_at", "country", "acquisition_channel"), ("created_at",)),
    "user_sessions": ("sessions", ("id", "user_id", "started_at", "duration_s"),
                      ("started_at",)),
    "subscriptions": ("subscriptions", ("id", "user_id", "plan", "monthly_price_usd",
                                        "started_at", "canceled_at"),
                      ("started_at", "canceled_at")),
    "payments": ("payments", ("id", "user_id", "subscription_id", "paid_at", "amount_usd",
                              "status"), ("paid_at",)),
    "nps_responses": ("nps", ("id", "user_id", "answered_at", "score"), ("answered_at",)),
    "feedback": ("feedback", ("id", "user_id", "created_at", "category", "message"),
                 ("created_at",)),
    "enterprise_inquiries": ("enterprise", ("id", "created_at", "company", "seats"),
                             ("created_at",)),
    "infra_costs": ("infra_costs", ("month", "component", "amount_usd"), ()),
}


def _rows(w: World, table: str) -> Iterator[tuple[object, ...]]:
    if table == "daily_active_users":
        return zip(w.daily["day"], w.daily["dau"].astype(int).tolist(), strict=True)
    if table == "marketing_spend":
        days = w.daily["day"].to_numpy()[w.marketing["day_idx"].to_numpy()]
        return zip(days, w.marketing["channel"], w.marketing["amount_usd"].tolist(),
                   strict=True)
    if table not in _TABLE_COLUMNS:
        raise KeyError(f"unknown app table {table!r}")
    attr, cols, ts_cols = _TABLE_COLUMNS[table]
    df: pd.DataFrame = getattr(w, attr)
    data = [_ts(df[c].to_numpy(dtype=float)) if c in ts_cols else df[c].tolist()
            for c in cols]
    return zip(*data, strict=True)
