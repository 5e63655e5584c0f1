"""Synthetic OpenRouter traffic and its ground truth, shared by tests and benchmarks.

The spans are what OpenRouter's broadcast sends (an ``LLM Generation`` span with GenAI
attributes, a ``Provider Attempt`` child) plus spans of another service that the default
rules must not count. The truth is what the default rules must total over them.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tests.doubles.tempo import Span

MODELS = ("openai/gpt-4o", "anthropic/claude-3.5-sonnet", "google/gemini-2.0-flash-001")
PROVIDERS = {"openai/gpt-4o": "openai", "anthropic/claude-3.5-sonnet": "anthropic",
             "google/gemini-2.0-flash-001": "google"}
KEYS = ("prod-backend", "dev-laptop", None)

Key = tuple[tuple[str, str], ...]
"""A series' labels without ``__name__``, sorted."""


def openrouter_spans(start_ns: int, rng: random.Random, model: str | None = None) -> list[Span]:
    """One request: its ``LLM Generation`` span with random usage, the child span of its
    provider attempt, and now and then the same span from another service."""
    model = model or rng.choice(MODELS)
    key = rng.choice(KEYS)
    input_tokens, output_tokens = rng.randint(1, 5000), rng.randint(1, 2000)
    input_cost = round(input_tokens * rng.choice([2.5e-6, 3e-6, 1e-7]), 9)
    output_cost = round(output_tokens * rng.choice([1e-5, 1.5e-5, 4e-7]), 9)
    attributes: dict[str, str | int | float | bool] = {
        "gen_ai.request.model": model,
        "gen_ai.provider.name": PROVIDERS.get(model, model.split("/")[0]),
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        "gen_ai.usage.input_cost": input_cost,
        "gen_ai.usage.output_cost": output_cost,
        "gen_ai.usage.total_cost": input_cost + output_cost,
    }
    if key is not None:
        attributes["trace.metadata.openrouter.api_key_name"] = key
    if rng.random() < 0.6:  # prompt caching: some requests only, part of the input
        attributes["gen_ai.usage.cache_read.input_tokens"] = rng.randint(0, input_tokens)
    resource = {"service.name": "openrouter"}
    spans = [
        Span(start_ns=start_ns, attributes=attributes, resource=resource),
        Span(start_ns=start_ns + 1000, name="Provider Attempt", attributes=attributes,
             resource=resource),
    ]
    if rng.random() < 0.2:
        spans.append(Span(start_ns=start_ns, attributes=attributes,
                          resource={"service.name": "other"}))
    return spans


def make_spans(
    start: float,
    seconds: float,
    seed: int,
    *,
    gap: tuple[float, float] = (0.05, 0.3),
    models: Sequence[str] = MODELS,
) -> list[Span]:
    """Requests over ``(start, start + seconds)``, consecutive ones ``gap`` seconds apart
    (drawn uniformly). Deterministic in its arguments, so a Tempo double in another
    process and the code computing the truth make the same spans. A tenth of the requests
    start on a whole second: a span exactly on a window end belongs to that window."""
    rng = random.Random(seed)
    spans: list[Span] = []
    t = start
    while True:
        t += rng.uniform(*gap)
        if t >= start + seconds:
            return spans
        start_ns = round(t) * 10**9 if rng.random() < 0.1 else int(t * 1e9)
        spans.extend(openrouter_spans(start_ns, rng, rng.choice(models)))


def summed_attributes(rules: Sequence[Any]) -> dict[str, str | None]:
    """Record name -> the span attribute its ``sum_over_time`` sums, or None for a
    ``count_over_time``, for rules shaped like the default ones."""
    out: dict[str, str | None] = {}
    for rule in rules:
        match = re.search(r"sum_over_time\(span\.([\w.]+)\)", rule.expr)
        if match is None and "count_over_time()" not in rule.expr:
            raise ValueError(f"{rule.record}: neither sum_over_time(span.x) nor count_over_time()")
        out[rule.record] = match.group(1) if match else None
    return out


def span_truth(
    spans: Iterable[Span], metrics: Mapping[str, str | None], after: int, upto: int
) -> dict[str, dict[Key, float]]:
    """Expected counter totals per record and label set for the spans the default rules
    count that start in ``(after, upto]``; ``metrics`` maps each record to the attribute
    it sums (None: a count). ``sum_over_time`` skips a span without the attribute."""
    result: dict[str, dict[Key, float]] = {r: defaultdict(float) for r in metrics}
    for span in spans:
        if span.name != "LLM Generation" or span.resource.get("service.name") != "openrouter":
            continue
        if not after * 10**9 < span.start_ns <= upto * 10**9:
            continue
        a = span.attributes
        labels = {"model": str(a["gen_ai.request.model"]),
                  "provider": str(a["gen_ai.provider.name"])}
        if "trace.metadata.openrouter.api_key_name" in a:
            labels["api_key_name"] = str(a["trace.metadata.openrouter.api_key_name"])
        key = tuple(sorted(labels.items()))
        for record, attribute in metrics.items():
            if attribute is None:
                result[record][key] += 1
            elif attribute in a:
                result[record][key] += float(a[attribute])
    return result
