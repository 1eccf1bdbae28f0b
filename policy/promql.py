"""A small, honest reader of PromQL: which metric names does a query use, and which range windows.

It is not a parser. It tokenizes (skipping strings, comments, label matchers and numbers),
then calls an identifier a metric name unless PromQL grammar says otherwise: a function call
(followed by "("), an aggregation operator, a keyword (by, without, on, ignoring, group_left,
group_right, offset, bool, and, or, unless, atan2), a label list after by/without/on/ignoring/
group_left/group_right, or the literals Inf/NaN. A `{__name__="x"}` matcher also names `x`.
That is enough to catch the failure that matters: a misspelt metric that would silently return
no data two weeks later. Syntax errors beyond unbalanced brackets are Prometheus's job.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import timedelta

from phasegate.policy.durations import format_duration, parse_duration
from phasegate.policy.metrics import KNOWN_METRICS, is_known_metric

__all__ = ["MIN_RANGE_WINDOW", "clamp_windows", "metric_names", "promql_problems",
           "range_windows", "selectors"]

# History is backfilled at a 5 min step: a shorter window can hold a single sample, and rate()
# over one sample is empty. 10m guarantees two (lab/README.md, "History").
MIN_RANGE_WINDOW = timedelta(minutes=10)

_AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _LABEL_LIST_KEYWORDS | {"offset", "bool", "and", "or", "unless", "atan2"}
_LITERALS = frozenset({"inf", "nan"})
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"[0-9.][0-9A-Za-z_.]*")  # numbers, hex, 1e3 and durations like 5m
_NAME_MATCHER = re.compile(r"""__name__\s*(=~|!=|!~|=)\s*(["'`])(.*?)\2""")
_CLOSERS = {"{": "}", "[": "]"}


@dataclass(frozen=True)
class _Token:
    kind: str  # ident | braces | range | punct
    text: str
    at: int = field(default=-1, compare=False)  # where the token starts in the query


def _skip_string(query: str, start: int) -> int:
    """Index just past the string literal opening at `start` (-1 if it never closes)."""
    quote, i = query[start], start + 1
    while i < len(query):
        if query[i] == "\\" and quote != "`":
            i += 2
            continue
        if query[i] == quote:
            return i + 1
        i += 1
    return -1


def _skip_group(query: str, start: int) -> int:
    """Index just past the {...} or [...] opening at `start`, strings inside skipped (-1: open)."""
    closer, i = _CLOSERS[query[start]], start + 1
    while i < len(query):
        if query[i] in "\"'`":
            i = _skip_string(query, i)
            if i < 0:
                return -1
            continue
        if query[i] == closer:
            return i + 1
        i += 1
    return -1


def _tokenize(query: str) -> tuple[list[_Token], list[str]]:
    """Tokens that matter for names and windows, plus structural problems found on the way."""
    tokens: list[_Token] = []
    i = 0
    while i < len(query):
        char = query[i]
        if char.isspace():
            i += 1
        elif char == "#":
            end = query.find("\n", i)
            i = len(query) if end < 0 else end
        elif char in "\"'`":
            i = _skip_string(query, i)
            if i < 0:
                return tokens, ["unterminated string literal"]
        elif char in _CLOSERS:
            end = _skip_group(query, i)
            if end < 0:
                return tokens, [f"unclosed '{char}'"]
            kind = "braces" if char == "{" else "range"
            tokens.append(_Token(kind, query[i + 1 : end - 1], i))
            i = end
        elif match := _NUMBER.match(query, i):
            i = match.end()
        elif match := _IDENT.match(query, i):
            tokens.append(_Token("ident", match.group()))
            i = match.end()
        else:
            tokens.append(_Token("punct", char))
            i += 1
    return tokens, []


def _next_is_open_paren(tokens: list[_Token], index: int) -> bool:
    return index + 1 < len(tokens) and tokens[index + 1] == _Token("punct", "(")


def _skip_label_list(tokens: list[_Token], index: int) -> int:
    """Index of the ")" closing the label list that starts after tokens[index] (a keyword)."""
    if not _next_is_open_paren(tokens, index):
        return index
    for end in range(index + 2, len(tokens)):
        if tokens[end] == _Token("punct", ")"):
            return end
    return len(tokens)


def _scan_names(tokens: list[_Token]) -> list[tuple[int, str]]:
    """(token index, metric name) of every selector's name, in order of appearance."""
    names: list[tuple[int, str]] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.kind == "braces":
            names += [(index, m.group(3)) for m in _NAME_MATCHER.finditer(token.text)
                      if m.group(1) == "="]
        elif token.kind == "ident":
            word = token.text.lower()
            if word in _LABEL_LIST_KEYWORDS:
                index = _skip_label_list(tokens, index)
            elif not (
                word in _KEYWORDS or word in _AGGREGATIONS or word in _LITERALS
                or _next_is_open_paren(tokens, index)
            ):
                names.append((index, token.text))
        index += 1
    return names


def metric_names(query: str) -> list[str]:
    """The metric names a PromQL query selects, in order of appearance, without duplicates."""
    tokens, _ = _tokenize(query)
    return list(dict.fromkeys(name for _, name in _scan_names(tokens)))


def selectors(query: str) -> list[str]:
    """Every series selector of the query as it can be queried alone, without duplicates:
    `http_requests_total{handler="/q",status=~"5.."}`, a bare `up`, or `{__name__="x"}`.
    The preflight counts each one to say which selector of an empty query matches nothing."""
    tokens, _ = _tokenize(query)
    found: list[str] = []
    for index, name in _scan_names(tokens):
        token = tokens[index]
        if token.kind == "braces":
            found.append("{" + token.text + "}")
        elif index + 1 < len(tokens) and tokens[index + 1].kind == "braces":
            found.append(f"{name}{{{tokens[index + 1].text}}}")
        else:
            found.append(name)
    return list(dict.fromkeys(found))


def range_windows(query: str) -> list[str]:
    """The range part of every `[...]` in the query: "10m" for `[10m]`, "1h" for `[1h:5m]`."""
    tokens, _ = _tokenize(query)
    return [t.text.split(":", 1)[0].strip() for t in tokens if t.kind == "range"]


def clamp_windows(query: str, longest: timedelta) -> str:
    """The query with every range window longer than `longest` cut to it: `[10m]` becomes
    `[45s]` for 45 s, `[1h:5m]` becomes `[45s:5m]`. Shorter windows and everything else are
    kept as written. The watch uses it so a window never reaches back before the change.
    """
    tokens, problems = _tokenize(query)
    if problems:
        return query  # Prometheus will say what is wrong with it
    cut = format_duration(longest)
    parts, done = [], 0
    for token in (t for t in tokens if t.kind == "range"):
        window, colon, step = token.text.partition(":")
        try:
            too_long = parse_duration(window.strip()) > longest
        except ValueError:
            continue  # not ours to fix: promql_problems reports it
        if too_long:
            parts += [query[done:token.at], f"[{cut}{colon}{step}]"]
            done = token.at + len(token.text) + 2
    return "".join(parts) + query[done:]


def _balance_problems(tokens: list[_Token]) -> list[str]:
    depth = 0
    for token in tokens:
        depth += {"(": 1, ")": -1}.get(token.text, 0) if token.kind == "punct" else 0
        if depth < 0:
            return ["unbalanced parentheses: ')' without '('"]
    return ["unbalanced parentheses: '(' never closed"] if depth else []


def _name_problems(names: list[str]) -> list[str]:
    if not names:
        return ["names no metric"]
    problems = []
    for name in names:
        if not is_known_metric(name):
            close = difflib.get_close_matches(name, KNOWN_METRICS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown metric {name!r} (not in policy.metrics){hint}")
    return problems


def _window_problems(windows: list[str], min_window: timedelta) -> list[str]:
    problems = []
    for window in windows:
        try:
            if parse_duration(window) < min_window:
                problems.append(
                    f"range window [{window}] is shorter than {format_duration(min_window)} "
                    "(history has a 5m step: a window needs two samples)"
                )
        except ValueError:
            problems.append(f"cannot parse range window [{window}]")
    return problems


def promql_problems(query: str, min_window: timedelta = MIN_RANGE_WINDOW) -> list[str]:
    """Every problem found in a PromQL query: unknown metric names, short or bad range windows,
    unbalanced brackets, unterminated strings. An empty list means the query looks usable.
    """
    if not query.strip():
        return ["empty query"]
    tokens, problems = _tokenize(query)
    if problems:
        return problems
    windows = [t.text.split(":", 1)[0].strip() for t in tokens if t.kind == "range"]
    return (
        _balance_problems(tokens)
        + _name_problems(list(dict.fromkeys(n for _, n in _scan_names(tokens))))
        + _window_problems(windows, min_window)
    )
