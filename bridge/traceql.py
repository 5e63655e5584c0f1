"""TraceQL, just enough of it: find a metrics query's function stage and its by() attributes.

Tempo parses and checks the whole query; the bridge only needs to know that a query is a
metrics query and which attributes become labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

METRICS_FUNCTIONS = frozenset({
    "rate", "count_over_time", "sum_over_time", "avg_over_time", "min_over_time",
    "max_over_time", "quantile_over_time", "histogram_over_time", "compare",
})
SECOND_STAGE_FUNCTIONS = frozenset({"topk", "bottomk"})


class ExprError(ValueError):
    """A TraceQL expression that is not a usable metrics query."""


@dataclass(frozen=True)
class ParsedExpr:
    """The parts of a TraceQL metrics query that the bridge needs."""

    text: str  # whitespace-normalised
    function: str  # the metrics function, e.g. "sum_over_time"
    by: tuple[str, ...]  # by() attributes as written


@dataclass(frozen=True)
class _Token:
    kind: Literal["string", "space", "open", "close", "pipe", "comma", "word"]
    text: str


_OPEN_CLOSE = {"(": ")", "{": "}", "[": "]"}
_WORD_END = frozenset(" \t\r\n\"`(){}[]|,")


def _tokenize(expr: str) -> list[_Token]:
    """Split ``expr`` into tokens; string literals are single tokens, brackets must balance."""
    tokens: list[_Token] = []
    stack: list[tuple[str, int]] = []  # open brackets and where they are
    i = 0
    while i < len(expr):
        char = expr[i]
        if char.isspace():
            j = i
            while j < len(expr) and expr[j].isspace():
                j += 1
            tokens.append(_Token("space", " "))
        elif char in "\"`":
            j = i + 1
            while j < len(expr) and expr[j] != char:
                j += 2 if char == '"' and expr[j] == "\\" else 1
            if j >= len(expr):
                raise ExprError(f"the string at character {i + 1} is never closed")
            j += 1
            tokens.append(_Token("string", expr[i:j]))
        elif char in _OPEN_CLOSE:
            stack.append((char, i))
            j = i + 1
            tokens.append(_Token("open", char))
        elif char in ")}]":
            if not stack or _OPEN_CLOSE[stack[-1][0]] != char:
                raise ExprError(f"the {char!r} at character {i + 1} closes nothing")
            stack.pop()
            j = i + 1
            tokens.append(_Token("close", char))
        elif char == "|" and expr[i:i + 2] != "||":
            j = i + 1
            tokens.append(_Token("pipe", char))
        elif char == ",":
            j = i + 1
            tokens.append(_Token("comma", char))
        else:
            j = i + 2 if char == "|" else i + 1
            while j < len(expr) and expr[j] not in _WORD_END:
                j += 1
            tokens.append(_Token("word", expr[i:j]))
        i = j
    if stack:
        char, i = stack[-1]
        raise ExprError(f"the {char!r} at character {i + 1} is never closed")
    return tokens


def _split(tokens: list[_Token], kind: str) -> list[list[_Token]]:
    """Split ``tokens`` at the ``kind`` tokens outside brackets."""
    parts: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.kind == "open":
            depth += 1
        elif token.kind == "close":
            depth -= 1
        if token.kind == kind and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def _call(stage: list[_Token]) -> tuple[str, list[_Token]] | None:
    """(function name, tokens after its closing parenthesis) when ``stage`` starts with a call."""
    solid = [t for t in stage if t.kind != "space"]
    if len(solid) < 2 or solid[0].kind != "word" or solid[1].text != "(":
        return None
    depth = 0
    for index, token in enumerate(solid[1:], start=1):
        depth += token.kind == "open"
        depth -= token.kind == "close"
        if depth == 0:
            return solid[0].text, solid[index + 1:]
    return None  # unreachable: brackets balance


def _by(rest: list[_Token]) -> tuple[str, ...]:
    """The attributes of a ``by (...)`` clause in ``rest`` (the tokens after the function call)."""
    for index, token in enumerate(rest[:-1]):
        if token.kind == "word" and token.text == "by" and rest[index + 1].text == "(":
            inner: list[_Token] = []
            depth = 0
            for t in rest[index + 1:]:
                depth += t.kind == "open"
                depth -= t.kind == "close"
                if depth == 0:
                    break
                inner.append(t)
            attributes = tuple(
                "".join(t.text for t in part).strip() for part in _split(inner[1:], "comma")
            )
            if any(not a for a in attributes):
                raise ExprError("by() has an empty attribute")
            return attributes
    return ()


def parse_expr(expr: str) -> ParsedExpr:
    """Check that ``expr`` is a TraceQL metrics query and find its by() attributes.

    Only the pipeline's shape is checked (Tempo parses the rest): a spanset selection, one
    metrics function stage, optionally followed by topk() or bottomk().
    """
    tokens = _tokenize(expr)
    text = "".join(t.text for t in tokens).strip()
    if not text:
        raise ExprError("the expression is empty")
    stages = _split(tokens, "pipe")
    metrics_stage: int | None = None
    function = ""
    by: tuple[str, ...] = ()
    for index, stage in enumerate(stages):
        call = _call(stage)
        name = call[0] if call else None
        if metrics_stage is None and name in METRICS_FUNCTIONS and call is not None:
            if index == 0:
                raise ExprError(
                    f"the query starts with {name}(); select spans before it, "
                    f"such as {{ }} | {name}(...)"
                )
            metrics_stage, function, by = index, call[0], _by(call[1])
        elif metrics_stage is not None and name not in SECOND_STAGE_FUNCTIONS:
            shown = "".join(t.text for t in stage).strip()
            raise ExprError(
                f"only topk() or bottomk() may follow {function}(), not {shown!r}"
            )
    if metrics_stage is None:
        raise ExprError(
            "this is not a metrics query: it needs a metrics function stage such as "
            "| rate(), | count_over_time() or | sum_over_time(span.x)"
        )
    return ParsedExpr(text=text, function=function, by=by)
