"""Reports: render the capacity forecast as a PNG (history, forecast, interval, thresholds)."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING

from prefect import task

from phasegate.policy.forecast import SeriesForecast

# matplotlib is imported when a chart is drawn (it is slow to import, and only the forecast
# draws); the name below is for the type annotations.
if TYPE_CHECKING:
    import matplotlib.pyplot as plt

__all__ = ["forecast_png", "png_data_uri"]

_SHOWN_DAYS = 120  # forecast days drawn: far enough for the next thresholds, readable


@task(timeout_seconds=300)
def forecast_png(series: list[tuple[SeriesForecast, Mapping[date, float | None]]],
                 today: date) -> bytes:
    """One panel per series: history, forecast mean, interval, thresholds and ETAs."""
    import matplotlib

    matplotlib.use("Agg")  # no display here or on workers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(9, 2.6 * len(series)), squeeze=False)
    for ax, (fc, history) in zip(axes[:, 0], series, strict=True):
        _panel(ax, fc, history, today)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _panel(ax: plt.Axes, fc: SeriesForecast, history: Mapping[date, float | None],
           today: date) -> None:
    import matplotlib.dates as mdates

    days_seen = sorted(history)
    seen = [math.nan if history[d] is None else float(history[d] or 0.0) for d in days_seen]
    ax.plot(mdates.date2num(days_seen), seen, color="black", lw=1, label="history")
    left = float(mdates.date2num(days_seen[0] if days_seen else today))
    if fc.path is not None and fc.last_date is not None:
        n = min(len(fc.path.mean), _SHOWN_DAYS)
        days = mdates.date2num([fc.last_date + timedelta(days=i + 1) for i in range(n)])
        ax.plot(days, fc.path.mean[:n], color="tab:blue", lw=1.5, label=f"forecast ({fc.model})")
        ax.fill_between(days, fc.path.lower[:n], fc.path.upper[:n], color="tab:blue",
                        alpha=0.2, label="interval")
    top = max(max((v for v in seen if not math.isnan(v)), default=0.0),
              float(fc.path.upper[:_SHOWN_DAYS].max())
              if fc.path is not None else 0.0)
    for eta in fc.etas:
        if eta.threshold <= top * 1.5:
            ax.axhline(eta.threshold, color="tab:red", lw=0.8, ls="--")
            when = eta.eta.isoformat() if eta.eta else "not within a year"
            ax.annotate(f"{eta.threshold:,g}: {when}", (left, eta.threshold),
                        fontsize=7, color="tab:red", va="bottom")
    ax.axvline(float(mdates.date2num(today)), color="grey", lw=0.6)
    ax.set_title(fc.name, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")


def png_data_uri(png: bytes) -> str:
    """A data: URI for an image artifact (the Prefect UI shows it inline)."""
    return "data:image/png;base64," + base64.b64encode(png).decode()
