"""Rule files: loading, every validation error with its position, label mapping, identity."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path
from types import MappingProxyType

import pytest

from bridge.errors import ConfigError, Issue
from bridge.rulefmt import check_rule_files, load_rule_files
from bridge.rules import Group, Rule, label_name_for
from bridge.traceql import ExprError, parse_expr

FIXTURES = Path(__file__).parent / "fixtures" / "rules"
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))
GOOD = sorted((FIXTURES / "good").glob("*.yaml"))
REPO = Path(__file__).parent.parent
MIN_OFFSET = 45.0


def positions(issues: list[Issue]) -> str:
    """Issues as ``line:col: message`` lines, the form of the ``.err`` files."""
    return "".join(f"{i.line}:{i.col}: {i.message}\n" for i in issues)


def test_the_bad_corpus_is_large() -> None:
    assert len(BAD) >= 40
    assert all(p.with_suffix(".err").is_file() for p in BAD)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_rule_file(path: Path) -> None:
    issues = check_rule_files([path], min_query_offset=MIN_OFFSET)
    assert {i.file for i in issues} == {str(path)}
    assert positions(issues) == path.with_suffix(".err").read_text()


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_rule_file_raises_from_load(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_rule_files([str(path)], min_query_offset=MIN_OFFSET)
    assert positions(caught.value.issues) == path.with_suffix(".err").read_text()


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_rule_file(path: Path) -> None:
    assert check_rule_files([path], min_query_offset=MIN_OFFSET) == []


def test_full_file_loads_every_key() -> None:
    path = FIXTURES / "good" / "full.yaml"
    groups = load_rule_files([str(path)], min_query_offset=MIN_OFFSET)
    cost = Rule(
        record="openrouter_cost_usd_total",
        expr='{ resource.service.name = "openrouter" && name = "LLM Generation" } '
             "| sum_over_time(span.gen_ai.usage.total_cost) "
             "by (span.gen_ai.request.model, span.trace.metadata.openrouter.api_key_name)",
        kind="counter",
        labels={"unit": "usd"},
        rename={"gen_ai_request_model": "model"},
        limit=5000,
        missing_value="unknown",
        by=("span.gen_ai.request.model", "span.trace.metadata.openrouter.api_key_name"),
        file=str(path),
        line=11,
    )
    in_flight = Rule(
        record="openrouter_requests_in_flight",
        expr='{ name = "LLM Generation" } | count_over_time()',
        kind="gauge", labels={}, rename={}, limit=0, missing_value=None, by=(),
        file=str(path), line=21,
    )
    spans = Rule(
        record="spans_total", expr="{ } | count_over_time()", kind="counter", labels={},
        rename={}, limit=0, missing_value=None, by=(), file=str(path), line=26,
    )
    assert groups == [
        Group(
            name="openrouter", interval=300, query_offset=120, tenant="team-a", start=86400,
            settle=(900, 3600, 21600), labels={"source": "openrouter"},
            rules=(cost, in_flight), file=str(path), line=3,
        ),
        Group(
            name="defaults", interval=60, query_offset=45, tenant=None, start=0,
            settle=(600, 3600), labels={}, rules=(spans,), file=str(path), line=24,
        ),
    ]


def test_loaded_rules_are_immutable_and_hashable() -> None:
    (group,) = load_rule_files([str(FIXTURES / "good" / "anchors.yaml")], min_query_offset=45)
    assert isinstance(group.labels, MappingProxyType)
    assert isinstance(group.rules[0].rename, MappingProxyType)
    assert len({group, group}) == 1
    assert len(set(group.rules)) == 2


def test_anchors_and_merge_keys() -> None:
    (group,) = load_rule_files([str(FIXTURES / "good" / "anchors.yaml")], min_query_offset=45)
    assert dict(group.rules[0].labels) == {"team": "llm"}
    assert dict(group.rules[1].labels) == {"team": "llm", "unit": "tokens"}
    assert dict(group.rules[1].rename) == {"gen_ai_request_model": "model"}


def test_default_rules_load_cleanly() -> None:
    (group,) = load_rule_files([str(REPO / "rules" / "*.yaml")], min_query_offset=MIN_OFFSET)
    assert (group.name, group.interval, group.query_offset, group.settle) == (
        "openrouter", 60, 120, (600, 3600))
    assert dict(group.labels) == {}
    assert [r.record for r in group.rules] == [
        "openrouter_cost_usd_total",
        "openrouter_input_cost_usd_total",
        "openrouter_output_cost_usd_total",
        "openrouter_input_tokens_total",
        "openrouter_output_tokens_total",
        "openrouter_cached_input_tokens_total",
        "openrouter_requests_total",
    ]
    for rule in group.rules:
        assert rule.kind == "counter"
        assert rule.expr.startswith(
            '{ resource.service.name = "openrouter" && name = "LLM Generation" } | ')
        assert rule.by == (
            "span.gen_ai.request.model", "span.gen_ai.provider.name",
            "span.trace.metadata.openrouter.api_key_name",
        )
        assert rule.map_labels({
            "span.gen_ai.request.model": "openai/gpt-4o",
            "span.gen_ai.provider.name": "openai",
            "span.trace.metadata.openrouter.api_key_name": "prod-backend",
        }) == {
            "__name__": rule.record, "model": "openai/gpt-4o", "provider": "openai",
            "api_key_name": "prod-backend",
        }


# -- defaults that depend on other settings -----------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("keys", "min_offset", "query_offset", "settle"),
    [
        ("interval: 1m", 45.0, 45, (600, 3600)),
        ("interval: 1m", 45.5, 46, (600, 3600)),  # rounded up to a whole second
        ("interval: 16s", 45.0, 45, (608, 3600)),  # rounded up to whole windows
        ("interval: 1h", 45.0, 45, (3600,)),
        ("interval: 2h", 45.0, 45, (7200,)),
        ("query_offset: 15m", 45.0, 900, (3600,)),  # 10m would come before the first read
    ],
)
def test_defaults_follow_interval_and_offset(
    tmp_path: Path, keys: str, min_offset: float, query_offset: int, settle: tuple[int, ...]
) -> None:
    path = write(tmp_path, "r.yaml", f"groups:\n  - name: g\n    {keys}\n    rules: []\n")
    (loaded,) = load_rule_files([str(path)], min_query_offset=min_offset)
    assert (loaded.query_offset, loaded.settle) == (query_offset, settle)


def test_query_offset_minimum_comes_from_the_caller(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "groups:\n  - name: g\n    query_offset: 2m\n    rules: []\n")
    assert check_rule_files([path], min_query_offset=120) == []
    assert positions(check_rule_files([path], min_query_offset=150)) == (
        "3:19: query_offset: 2m is less than 2m30s (query_end_cutoff + ingest_delay in the "
        "config): Tempo would answer for windows whose spans are not all queryable yet, and "
        "the missing spans would never be counted\n"
    )


# -- several files ------------------------------------------------------------------------


def test_group_names_are_unique_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "groups:\n  - name: shared\n    rules: []\n")
    second = write(tmp_path, "b.yaml", "# b\ngroups:\n  - name: shared\n    rules: []\n")
    assert check_rule_files([first, second], min_query_offset=45) == [
        Issue(str(second), 3, 11, f"name: the group name 'shared' is already used at {first}:2:11"),
    ]


def test_issues_of_all_files_are_raised_together(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "groups:\n  - name: a\n    interval: 7s\n    rules: []\n")
    write(tmp_path, "b.yaml", "groups: {}\n")
    write(tmp_path, "c.yaml", "groups: []\n")
    with pytest.raises(ConfigError) as caught:
        load_rule_files([str(tmp_path / "*.yaml")], min_query_offset=45)
    assert [(Path(i.file).name, i.line, i.col) for i in caught.value.issues] == [
        ("a.yaml", 3, 15), ("b.yaml", 1, 9)]


def test_globs_expand_in_order(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        write(tmp_path, f"{name}.yaml", f"groups:\n  - name: {name}\n    rules: []\n")
    (tmp_path / "sub.yaml").mkdir()  # a directory matched by the glob is skipped
    groups = load_rule_files([str(tmp_path / "*.yaml")], min_query_offset=45)
    assert [g.name for g in groups] == ["a", "b", "c"]


def test_a_file_named_twice_is_read_once(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", "groups:\n  - name: a\n    rules: []\n")
    patterns = [str(tmp_path / "*.yaml"), str(path), str(tmp_path / "." / "a.yaml")]
    assert [g.name for g in load_rule_files(patterns, min_query_offset=45)] == ["a"]


def test_a_glob_matching_nothing_is_not_an_error(tmp_path: Path) -> None:
    assert load_rule_files([str(tmp_path / "*.yaml")], min_query_offset=45) == []
    assert load_rule_files([], min_query_offset=45) == []


def test_a_literal_path_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "rules.yaml"
    with pytest.raises(ConfigError) as caught:
        load_rule_files([str(missing)], min_query_offset=45)
    assert caught.value.issues == [Issue(str(missing), 0, 0, "the file does not exist")]


def test_a_directory_is_not_a_rule_file(tmp_path: Path) -> None:
    assert check_rule_files([tmp_path], min_query_offset=45) == [
        Issue(str(tmp_path), 0, 0, "this is a directory, not a file")]


def test_an_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "r.yaml", "groups: []\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert check_rule_files([path], min_query_offset=45) == [
        Issue(str(path), 0, 0, "permission denied: the file is not readable by this user")]


# -- the expression -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "function", "by"),
    [
        ("{ } | rate()", "rate", ()),
        ("{} | count_over_time() by (span.a)", "count_over_time", ("span.a",)),
        ("{ } | sum_over_time(span.x) by(span.a,resource.b)", "sum_over_time",
         ("span.a", "resource.b")),
        ('{ name = "by (x)" } | avg_over_time(span.x) by (span.a)', "avg_over_time",
         ("span.a",)),
        ("{ } | min_over_time(duration) by (span.a) | bottomk(3)", "min_over_time",
         ("span.a",)),
        ("{ } | max_over_time(span.x) with (sample=true)", "max_over_time", ()),
        ("{ } | histogram_over_time(duration) by (name)", "histogram_over_time", ("name",)),
        ('{ } | rate() by (span."attr with space")', "rate", ('span."attr with space"',)),
        ("{ } | count() > 1 | rate()", "rate", ()),
    ],
)
def test_parse_expr(expr: str, function: str, by: tuple[str, ...]) -> None:
    parsed = parse_expr(expr)
    assert (parsed.function, parsed.by) == (function, by)


def test_expr_whitespace_is_normalised_outside_strings() -> None:
    parsed = parse_expr('  {\n  name =  "a  b" }\n\t|  rate()  ')
    assert parsed.text == '{ name = "a  b" } | rate()'


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "the expression is empty"),
        ("{ }", "this is not a metrics query: it needs a metrics function stage such as "
                "| rate(), | count_over_time() or | sum_over_time(span.x)"),
        ("{ } | rate() | rate()", "only topk() or bottomk() may follow rate(), not 'rate()'"),
        ("{ ] | rate()", "the ']' at character 3 closes nothing"),
        ('{ name = "x\\" } | rate()', "the string at character 10 is never closed"),
        ("{ } | rate() by (a,,b)", "by() has an empty attribute"),
    ],
)
def test_parse_expr_errors(expr: str, message: str) -> None:
    with pytest.raises(ExprError) as caught:
        parse_expr(expr)
    assert str(caught.value) == message


# -- labels and identity ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "label"),
    [
        ("span.gen_ai.request.model", "gen_ai_request_model"),
        ("resource.service.name", "service_name"),
        ("event.exception.type", "exception_type"),
        ("link.traceID", "traceID"),
        ("instrumentation.name", "name"),
        (".env", "env"),
        ("name", "name"),
        ("span:status", "span_status"),
        ("span.http-route", "http_route"),
        ("span.3xx", "_3xx"),
        ("span.trace.metadata.openrouter.api_key_name", "trace_metadata_openrouter_api_key_name"),
    ],
)
def test_label_name_for(attribute: str, label: str) -> None:
    assert label_name_for(attribute) == label


def rule(**changes: object) -> Rule:
    fields: dict[str, object] = {
        "record": "cost_total", "expr": "{ } | sum_over_time(span.cost) by (span.model)",
        "kind": "counter", "labels": {}, "rename": {}, "limit": 0, "missing_value": None,
        "by": ("span.model",), "file": "r.yaml", "line": 1,
    }
    fields.update(changes)
    return Rule(**fields)  # type: ignore[arg-type]


def test_map_labels() -> None:
    r = rule(rename={"model": "m"}, labels={"unit": "usd", "tier": "rule"})
    tempo = {"span.model": "gpt", "span.key": "k", "__name__": "ignored"}
    assert r.map_labels(tempo) == {"__name__": "cost_total", "m": "gpt", "key": "k",
                                   "unit": "usd", "tier": "rule"}


def test_map_labels_group_then_rule_labels_override() -> None:
    r = rule(labels={"tier": "rule"})
    tempo = {"span.model": "gpt", "span.tier": "tempo", "span.source": "tempo"}
    assert r.map_labels(tempo, {"tier": "group", "source": "group"}) == {
        "__name__": "cost_total", "model": "gpt", "tier": "rule", "source": "group"}


def test_map_labels_nil_and_empty_are_dropped_or_the_missing_value() -> None:
    tempo = {"span.model": "nil", "span.key": ""}
    assert rule().map_labels(tempo) == {"__name__": "cost_total"}
    # an empty value is no label in Prometheus: it is missing too
    assert rule(missing_value="unknown").map_labels(tempo) == {
        "__name__": "cost_total", "model": "unknown", "key": "unknown"}


def test_map_labels_fills_left_out_by_attributes_with_the_missing_value() -> None:
    # Tempo leaves out a by() attribute the span lacks when another one is present
    two = rule(by=("span.model", "span.key"), missing_value="unknown")
    assert two.map_labels({"span.model": "gpt"}) == {
        "__name__": "cost_total", "model": "gpt", "key": "unknown"}
    assert rule(by=("span.model", "span.key")).map_labels({"span.model": "gpt"}) == {
        "__name__": "cost_total", "model": "gpt"}


def test_map_labels_without_by() -> None:
    assert rule(by=()).map_labels({"__name__": "x"}) == {"__name__": "cost_total"}


def test_where_a_rule_is_written_is_not_part_of_it() -> None:
    here, there = rule(file="a.yaml", line=3), rule(file="b.yaml", line=40)
    assert here == there
    assert hash(here) == hash(there)
    assert rule(kind="gauge") != here
    assert rule(labels={"a": "b"}) != here
    group = Group(name="g", interval=60, query_offset=120, tenant=None, start=0,
                  settle=(600,), labels={}, rules=(here,), file="a.yaml", line=2)
    moved = dataclasses.replace(group, rules=(there,), file="b.yaml", line=9)
    assert moved == group
    assert hash(moved) == hash(group)
    assert dataclasses.replace(group, interval=300) != group
