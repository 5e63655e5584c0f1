"""The Tempo client's streaming parser gives what parsing the whole answer gives, errors included.

``bridge.tempo`` reads an answer's series one at a time to keep big answers small in
memory. Every answer here, captured, valid or broken in many ways, must come out of
the streaming parser exactly as out of ``json.loads`` and the checks: the same series,
or a TempoError with the same reason and message.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from bridge.errors import TempoError
from bridge.tempo import (
    _instant_series,
    _parse_answer,
    _parse_whole,
    _range_series,
)
from tests.doubles.captures import find_tempo_api, load_capture

QUERY = "{ } | count_over_time()"
CONVERTERS = {"instant": _instant_series, "range": _range_series}


def outcome(parse: Any, text: str, kind: str) -> tuple[str, Any]:
    try:
        return "ok", parse(text, QUERY, CONVERTERS[kind])
    except TempoError as exc:
        return "error", (exc.reason, str(exc))


def assert_same(text: str, kind: str) -> None:
    assert outcome(_parse_answer, text, kind) == outcome(_parse_whole, text, kind), text[:300]


LABELS = [{"key": "span.model", "value": {"stringValue": "a"}},
          {"key": "span.n", "value": {"intValue": "3"}}]
HANDWRITTEN = [
    (json.dumps({"series": [{"labels": LABELS, "value": 1.5}], "metrics": {}}), "instant"),
    ('{"metrics":{"a":1},"series":[{"labels":[],"value":"2"}]}', "instant"),
    ("{}", "instant"),
    ('{"series":[]}', "range"),
    (' \n{ "series" : [ { "labels" : [ ] , "samples" : [ ] } ] , "status" : "COMPLETE" } \n',
     "range"),
    ('{"series":[{"labels":[],"samples":[{"timestampMs":"60000","value":1}]}]}', "range"),
    ('{"series":[{"labels":[],"samples":[{"timestampMs":"x"}]}]}', "range"),
    ('{"series":[{"labels":[],"samples":{}}]}', "range"),
    ('{"series":[{"labels":{},"value":1}]}', "instant"),
    ('{"series":[{"labels":[{"value":{"stringValue":"a"}}]}]}', "instant"),
    ('{"series":[{"labels":[{"key":"k","value":{"stringValue":1}}]}]}', "instant"),
    ('{"series":[{"labels":[{"key":"k","value":{"a":1,"b":2}}]}]}', "instant"),
    ('{"series":[{"labels":[{"key":"k","value":{}}]}]}', "instant"),
    ('{"series":[{"labels":[{"key":"k","value":{"boolValue":true}}]}]}', "instant"),
    ('{"series":[{"labels":[{"key":"k","value":{"doubleValue":1.5}}]}]}', "instant"),
    ('{"series":[{"value":true}]}', "instant"),
    ('{"series":[{"value":NaN}]}', "instant"),
    ('{"series":[{"value":"nope"}],"status":"PARTIAL","message":"cut"}', "instant"),
    ('{"series":[{"value":"nope"}, 3]}', "instant"),
    ('{"series":[{"value":"nope"}, {"value":[]}]}', "instant"),
    ('{"series":[{"value":1}],"status":"WEIRD"}', "instant"),
    ('{"series":[{"value":1}],"series":[{"value":2}]}', "instant"),
    ('{"series":null}', "instant"),
    ('{"series":[1]}', "instant"),
    ('{"series":[{"value":1}] "x":1}', "instant"),
    ('{"series":[{"value":1},]}', "instant"),
    ('{"series":[{"value":1}]}}', "instant"),
    ('{"series":[{"value":1}]} x', "instant"),
    ('{"series":[{"value":1}', "instant"),
    ('{"a":1,}', "instant"),
    ('{"a" 1}', "instant"),
    ("{1:2}", "instant"),
    ("[]", "instant"),
    ('"series"', "instant"),
    ("", "instant"),
    ("  ", "instant"),
    ("\ufeff{}", "instant"),
    ("not json", "instant"),
]


@pytest.mark.parametrize(("text", "kind"), HANDWRITTEN)
def test_handwritten_answers(text: str, kind: str) -> None:
    assert_same(text, kind)


def test_captured_answers() -> None:
    captures = sorted((find_tempo_api() / "captures").glob("*.http"))
    assert captures
    for path in captures:
        capture = load_capture(path)
        kind = "range" if "query_range" in capture.path else "instant"
        assert_same(capture.body.decode("utf-8", "surrogatepass"), kind)


def test_answers_cut_or_altered_anywhere() -> None:
    """Every prefix of a small answer, and random one-character changes of it."""
    body = json.dumps({"series": [
        {"labels": LABELS, "samples": [{"timestampMs": "60000", "value": 1.25},
                                       {"timestampMs": "120000"}]},
        {"labels": [{"key": "span.model", "value": {"stringValue": "nil"}}], "samples": []},
    ], "metrics": {"completedJobs": 1}})
    for end in range(len(body) + 1):
        assert_same(body[:end], "range")
        assert_same(body[:end], "instant")
    rng = random.Random(5)
    for _ in range(3000):
        i = rng.randrange(len(body))
        altered = body[:i] + rng.choice(' {}[],:"0x-.etn') + body[i + 1:]
        assert_same(altered, rng.choice(["range", "instant"]))
