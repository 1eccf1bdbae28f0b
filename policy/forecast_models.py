"""Forecast models for daily capacity series (pure numpy: no clock, no I/O).

Each model is a small frozen object with `name`, `rank` (simplicity: lower is simpler, used to
break ties) and `fit(y) -> FittedModel`; a fitted model's `predict(h)` returns
`Prediction(mean, lower, upper)`, arrays for steps 1..h after the last point of `y`.

- `Linear`: the predict_linear equivalent and the baseline. Prometheus's `predict_linear`
  fits value against time by ordinary least squares over the range window and extrapolates
  the line; here the window is the last `window` days.
- `LogLinear`: exponential growth, OLS on log(y) (strictly positive series only).
- `DampedTrend`: Holt's linear method with a damping factor phi (error-correction form of
  ETS(A,Ad,N)); alpha, beta and phi come from a grid search minimizing the one-step SSE.
- `WeeklyDamped`: multiplicative weekday factors (ratio to a centred 7-day moving average)
  removed, `DampedTrend` on the adjusted series, factors put back: for DAU-like series.

Intervals (two-sided, at `level`, default 80 %) come from each model's own in-sample
residuals, with the model's analytic forecast variance:
- OLS models: the regression prediction interval, s * sqrt(1 + 1/n + (x0 - xbar)^2 / Sxx)
  with a Student t quantile (n - 2 degrees of freedom); for `LogLinear` it is computed on
  log(y) and back-transformed, so the band is asymmetric and stays positive.
- Holt models: sigma^2 * (1 + sum_{j<h} c_j^2), c_j = alpha * (1 + beta * (phi + ... + phi^j))
  (Hyndman et al., ETS(A,Ad,N)), sigma from the one-step errors; the weekly variant scales
  the band by the day's weekday factor.
The t quantile uses the Cornish-Fisher expansion around the normal one (no scipy here).
These bands assume the model is right; growth that bends makes them too narrow, so
policy/forecast.py widens them by the factor its backtest measured (`Widened`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import ClassVar, NamedTuple, Protocol

import numpy as np

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_WINDOW",
    "DampedTrend",
    "FittedModel",
    "HoltFit",
    "Linear",
    "LinearFit",
    "LogLinear",
    "Model",
    "NotApplicable",
    "Prediction",
    "WeeklyDamped",
    "Widened",
    "default_models",
    "t_quantile",
    "weekday_factors",
]

DEFAULT_LEVEL = 0.8
# Four whole weeks: weekday effects average out of a straight-line fit, and the fit follows
# the recent growth rate rather than the whole history's (growth in the lab slows down).
DEFAULT_WINDOW = 28
MIN_POINTS = 3
_PERIOD = 7


class NotApplicable(ValueError):
    """The model cannot be fitted to this series (e.g. log of a non-positive value)."""


class Prediction(NamedTuple):
    """Forecast for steps 1..h: central path and the interval bounds."""

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


class FittedModel(Protocol):
    """A model fitted to one series."""

    @property
    def name(self) -> str:
        """The model's name."""
        ...

    def predict(self, h: int) -> Prediction:
        """Forecast the next `h` days."""
        ...

    def params(self) -> dict[str, float]:
        """The fitted parameters, for reports."""
        ...


class Model(Protocol):
    """An unfitted model: `fit(y)` on a NaN-free daily series, oldest first."""

    @property
    def name(self) -> str:
        """The model's name, e.g. "linear"."""
        ...

    @property
    def rank(self) -> int:
        """Simplicity: the lower, the simpler (ties in the backtest go to it)."""
        ...

    @property
    def level(self) -> float:
        """Nominal coverage of the interval, e.g. 0.8."""
        ...

    def fit(self, y: np.ndarray) -> FittedModel:
        """Fit to `y`. Raises NotApplicable when the model does not apply to the series."""
        ...


def t_quantile(p: float, dof: float) -> float:
    """Student t quantile (Cornish-Fisher expansion; within ~1 % for dof >= 3)."""
    z = NormalDist().inv_cdf(p)
    if not np.isfinite(dof) or dof <= 0:
        return z
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3


def _checked(y: np.ndarray, window: int | None) -> np.ndarray:
    values = np.asarray(y, dtype=float)
    if values.ndim != 1 or not np.isfinite(values).all():
        raise ValueError("fit needs a 1-D series without NaN (prepare the history first)")
    values = values[-window:] if window else values
    if values.size < MIN_POINTS:
        raise NotApplicable(f"needs at least {MIN_POINTS} points, got {values.size}")
    return values


def _steps(h: int) -> np.ndarray:
    if h < 1:
        raise ValueError("h must be >= 1")
    return np.arange(1, h + 1, dtype=float)


# ---------------------------------------------------------------- least squares


@dataclass(frozen=True)
class LinearFit:
    """A fitted straight line (on y, or on log y when `log`)."""

    name: str
    intercept: float
    slope: float
    n: int
    sxx: float
    sigma: float
    level: float
    log: bool = False

    def predict(self, h: int) -> Prediction:
        """Line extrapolation with the OLS prediction interval (see the module doc)."""
        x0 = self.n - 1 + _steps(h)
        centre = self.intercept + self.slope * x0
        xbar = (self.n - 1) / 2
        se = self.sigma * np.sqrt(1 + 1 / self.n + (x0 - xbar) ** 2 / self.sxx)
        q = t_quantile((1 + self.level) / 2, self.n - 2)
        lower, upper = centre - q * se, centre + q * se
        if self.log:
            # exp of the log-scale forecast is the median, the 50 % point a crossing date needs.
            return Prediction(np.exp(centre), np.exp(lower), np.exp(upper))
        return Prediction(centre, lower, upper)

    def params(self) -> dict[str, float]:
        """Intercept (at the first point of the window), slope per day and residual sd."""
        return {"intercept": self.intercept, "slope": self.slope, "sigma": self.sigma}


def _ols(y: np.ndarray) -> tuple[float, float, float, float]:
    """(intercept, slope, Sxx, residual sd) of y against 0..n-1."""
    x = np.arange(y.size, dtype=float)
    xbar = x.mean()
    sxx = float(((x - xbar) ** 2).sum())
    slope = float(((x - xbar) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * xbar)
    resid = y - (intercept + slope * x)
    sigma = float(np.sqrt((resid**2).sum() / max(y.size - 2, 1)))
    return intercept, slope, sxx, sigma


@dataclass(frozen=True)
class Linear:
    """predict_linear: OLS of value against day over the last `window` days (the baseline)."""

    window: int | None = DEFAULT_WINDOW
    level: float = DEFAULT_LEVEL
    name: ClassVar[str] = "linear"
    rank: ClassVar[int] = 0

    def fit(self, y: np.ndarray) -> LinearFit:
        """Fit the line; raises NotApplicable below 3 points."""
        values = _checked(y, self.window)
        a, b, sxx, s = _ols(values)
        return LinearFit(self.name, a, b, values.size, sxx, s, self.level)


@dataclass(frozen=True)
class LogLinear:
    """Exponential growth: OLS of log(y) against day, back-transformed."""

    window: int | None = DEFAULT_WINDOW
    level: float = DEFAULT_LEVEL
    name: ClassVar[str] = "log_linear"
    rank: ClassVar[int] = 1

    def fit(self, y: np.ndarray) -> LinearFit:
        """Fit; raises NotApplicable when a value in the window is <= 0."""
        values = _checked(y, self.window)
        if (values <= 0).any():
            raise NotApplicable("log-linear needs a strictly positive series")
        a, b, sxx, s = _ols(np.log(values))
        return LinearFit(self.name, a, b, values.size, sxx, s, self.level, log=True)


# ---------------------------------------------------------------- Holt, damped

_ALPHAS = np.linspace(0.05, 0.95, 10)
_BETAS = np.array([0.01, 0.05, 0.1, 0.2, 0.3, 0.5])
# phi = 1 is Holt's undamped method: the grid may pick it when the trend really is straight.
_PHIS = np.array([0.8, 0.85, 0.9, 0.95, 0.98, 1.0])
_GRID = [g.ravel() for g in np.meshgrid(_ALPHAS, _BETAS, _PHIS, indexing="ij")]


def _holt_states(y: np.ndarray, alpha: np.ndarray, beta: np.ndarray, phi: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the recursion for every parameter set at once: (level, trend, one-step SSE)."""
    # Initial trend: the mean slope of the first week, less noisy than y[1] - y[0].
    k = min(_PERIOD, y.size - 1)
    level = np.full(alpha.shape, y[0])
    trend = np.full(alpha.shape, (y[k] - y[0]) / k)
    sse = np.zeros(alpha.shape)
    for value in y[1:]:
        expected = level + phi * trend
        error = value - expected
        sse += error * error
        level = expected + alpha * error
        trend = phi * trend + alpha * beta * error
    return level, trend, sse


@dataclass(frozen=True)
class HoltFit:
    """Fitted damped-trend state, optionally with multiplicative weekday factors."""

    name: str
    level_: float
    trend: float
    alpha: float
    beta: float
    phi: float
    sigma: float
    dof: int
    level: float
    factors: np.ndarray | None = field(default=None, repr=False)
    next_phase: int = 0

    def predict(self, h: int) -> Prediction:
        """Damped extrapolation l + (phi + ... + phi^h) b with the ETS(A,Ad,N) variance."""
        steps = _steps(h)
        phi_h = np.cumsum(self.phi ** steps)
        centre = self.level_ + phi_h * self.trend
        c = self.alpha * (1 + self.beta * phi_h[:-1])
        var = self.sigma**2 * (1 + np.concatenate([[0.0], np.cumsum(c * c)]))
        half = t_quantile((1 + self.level) / 2, self.dof) * np.sqrt(var)
        lower, upper = centre - half, centre + half
        if self.factors is not None:
            f = self.factors[(self.next_phase + steps.astype(int) - 1) % _PERIOD]
            centre, lower, upper = centre * f, lower * f, upper * f
        return Prediction(centre, lower, upper)

    def params(self) -> dict[str, float]:
        """Smoothing parameters, damping and the one-step residual sd."""
        return {"alpha": self.alpha, "beta": self.beta, "phi": self.phi, "sigma": self.sigma}


def _fit_holt(name: str, values: np.ndarray, level: float) -> HoltFit:
    """Grid-search alpha, beta, phi by one-step SSE; ties go to the first (smoothest) set."""
    alpha, beta, phi = _GRID
    states, trends, sse = _holt_states(values, alpha, beta, phi)
    best = int(np.argmin(sse))
    errors = values.size - 1
    dof = max(errors - 3, 1)
    sigma = float(np.sqrt(sse[best] / dof))
    return HoltFit(name, float(states[best]), float(trends[best]), float(alpha[best]),
                   float(beta[best]), float(phi[best]), sigma, dof, level)


@dataclass(frozen=True)
class DampedTrend:
    """Holt's linear method with damping, parameters by grid search on one-step SSE."""

    window: int | None = DEFAULT_WINDOW
    level: float = DEFAULT_LEVEL
    name: ClassVar[str] = "damped_trend"
    rank: ClassVar[int] = 2

    def fit(self, y: np.ndarray) -> HoltFit:
        """Fit; raises NotApplicable below 3 points."""
        return _fit_holt(self.name, _checked(y, self.window), self.level)


def weekday_factors(values: np.ndarray) -> np.ndarray:
    """Multiplicative factor per position mod 7 (mean 1): ratio to a centred 7-day average."""
    centred = np.convolve(values, np.ones(_PERIOD) / _PERIOD, mode="valid")
    half = _PERIOD // 2
    ratio = values[half:half + centred.size] / centred
    positions = np.arange(half, half + centred.size) % _PERIOD
    factors = np.array([ratio[positions == p].mean() for p in range(_PERIOD)])
    return factors / factors.mean()


@dataclass(frozen=True)
class WeeklyDamped:
    """Weekday factors removed, damped trend on the rest, factors put back (DAU-like series)."""

    window: int | None = DEFAULT_WINDOW
    level: float = DEFAULT_LEVEL
    name: ClassVar[str] = "weekly_damped"
    rank: ClassVar[int] = 3

    def fit(self, y: np.ndarray) -> HoltFit:
        """Fit; raises NotApplicable below two weeks or for a non-positive series."""
        values = _checked(y, self.window)
        if values.size < 2 * _PERIOD:
            raise NotApplicable("weekly factors need at least 14 days")
        if (values <= 0).any():
            raise NotApplicable("multiplicative weekday factors need a positive series")
        factors = weekday_factors(values)
        adjusted = values / factors[np.arange(values.size) % _PERIOD]
        fit = _fit_holt(self.name, adjusted, self.level)
        return HoltFit(fit.name, fit.level_, fit.trend, fit.alpha, fit.beta, fit.phi,
                       fit.sigma, fit.dof, fit.level, factors, values.size % _PERIOD)


def default_models(window: int | None = DEFAULT_WINDOW, level: float = DEFAULT_LEVEL
                   ) -> list[Model]:
    """The candidates, simplest first: linear (baseline), log_linear, damped, weekly."""
    return [Linear(window, level), LogLinear(window, level), DampedTrend(window, level),
            WeeklyDamped(window, level)]


@dataclass(frozen=True)
class Widened:
    """A fitted model whose interval is scaled by `factor` around its central path."""

    fitted: FittedModel
    factor: float

    @property
    def name(self) -> str:
        """The wrapped model's name."""
        return self.fitted.name

    def predict(self, h: int) -> Prediction:
        """The wrapped forecast, each side of the interval `factor` times as wide."""
        mean, lower, upper = self.fitted.predict(h)
        return Prediction(mean, mean - self.factor * (mean - lower),
                          mean + self.factor * (upper - mean))

    def params(self) -> dict[str, float]:
        """The wrapped parameters plus the width factor."""
        return {**self.fitted.params(), "interval_factor": self.factor}
