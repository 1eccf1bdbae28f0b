"""Durations written the way Prometheus and k6 write them: "90s", "5m", "2h", "1h30m", "7d", "1w".

The plan stores every duration as such a string so that the YAML reads like the seed's commands
(`--timeout 300`, `duration: '5m'`), and the model holds a `datetime.timedelta`.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["format_duration", "parse_duration", "positive_duration", "to_duration"]

# Largest unit first: Prometheus requires that order ("1h30m", never "30m1h").
_UNITS: dict[str, timedelta] = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|w|d|h|m|s))+")
_ORDER = list(_UNITS)


def parse_duration(text: object) -> timedelta:
    """Parse a Prometheus/k6 style duration ("90s", "5m", "1h30m", "7d", "1w") into a timedelta.

    Units: w, d, h, m, s, ms; each at most once, largest first. A bare number is refused because
    its unit would be a guess (k6 reads "300" as milliseconds, gcloud as seconds).
    Raises ValueError with a readable reason.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string like '5m' or '1h30m', got {text!r}")
    value = text.strip()
    if not _WHOLE.fullmatch(value):
        raise ValueError(
            f"cannot parse duration {text!r}: use a number with a unit (w, d, h, m, s, ms), "
            "e.g. '90s', '5m', '1h30m'"
        )
    parts = _PART.findall(value)
    positions = [_ORDER.index(unit) for _, unit in parts]
    if positions != sorted(set(positions)):
        raise ValueError(f"cannot parse duration {text!r}: units must be distinct, largest first")
    return sum((float(number) * _UNITS[unit] for number, unit in parts), timedelta())


def format_duration(value: timedelta) -> str:
    """The shortest string `parse_duration` reads back as `value` ("1h30m", "300s" -> "5m")."""
    millis = round(value.total_seconds() * 1000)
    if millis < 0:
        return "-" + format_duration(-value)
    if millis == 0:
        return "0s"
    out = []
    for unit, size in _UNITS.items():
        unit_ms = round(size.total_seconds() * 1000)
        count, millis = divmod(millis, unit_ms)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def to_duration(value: object) -> timedelta:
    """A timedelta as is, else `parse_duration(value)` (a pydantic BeforeValidator)."""
    return value if isinstance(value, timedelta) else parse_duration(value)


def positive_duration(value: timedelta) -> timedelta:
    """`value` if longer than 0 s, else ValueError (a pydantic AfterValidator)."""
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value
