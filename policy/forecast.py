"""Capacity forecast: when will each threshold of the next phase be crossed? (pure)

The seed's dashboard panel extrapolates `predict_linear(total_users[1h], 7d)` towards the
phase lines. This module answers the same question per daily series with a date and a range:

1. `prepare_history` turns a date-indexed series into one value per complete day: values dated
   `today` or later are partial and dropped, leading and trailing missing days are dropped
   (the forecast starts after the last observed day), interior gaps (NaN or absent dates)
   are linearly interpolated because the recursive models need one value per day. Every
   such step is reported in `notes`.
2. `backtest` scores a model by rolling-origin evaluation (fit on y[:t], forecast 7 and 14
   days ahead, for every origin t >= min_train): MAPE, MAE and interval coverage per horizon.
   `choose_model` picks the lowest mean MAPE over the horizons; ties go to the simpler model.
3. Forecasts are clamped to physical `Bounds` (counts >= 0, percentages within [0, 100],
   cumulative counts never below the last value and never decreasing).
4. `threshold_eta` reads the crossing date off the central path and off both interval bounds
   (models and intervals: policy/forecast_models.py); `forecast_series` does 1-4 for one
   series; `lead_time_alerts` flags crossings closer than the D-7 (hardware order) lead time.

Nothing here reads the clock or does I/O: `today` is an argument; the flow does the rest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Literal, NamedTuple

import numpy as np

from phasegate.policy.forecast_models import (
    MIN_POINTS,
    FittedModel,
    Model,
    NotApplicable,
    Prediction,
    Widened,
    default_models,
)

__all__ = [
    "Alert",
    "BacktestScore",
    "Bounds",
    "Comparison",
    "Eta",
    "History",
    "SeriesForecast",
    "backtest",
    "checklist_lead_days",
    "choose_model",
    "clamp",
    "forecast_series",
    "alerts_to_send",
    "lead_time_alerts",
    "prepare_history",
    "stage_lead_days",
    "threshold_eta",
]

Comparison = Literal[">", ">=", "<", "<="]
Threshold = tuple[str, float, Comparison]
DEFAULT_HORIZONS = (7, 14)
DEFAULT_MIN_TRAIN = 21
TIE_TOLERANCE = 0.05  # MAPE percentage points within which two models count as tied

_COMPARE: dict[str, Callable[[Any, float], Any]] = {
    ">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal,
}


# ---------------------------------------------------------------- bounds


@dataclass(frozen=True)
class Bounds:
    """Physical limits of a series; `cumulative` series never decrease."""

    lower: float | None = 0.0
    upper: float | None = None
    cumulative: bool = False

    @classmethod
    def count(cls) -> Bounds:
        """A count that can go down (DAU): >= 0."""
        return cls(0.0)

    @classmethod
    def cumulative_count(cls) -> Bounds:
        """A running total (registered users): >= the last value, never decreasing."""
        return cls(0.0, cumulative=True)

    @classmethod
    def percent(cls) -> Bounds:
        """A percentage (GPU utilization): within [0, 100]."""
        return cls(0.0, 100.0)


def clamp(prediction: Prediction, bounds: Bounds, last: float) -> Prediction:
    """Clip the path and its interval to `bounds`; `last` is the last observed value."""
    lo = -np.inf if bounds.lower is None else bounds.lower
    hi = np.inf if bounds.upper is None else bounds.upper
    if bounds.cumulative:
        lo = max(lo, last)

    def fix(path: np.ndarray) -> np.ndarray:
        path = np.clip(path, lo, hi)
        # A running total only grows: a dip in the path is noise, not fewer users.
        return np.maximum.accumulate(path) if bounds.cumulative else path

    return Prediction(fix(prediction.mean), fix(prediction.lower), fix(prediction.upper))


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class History:
    """One value per complete day, oldest first, ending `last_date`; `notes` say what changed."""

    values: np.ndarray
    last_date: date
    notes: tuple[str, ...] = ()

    @property
    def dates(self) -> list[date]:
        """The day of each value."""
        n = self.values.size
        return [self.last_date - timedelta(days=n - 1 - i) for i in range(n)]


def _daily_values(history: Mapping[date, float | None]) -> dict[date, float]:
    """{day: value} sorted by day (datetimes count as their date; None and text as NaN)."""
    out: dict[date, float] = {}
    for key, value in history.items():
        day = key.date() if isinstance(key, datetime) else key
        if day in out:
            raise ValueError("history has more than one value for a day")
        try:
            out[day] = math.nan if value is None else float(value)
        except (TypeError, ValueError):
            out[day] = math.nan
    return dict(sorted(out.items()))


def _interpolated(values: np.ndarray) -> np.ndarray:
    """NaNs replaced by linear interpolation between their observed neighbours."""
    missing = np.isnan(values)
    index = np.arange(values.size)
    filled = values.copy()
    filled[missing] = np.interp(index[missing], index[~missing], values[~missing])
    return filled


def prepare_history(history: Mapping[date, float | None] | History,
                    today: date | None = None) -> History:
    """Daily values before `today`, gaps interpolated (module doc, step 1). `history` maps a
    day to its value (None or NaN: unknown); days absent are unknown too.

    Raises ValueError when two values share a day or no value is left.
    """
    if isinstance(history, History):
        return history
    values, notes = _daily_values(history), []
    if today is not None and (partial := sum(d >= today for d in values)):
        values = {d: v for d, v in values.items() if d < today}
        notes.append(f"{partial} value(s) dated {today} or later ignored (incomplete day)")
    observed = [d for d, v in values.items() if not math.isnan(v)]
    if not observed:
        raise ValueError("history has no observed value")
    first, last = observed[0], observed[-1]
    if today is not None and (stale := (today - last).days - 1) > 0:
        notes.append(f"last {stale} day(s) before {today} missing: forecast starts after {last}")
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    full = np.array([values.get(d, math.nan) for d in days], dtype=float)
    if gaps := int(np.isnan(full).sum()):
        notes.append(f"{gaps} missing day(s) inside the history linearly interpolated")
        full = _interpolated(full)
    return History(full, last, tuple(notes))


# ---------------------------------------------------------------- backtest


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class BacktestScore:
    """Rolling-origin errors of one model, per horizon (days ahead).

    `width_factor` is how much the model's interval must widen (>= 1) for `level` of the
    backtest's actual values to fall inside it, at the worst horizon.
    """

    model: str
    mape: dict[int, float]
    mae: dict[int, float]
    coverage: dict[int, float]
    origins: dict[int, int]
    width_factor: float = 1.0
    note: str = ""

    @property
    def applicable(self) -> bool:
        """Whether the model could be scored at all."""
        return any(self.origins.values())

    @property
    def score(self) -> float:
        """Mean MAPE over the horizons (inf when it cannot be scored)."""
        values = list(self.mape.values())
        mean = float(np.mean(values)) if values else math.inf
        return mean if math.isfinite(mean) else math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-horizon maps keyed by the horizon as text; NaN -> null."""
        def per(d: dict[int, float]) -> dict[str, float | None]:
            return {str(h): _finite(v) for h, v in d.items()}
        return {"model": self.model, "mape_pct": per(self.mape), "mae": per(self.mae),
                "coverage": per(self.coverage),
                "origins": {str(h): n for h, n in self.origins.items()},
                "score": _finite(self.score), "width_factor": self.width_factor,
                "note": self.note}


class _Row(NamedTuple):
    actual: float
    forecast: float
    inside: bool
    z: float  # |error| / interval half-width on the error's side (unclamped forecast)


def _unscored(model: str, horizons: Sequence[int], note: str) -> BacktestScore:
    nan = {h: math.nan for h in horizons}
    return BacktestScore(model, nan, dict(nan), dict(nan), dict.fromkeys(horizons, 0),
                         note=note)


def _width_factor(rows: dict[int, list[_Row]], level: float) -> tuple[float, str]:
    """The widening that brings backtest coverage up to `level` (never narrows)."""
    # "higher": no interpolation between order statistics, so an inf z cannot make a NaN.
    quantiles = [float(np.quantile([r.z for r in entries], level, method="higher"))
                 for entries in rows.values() if entries]
    factor = max([1.0, *quantiles])
    if not math.isfinite(factor):
        return 1.0, "interval has zero width (no in-sample error): cannot be calibrated"
    return round(factor, 3), ""


def _summarize(model: str, rows: dict[int, list[_Row]], level: float) -> BacktestScore:
    """Per-horizon MAPE, MAE, coverage and origin counts, plus the width factor."""
    mape, mae, cov, n = {}, {}, {}, {}
    for h, entries in rows.items():
        a = np.array([r.actual for r in entries], dtype=float)
        err = a - np.array([r.forecast for r in entries], dtype=float)
        nonzero = a != 0  # percentage error is undefined at 0: MAPE skips those, MAE keeps them
        mape[h] = float(np.mean(np.abs(err[nonzero] / a[nonzero])) * 100) \
            if nonzero.any() else math.nan
        mae[h] = float(np.mean(np.abs(err))) if a.size else math.nan
        cov[h] = float(np.mean([r.inside for r in entries])) if entries else math.nan
        n[h] = len(entries)
    factor, note = _width_factor(rows, level)
    return BacktestScore(model, mape, mae, cov, n, factor, note)


def _row(raw: Prediction, shown: Prediction, step: int, actual: float) -> _Row:
    mean = float(raw.mean[step])
    err = actual - mean
    half = float(raw.upper[step]) - mean if err > 0 else mean - float(raw.lower[step])
    # Rounding noise on an exact fit is no error: a zero-width band would turn it into inf.
    exact = abs(err) <= 1e-9 * max(1.0, abs(actual))
    z = 0.0 if exact else abs(err) / half if half > 0 else math.inf
    inside = bool(shown.lower[step] <= actual <= shown.upper[step])
    return _Row(actual, float(shown.mean[step]), inside, z)


def backtest(y: np.ndarray | Sequence[float], model: Model,
             horizons: Sequence[int] = DEFAULT_HORIZONS, min_train: int = DEFAULT_MIN_TRAIN,
             step: int = 1, bounds: Bounds | None = None) -> BacktestScore:
    """Rolling-origin backtest: fit on y[:t] for t = min_train, min_train + step, ...; score
    the forecast h days ahead against y[t + h - 1] for each horizon h.

    A model that does not apply at some origin (NotApplicable) is reported unscored.
    """
    values = np.asarray(y, dtype=float)
    rows: dict[int, list[_Row]] = {h: [] for h in horizons}
    for origin in range(min_train, values.size - min(horizons) + 1, step):
        train = values[:origin]
        try:
            raw = model.fit(train).predict(max(horizons))
        except NotApplicable as exc:
            return _unscored(model.name, horizons, f"not applicable: {exc}")
        shown = clamp(raw, bounds, float(train[-1])) if bounds is not None else raw
        for h in horizons:
            if origin + h - 1 < values.size:
                rows[h].append(_row(raw, shown, h - 1, float(values[origin + h - 1])))
    if not any(rows.values()):
        return _unscored(model.name, horizons,
                         f"history of {values.size} days is too short to backtest "
                         f"(needs {min_train + min(horizons)})")
    return _summarize(model.name, rows, model.level)


def _baseline(candidates: Sequence[Model]) -> Model:
    by_name = {m.name: m for m in candidates}
    return by_name.get("linear") or min(candidates, key=lambda m: m.rank)


def choose_model(y: np.ndarray | Sequence[float], candidates: Sequence[Model] | None = None,
                 horizons: Sequence[int] = DEFAULT_HORIZONS,
                 min_train: int = DEFAULT_MIN_TRAIN, step: int = 1,
                 bounds: Bounds | None = None) -> tuple[str, dict[str, BacktestScore]]:
    """Backtest every candidate and pick the lowest mean MAPE over `horizons`.

    Scores within TIE_TOLERANCE percentage points of the best are ties, won by the simpler
    model (lower `rank`). When nothing can be scored, the baseline (linear) is returned.
    """
    models = list(candidates) if candidates else default_models()
    scores = {m.name: backtest(y, m, horizons, min_train, step, bounds) for m in models}
    best = min(s.score for s in scores.values())
    if not math.isfinite(best):
        return _baseline(models).name, scores
    for model in sorted(models, key=lambda m: m.rank):
        if scores[model.name].score <= best + TIE_TOLERANCE:
            return model.name, scores
    raise AssertionError("unreachable: the best model is within its own tolerance")


# ---------------------------------------------------------------- ETA


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day is not None else None


@dataclass(frozen=True)
class Eta:
    """When a series is forecast to cross one threshold, with the range from the interval.

    `eta_early` comes from the bound that crosses first (upper for > / >=), `eta_late` from
    the other one; None means "not within the horizon".
    """

    label: str
    threshold: float
    comparison: Comparison
    model: str
    eta: date | None
    eta_early: date | None
    eta_late: date | None
    already_crossed: bool
    latest_value: float
    latest_date: date
    note: str

    def days_until(self, today: date) -> int | None:
        """Days from `today` to the earliest crossing (early bound, else the ETA); 0 if
        already crossed."""
        if self.already_crossed:
            return 0
        first = self.eta_early or self.eta
        return None if first is None else (first - today).days

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: dates as ISO text."""
        return {"label": self.label, "threshold": self.threshold,
                "comparison": self.comparison, "model": self.model, "eta": _iso(self.eta),
                "eta_range": [_iso(self.eta_early), _iso(self.eta_late)],
                "already_crossed": self.already_crossed, "latest_value": self.latest_value,
                "latest_date": self.latest_date.isoformat(), "note": self.note}


def _first_day(path: np.ndarray, comparison: str, threshold: float, start: date
               ) -> date | None:
    """Date of the first step of `path` (step 1 = start + 1 day) meeting the threshold."""
    hits = np.flatnonzero(_COMPARE[comparison](path, threshold))
    return start + timedelta(days=int(hits[0]) + 1) if hits.size else None


def _crossed_since(hist: History, comparison: str, threshold: float) -> date:
    """First day of the latest run of days that meet the threshold."""
    met = _COMPARE[comparison](hist.values, threshold)
    misses = np.flatnonzero(~met)
    first = 0 if misses.size == 0 else int(misses[-1]) + 1
    return hist.dates[first]


def _eta_note(eta: Eta, horizon_end: date) -> str:
    what = f"{eta.comparison} {eta.threshold:g}"
    if eta.eta is None and eta.eta_early is None:
        return (f"never {what} by {horizon_end} with {eta.model}: the forecast and its "
                f"interval stay short of it (flat, slow or declining series)")
    if eta.eta is None:
        return (f"central forecast not {what} by {horizon_end}; the interval's optimistic "
                f"bound reaches it on {eta.eta_early}")
    late = eta.eta_late or f"after {horizon_end}"
    return f"{what} forecast on {eta.eta} (range {eta.eta_early} to {late}, {eta.model})"


def threshold_eta(history: Mapping[date, float | None] | History, threshold: float,
                  comparison: Comparison,
                  fitted: FittedModel, today: date, horizon_days: int = 365,
                  bounds: Bounds | None = None, label: str = "") -> Eta:
    """The first forecast day meeting `value <comparison> threshold`, and its range.

    `fitted` must be fitted on `prepare_history(history, today).values`. The forecast runs
    from the day after the last observation to `today + horizon_days`. If the latest value
    already meets the threshold, `already_crossed` is set and all three dates are the first
    day of the current run of days meeting it.
    """
    hist = prepare_history(history, today)
    last = float(hist.values[-1])
    base = Eta(label or f"{comparison} {threshold:g}", threshold, comparison, fitted.name,
               None, None, None, False, last, hist.last_date, "")
    if _COMPARE[comparison](last, threshold):
        since = _crossed_since(hist, comparison, threshold)
        return replace(base, eta=since, eta_early=since, eta_late=since, already_crossed=True,
                       note=f"already {comparison} {threshold:g} since {since} "
                            f"(latest {last:g} on {hist.last_date})")
    steps = max((today - hist.last_date).days + horizon_days, 1)
    pred = fitted.predict(steps)
    pred = clamp(pred, bounds, last) if bounds is not None else pred
    # For a rising threshold the upper bound crosses first; for a falling one the lower.
    rising = comparison in (">", ">=")
    early, late = (pred.upper, pred.lower) if rising else (pred.lower, pred.upper)
    central, first, last_bound = (_first_day(path, comparison, threshold, hist.last_date)
                                  for path in (pred.mean, early, late))
    eta = replace(base, eta=central, eta_early=first, eta_late=last_bound)
    return replace(eta, note=_eta_note(eta, hist.last_date + timedelta(days=steps)))


# ---------------------------------------------------------------- one series


@dataclass(frozen=True)
class SeriesForecast:
    """Everything the capacity-forecast flow reports for one series."""

    name: str
    model: str | None
    etas: list[Eta]
    backtest: dict[str, BacktestScore]
    notes: list[str]
    last_date: date | None
    params: dict[str, float] = field(default_factory=dict)
    path: Prediction | None = field(default=None, repr=False)

    @property
    def most_urgent(self) -> Eta | None:
        """The not-yet-crossed ETA with the earliest date (early bound first), if any."""
        open_ = [e for e in self.etas if not e.already_crossed and (e.eta_early or e.eta)]
        return min(open_, key=lambda e: e.eta_early or e.eta or date.max, default=None)

    def to_dict(self, include_path: bool = False) -> dict[str, Any]:
        """JSON-ready. `eta` is the most urgent open threshold; `etas` lists them all."""
        urgent = self.most_urgent
        out: dict[str, Any] = {
            "name": self.name, "model": self.model, "last_date": _iso(self.last_date),
            "eta": _iso(urgent.eta) if urgent else None,
            "eta_range": [_iso(urgent.eta_early), _iso(urgent.eta_late)] if urgent else None,
            "eta_label": urgent.label if urgent else None,
            "etas": [e.to_dict() for e in self.etas], "params": self.params,
            "backtest": {k: v.to_dict() for k, v in self.backtest.items()},
            "notes": self.notes,
        }
        if include_path and self.path is not None:
            out["path"] = {k: [_finite(float(v)) for v in getattr(self.path, k)]
                           for k in ("mean", "lower", "upper")}
        return out


def _select(values: np.ndarray, models: list[Model], horizons: Sequence[int],
            min_train: int, bounds: Bounds) -> tuple[Model, dict[str, BacktestScore], str]:
    """The model to use, the scores, and a sentence saying why."""
    baseline = _baseline(models)
    needed = min_train + min(horizons)
    if values.size < needed:
        return baseline, {}, (f"only {values.size} days of history (backtest needs "
                              f"{needed}): baseline {baseline.name} used without a backtest")
    name, scores = choose_model(values, models, horizons, min_train, 1, bounds)
    chosen = next(m for m in models if m.name == name)
    base = scores[baseline.name].score
    return chosen, scores, (f"{name} chosen by backtest: mean MAPE "
                            f"{scores[name].score:.2f} % vs baseline {base:.2f} %")


def forecast_series(name: str, history: Mapping[date, float | None],
                    thresholds: Iterable[Threshold],
                    today: date, bounds: Bounds | None = None,
                    candidates: Sequence[Model] | None = None,
                    horizons: Sequence[int] = DEFAULT_HORIZONS,
                    min_train: int = DEFAULT_MIN_TRAIN,
                    horizon_days: int = 365) -> SeriesForecast:
    """Backtest the candidates on `history`, pick one, forecast, and date each threshold.

    `thresholds` are (label, value, comparison), e.g. ("phase 3: 10K users", 10_000, ">=").
    Raises ValueError when the history has two values for one day or no value at all.
    """
    hist = prepare_history(history, today)
    bounds = bounds or Bounds()
    if hist.values.size < MIN_POINTS:
        return SeriesForecast(name, None, [], {}, [*hist.notes, f"only {hist.values.size} "
                              f"day(s) of history: no forecast"], hist.last_date)
    models = list(candidates) if candidates else default_models()
    model, scores, reason = _select(hist.values, models, horizons, min_train, bounds)
    fitted: FittedModel = model.fit(hist.values)
    factor = scores[model.name].width_factor if scores else 1.0
    if factor > 1:
        # The model's own band assumes it is the right model; the backtest says how wrong
        # that was at 7-14 days, and the same widening applies to the whole path.
        fitted = Widened(fitted, factor)
        reason += f"; interval widened x{factor:g} to match the backtest's coverage"
    etas = [threshold_eta(hist, value, cmp, fitted, today, horizon_days, bounds, label)
            for label, value, cmp in thresholds]
    steps = max((today - hist.last_date).days + horizon_days, 1)
    path = clamp(fitted.predict(steps), bounds, float(hist.values[-1]))
    return SeriesForecast(name, model.name, etas, scores, [*hist.notes, reason],
                          hist.last_date, fitted.params(), path)


# ---------------------------------------------------------------- lead time


_STAGE = re.compile(r"D-(\d+)")


def stage_lead_days(stage: str) -> int | None:
    """Days before the change a checklist stage happens: "D-7" -> 7, "D-Day" -> 0, and None
    for stages after it ("D+1..7")."""
    if stage == "D-Day":
        return 0
    match = _STAGE.fullmatch(stage)
    return int(match[1]) if match else None


def checklist_lead_days(stages: Iterable[str]) -> int:
    """The lead time of a checklist: its earliest stage, e.g. ["D-7", "D-3", "D-Day"] -> 7
    (the hardware order). 0 when no stage comes before the change.

    Use with a plan: `checklist_lead_days(s.stage for s in transition.checklist)`.
    """
    leads = [d for d in (stage_lead_days(s) for s in stages) if d is not None]
    return max(leads, default=0)


@dataclass(frozen=True)
class Alert:
    """A threshold forecast to be crossed within the purchase lead time."""

    series: str
    eta: Eta
    days_until: int
    lead_days: int
    basis: Literal["already_crossed", "eta", "early_bound"]
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"series": self.series, "eta": self.eta.to_dict(), "days_until": self.days_until,
                "lead_days": self.lead_days, "basis": self.basis, "message": self.message}


def _alert_message(series: str, eta: Eta, lead_days: int, stage: str) -> str:
    what = f"{series} {eta.comparison} {eta.threshold:g} ({eta.label})"
    if eta.already_crossed:
        when = f"already crossed since {eta.eta}"
    else:
        late = eta.eta_late or "beyond the horizon"
        when = (f"forecast between {eta.eta_early} and {late}"
                f" (most likely {eta.eta or 'beyond the horizon'}, {eta.model})")
    return (f"{what}: {when}, within the {lead_days}-day lead time of the {stage} checklist "
            f"(hardware order): start the purchase now.")


def lead_time_alerts(forecasts: Iterable[SeriesForecast], today: date, lead_days: int,
                     stage: str = "D-7") -> list[Alert]:
    """Alerts for every threshold whose earliest crossing (the early bound, else the ETA) is
    at most `lead_days` away, or already crossed.

    At exactly `lead_days` away today is the last day to order in time, hence "at most".
    """
    alerts = []
    for forecast in forecasts:
        for eta in forecast.etas:
            days = eta.days_until(today)
            if days is None or days > lead_days:
                continue
            basis: Literal["already_crossed", "eta", "early_bound"] = (
                "already_crossed" if eta.already_crossed
                else "eta" if eta.eta is not None and (eta.eta - today).days <= lead_days
                else "early_bound")
            alerts.append(Alert(forecast.name, eta, days, lead_days, basis,
                                _alert_message(forecast.name, eta, lead_days, stage)))
    return alerts


REMIND_DAYS = 7   # an alert that still holds is repeated weekly, never silenced for good


def _notice(alert: Alert, today: date, notified_on: date) -> dict[str, Any]:
    return {**alert.to_dict(), "crossing_on": (today + timedelta(days=alert.days_until))
            .isoformat(), "notified_on": notified_on.isoformat()}


def _why_send(alert: Alert, before: Mapping[str, Any] | None, today: date,
              remind_days: int) -> str | None:
    """Why this alert goes out today ("new", "escalated", "earlier", "reminder"), or None."""
    if before is None:
        return "new"
    if alert.basis == "already_crossed" and before.get("basis") != "already_crossed":
        return "escalated"
    crossing = today + timedelta(days=alert.days_until)
    if crossing < date.fromisoformat(before["crossing_on"]):
        return "earlier"
    if (today - date.fromisoformat(before["notified_on"])).days >= remind_days:
        return "reminder"
    return None


def alerts_to_send(alerts: Iterable[Alert], previous: Iterable[Mapping[str, Any]],
                   today: date, remind_days: int = REMIND_DAYS,
                   ) -> tuple[list[tuple[Alert, str]], list[dict[str, Any]]]:
    """Which of today's lead-time alerts to notify, so a daily forecast does not repeat itself.

    `previous` is the last run's stored notices (the second value this returns). An alert goes
    out when it is new (or came back), when it escalates to "already crossed", when its
    earliest crossing moved earlier, or `remind_days` after it last went out. Returns the
    (alert, why) pairs to send and today's notices to store.
    """
    before = {(p["series"], p["eta"]["label"]): p for p in previous
              if "crossing_on" in p and "notified_on" in p}
    send, notices = [], []
    for alert in alerts:
        last = before.get((alert.series, alert.eta.label))
        why = _why_send(alert, last, today, remind_days)
        notified = today if why or last is None else date.fromisoformat(last["notified_on"])
        if why:
            send.append((alert, why))
        notices.append(_notice(alert, today, notified))
    return send, notices
