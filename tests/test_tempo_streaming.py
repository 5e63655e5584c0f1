"""The Tempo client's msgspec parser gives what parsing the whole answer gives, errors included.

``bridge.tempo.parse_answer`` decodes an answer into typed structs with msgspec, and leaves
whatever they do not take to ``json`` and the checks in Python. Every answer here, captured,
valid or broken in many ways, must come out of it exactly as out of ``json.loads`` (of the
bytes, as the client reads them) and the checks: the same series, or a TempoError with the
same reason and message. ``parse_buckets``, which adds each series to its buckets as it is
decoded, must give what ``buckets_of`` makes of those series, or the same error.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from bridge.errors import TempoError
from bridge.tempo import Keys, Kind, _parse_whole, buckets_of, parse_answer, parse_buckets
from tests.doubles.captures import find_tempo_api, load_capture

QUERY = "{ } | count_over_time()"
KINDS: tuple[Kind, Kind] = ("range", "instant")


@pytest.fixture(autouse=True, params=["whole", "series by series"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs both ways msgspec decodes an answer: at once (answers under
    ``RUN_BYTES``), and cut into runs as it arrives, here a run for each series and the
    body fed 7 bytes at a time (so that a separator is split across chunks)."""
    if request.param == "series by series":
        monkeypatch.setattr("bridge.tempo.RUN_BYTES", 0)
        monkeypatch.setattr("bridge.tempo._CHUNK", 7)
    return str(request.param)


def reference(content: bytes, query: str, kind: Kind) -> Any:
    """``json.loads`` of the bytes, then the checks."""
    try:
        text = content.decode(json.detect_encoding(content), "surrogatepass")
    except ValueError as exc:
        raise TempoError("malformed", f"query {query!r}: malformed answer from Tempo: "
                                      f"body is not JSON ({exc})") from exc
    return _parse_whole(text, query, kind)


def outcome(parse: Any, text: str, kind: Kind) -> tuple[str, Any]:
    try:
        return "ok", parse(text.encode("utf-8", "surrogatepass"), QUERY, kind)
    except TempoError as exc:
        return "error", (exc.reason, str(exc))


def assert_same(text: str, kind: Kind) -> None:
    got, want = outcome(parse_answer, text, kind), outcome(reference, text, kind)
    assert repr(got) == repr(want), text[:300]  # repr: so that NaN values compare equal
    stamps = bucket_stamps(want, kind)
    got = outcome(lambda c, q, k: parse_buckets(c, q, k, stamps), text, kind)
    if want[0] == "ok":
        want = "ok", buckets_of(want[1], stamps)
    assert repr(got) == repr(want), text[:300]


def bucket_stamps(outcome: tuple[str, Any], kind: Kind) -> list[int]:
    """Buckets to ask for: for a range answer, those its samples are in but the first (as
    the bucket before a query's first window is not asked for) and two more."""
    if kind == "instant":
        return [60_000]
    found = {ts for series in outcome[1] for ts, _ in series.samples} if (
        outcome[0] == "ok") else set()
    return [*sorted(found)[1:], 60_000, 120_000]


LABELS = [{"key": "span.model", "value": {"stringValue": "a"}},
          {"key": "span.n", "value": {"intValue": "3"}}]
HANDWRITTEN: list[tuple[str, Kind]] = [
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
    ('{"series":[{"labels":[],"samples":[],"exemplars":[{"labels":[{"key":"trace:id","value":'
     '{"stringValue":"1f"}}],"value":2,"timestampMs":"5"}]}],"metrics":{}}', "range"),
    ('{"series":[{"samples":[],"exemplars":[{"labels":[{"key":"trace:id","value":'
     '{"stringValue":"1f"}},{"key":"span.n","value":{"intValue":"7"}}],"value":"NaN",'
     '"timestampMs":5}]}],"metrics":{}}', "range"),
    ('{"series":[{"exemplars":[{"labels":[],"timestampMs":"5"}]}],"metrics":{}}', "range"),
    ('{"series":[{"exemplars":[{"labels":[{"key":"trace:id","value":{"stringValue":"xyz"}}],'
     '"timestampMs":"5"}]}],"metrics":{}}', "range"),
    ('{"series":[{"exemplars":[{"labels":[{"key":"trace:id","value":{"intValue":"12"}}],'
     '"timestampMs":"5"}]}],"metrics":{}}', "range"),
    ('{"series":[{"exemplars":[{"labels":[{"key":"trace:id","value":{"stringValue":"ab"}}]}]}],'
     '"metrics":{}}', "range"),
    ('{"series":[{"exemplars":{}}],"metrics":{}}', "range"),
    ('{"series":[{"labels":[{"key":"k","value":{"stringValue":"\\ud800"}}]}],"metrics":{}}',
     "instant"),
    ('{"series":[{"labels":[{"key":"\\udc00k","value":{"intValue":"1"}}]}],"metrics":{}}',
     "instant"),
    # series with the same labels, a bucket twice, zero values, the series without by()
    ('{"series":[{"labels":[{"key":"k","value":{"intValue":"3"}}],"samples":[{"timestampMs":'
     '"60000","value":1},{"timestampMs":"60000","value":"2"},{"timestampMs":"120000"}]},'
     '{"labels":[{"key":"k","value":{"stringValue":"3"}}],"samples":[{"timestampMs":"120000",'
     '"value":4},{"timestampMs":"60000","value":0.5}]},{"labels":[{"key":"__name__","value":'
     '{"stringValue":"count_over_time"}}],"samples":[{"timestampMs":"60000","value":0},'
     '{"timestampMs":"120000"}]},{"labels":[],"samples":[{"timestampMs":"9","value":0}]}],'
     '"metrics":{}}', "range"),
    ('{"series":[{"labels":[{"key":"k","value":{"intValue":"3"}}],"value":1},{"labels":'
     '[{"key":"k","value":{"stringValue":"3"}}],"value":"2.5"},{"labels":[]}],"metrics":{}}',
     "instant"),
    ('{"series":[{"exemplars":[{"labels":{},"timestampMs":"5"}]}],"metrics":{}}', "range"),
    ('{"series":[{"exemplars":[{"labels":[{"key":"trace:id","value":{"stringValue":"ab"}}],'
     '"timestampMs":"5","value":true}]}],"metrics":{}}', "range"),
]


@pytest.mark.parametrize(("text", "kind"), HANDWRITTEN)
def test_handwritten_answers(text: str, kind: Kind) -> None:
    assert_same(text, kind)


def test_captured_answers() -> None:
    captures = sorted((find_tempo_api() / "captures").glob("*.http"))
    assert captures
    for path in captures:
        capture = load_capture(path)
        kind: Kind = "range" if "query_range" in capture.path else "instant"
        assert_same(capture.body.decode("utf-8", "surrogatepass"), kind)


def test_answers_cut_or_altered_anywhere() -> None:
    """Every prefix of a small answer, and random one-character changes of it."""
    exemplar = {"labels": [{"key": "trace:id", "value": {"stringValue": "a1"}}],
                "value": 0.5, "timestampMs": "61000"}
    body = json.dumps({"series": [
        {"labels": LABELS, "samples": [{"timestampMs": "60000", "value": 1.25},
                                       {"timestampMs": "120000"}], "exemplars": [exemplar]},
        {"labels": [{"key": "span.model", "value": {"stringValue": "nil"}}], "samples": []},
    ], "metrics": {"completedJobs": 1}})
    for end in range(len(body) + 1):
        assert_same(body[:end], "range")
        assert_same(body[:end], "instant")
    rng = random.Random(5)
    for _ in range(3000):
        i = rng.randrange(len(body))
        altered = body[:i] + rng.choice(' {}[],:"0x-.etn') + body[i + 1:]
        assert_same(altered, rng.choice(KINDS))


def test_well_formed_answers_take_the_typed_structs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The captured answers never need the plain parser: msgspec takes them as they are."""

    def refuse(*_: object) -> None:
        raise AssertionError("parsed with json, not msgspec")

    monkeypatch.setattr("bridge.tempo._parse_whole", refuse)
    for path in sorted((find_tempo_api() / "captures").glob("*.http")):
        capture = load_capture(path)
        if capture.status != 200 or b'"PARTIAL"' in capture.body:
            continue
        kind: Kind = "range" if "query_range" in capture.path else "instant"
        parse_answer(capture.body, QUERY, kind)
        parse_buckets(capture.body, QUERY, kind, [60_000])


def test_keys_share_their_labels_and_are_found_again_by_text() -> None:
    """Keys held between evaluations share each label's tuple; the same text is the same
    key, also after the older half of what Keys remembers was forgotten."""

    def answer(*models: str) -> bytes:
        series = [{"labels": [
            {"key": "span.gen_ai.provider.name", "value": {"stringValue": "openai"}},
            {"key": "span.gen_ai.request.model", "value": {"stringValue": model}},
        ], "value": 1.5} for model in models]
        return json.dumps({"series": series, "metrics": {}}).encode()

    keys = Keys(size=4)
    first = [s.labels for s in parse_answer(answer("a", "b"), QUERY, "instant", keys)]
    assert first == [(("span.gen_ai.provider.name", "openai"), ("span.gen_ai.request.model", m))
                     for m in ("a", "b")]
    assert first[0][0] is first[1][0]  # one tuple for the provider's label
    again = [s.labels for s in parse_answer(answer("c", "d", "a"), QUERY, "instant", keys)]
    assert again[2] is first[0]  # found again, not decoded again
    assert [s.labels for s in parse_answer(answer("b", "c"), QUERY, "instant", keys)] == [
        first[1], again[0]]
    fresh = [s.labels for s in parse_answer(answer("a", "b", "c", "d"), QUERY, "instant")]
    later = [s.labels for s in parse_answer(answer("a", "b", "c", "d"), QUERY, "instant", keys)]
    assert later == fresh


def test_keys_remember_a_digest_of_each_text_and_tell_every_one_apart() -> None:
    """Keys hold 16 bytes for each text, not the text (300 bytes and more for a series of
    three labels), and still give each of 50,000 texts that differ in one character its
    own labels, in a second answer as in the first."""

    def answer() -> bytes:
        series = [{"labels": [
            {"key": "span.gen_ai.request.model", "value": {"stringValue": f"model-{i:05d}"}},
        ], "value": i} for i in range(50_000)]
        return json.dumps({"series": series, "metrics": {}}).encode()

    keys = Keys()
    for _ in range(2):
        found = parse_answer(answer(), QUERY, "instant", keys)
        assert [dict(s.labels)["span.gen_ai.request.model"] for s in found] == [
            f"model-{int(s.value):05d}" for s in found]
        assert len({s.labels for s in found}) == 50_000
    assert {len(text) for text in keys._keys} == {16}
