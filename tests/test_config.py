"""The config: file values, environment overrides, secrets, and every error with its position."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from bridge.config import (
    BasicAuth,
    Config,
    RemoteWriteConfig,
    TempoConfig,
    WebConfig,
    environment_overrides,
    load_config,
)
from bridge.errors import ConfigError, Issue

FIXTURES = Path(__file__).parent / "fixtures" / "config"
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))
FULL = FIXTURES / "good" / "full.yaml"
MINIMAL = FIXTURES / "good" / "minimal.yaml"
REPO = Path(__file__).parent.parent


def issues_of(path: Path, environ: dict[str, str] | None = None) -> list[Issue]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    return caught.value.issues


def messages(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    return [str(i) for i in issues_of(path, environ)]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_config(path: Path) -> None:
    issues = issues_of(path)
    assert {i.file for i in issues} == {str(path)}
    expected = path.with_suffix(".err").read_text().replace("{dir}", str(path.parent.absolute()))
    assert "".join(f"{i.line}:{i.col}: {i.message}\n" for i in issues) == expected


def test_the_bad_corpus_is_large() -> None:
    assert len(BAD) >= 30


def test_full_config() -> None:
    config = load_config(FULL, {})
    base = FULL.parent
    assert config.tempo.url == "https://tempo.example.com:3200/prefix"  # no trailing slash
    assert config.tempo.tenant == "team-a"
    assert (config.tempo.timeout, config.tempo.query_end_cutoff, config.tempo.ingest_delay,
            config.tempo.max_duration, config.tempo.max_intervals) == (
                10.0, 60.0, 30.0, 43200.0, 20000)
    assert config.tempo.min_query_offset == 90.0
    assert config.remote_write.url == "https://mimir.example.com/api/v1/push"
    assert config.remote_write.external_labels == {"cluster": "eu-1", "__replica__": "a"}
    assert config.remote_write.max_sample_age == 0.0
    assert config.remote_write.max_samples_per_send == 500
    assert config.remote_write.timeout == 60.0
    assert config.state_dir == Path("/var/lib/tempo-bridge")
    assert config.state_retention == 90 * 86400
    assert config.rule_files == [str(base / "rules" / "*.yaml"), "/etc/tempo-bridge/extra.yaml"]
    assert config.web.listen_address == "[::1]:9478"
    assert config.log_level == "debug"


def test_defaults() -> None:
    config = load_config(MINIMAL, {})
    assert config.tempo.url == "http://127.0.0.1:3200"
    assert config.tempo.tenant is None
    assert (config.tempo.timeout, config.tempo.query_end_cutoff, config.tempo.ingest_delay,
            config.tempo.max_duration, config.tempo.max_intervals) == (
                30.0, 30.0, 15.0, 86400.0, 10000)
    assert config.tempo.min_query_offset == 45.0
    assert config.tempo.auth_headers() == {}
    assert config.remote_write.url == "http://127.0.0.1:9090/api/v1/write"
    assert config.remote_write.max_sample_age == 3000.0
    assert config.remote_write.max_samples_per_send == 2000
    assert config.remote_write.external_labels == {}
    assert config.remote_write.auth_headers() == {}
    assert config.state_dir == MINIMAL.parent / "data"
    assert config.state_retention == 30 * 86400
    assert config.rule_files == [str(MINIMAL.parent / "rules" / "*.yaml")]
    assert config.web.listen_address == "127.0.0.1:9478"
    assert config.log_level == "info"


def test_example_config() -> None:
    config = load_config(REPO / "examples" / "bridge.yaml", {})
    assert config.state_dir == REPO / "data"
    assert config.rule_files == [str(REPO / "rules" / "*.yaml")]
    assert config.tempo.url == "http://127.0.0.1:3200"
    assert config.remote_write.url == "http://127.0.0.1:9090/api/v1/write"
    assert config.web.listen_address == "127.0.0.1:9478"


def test_a_relative_config_path_resolves_against_its_directory(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    config = load_config(Path("examples/bridge.yaml"), {})
    assert config.state_dir == REPO / "data"


# -- secrets ------------------------------------------------------------------------------


def test_secrets_make_the_authorization_header() -> None:
    config = load_config(FULL, {})
    assert config.tempo.auth_headers() == {
        "X-Source": "bridge", "Authorization": "Bearer tempo-t0ken"}
    basic = base64.b64encode(b"bridge:s3cret-pw").decode()
    assert config.remote_write.auth_headers() == {
        "X-Scope-OrgID": "metrics", "Authorization": f"Basic {basic}"}
    # a copy each time: callers may add headers
    config.tempo.auth_headers()["X-Other"] = "1"
    assert "X-Other" not in config.tempo.headers


def test_secrets_never_show() -> None:
    config = load_config(FULL, {})
    shown = repr(config) + str(config) + repr(config.model_dump()) + config.model_dump_json()
    assert "tempo-t0ken" not in shown
    assert "s3cret-pw" not in shown


def test_secrets_come_from_the_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tempo.token").write_text("from-systemd\n")
    (tmp_path / "secrets" / "rw.password").write_text("pw")
    config = load_config(FULL, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.tempo.auth_headers()["Authorization"] == "Bearer from-systemd"


def test_an_absolute_secret_path_is_used_as_is(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abs")
    path = tmp_path / "bridge.yaml"
    path.write_text(f"tempo:\n  bearer_token_file: {token}\nrule_files: []\n")
    config = load_config(path, {"CREDENTIALS_DIRECTORY": "/nonexistent"})
    assert config.tempo.auth_headers() == {"Authorization": "Bearer abs"}


def test_a_missing_secret_in_the_credentials_directory(tmp_path: Path) -> None:
    assert messages(FULL, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == [
        f"{FULL}:5:22: tempo.bearer_token_file: cannot read the secret file "
        f"{tmp_path}/secrets/tempo.token: the file does not exist",
        f"{FULL}:17:20: remote_write.basic_auth.password_file: cannot read the secret file "
        f"{tmp_path}/secrets/rw.password: the file does not exist",
    ]


def test_a_secret_that_is_not_text(tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(b"\xff\xfe")
    path = tmp_path / "bridge.yaml"
    path.write_text("remote_write:\n  bearer_token_file: token\nrule_files: []\n")
    assert messages(path) == [
        f"{path}:2:22: remote_write.bearer_token_file: the secret file {tmp_path}/token "
        "is not UTF-8 text"]


def test_auth_headers_need_the_secrets_read() -> None:
    config = Config(rule_files=[], tempo={"bearer_token_file": "token"})  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="read by load_config"):
        config.tempo.auth_headers()


# -- the environment ----------------------------------------------------------------------


def test_the_environment_beats_the_file() -> None:
    config = load_config(FULL, {
        "TEMPO_BRIDGE_TEMPO__URL": "http://tempo:3200",
        "TEMPO_BRIDGE_TEMPO__TIMEOUT": "5s",
        "TEMPO_BRIDGE_REMOTE_WRITE__MAX_SAMPLES_PER_SEND": "100",
        "TEMPO_BRIDGE_STATE_DIR": "/srv/state",
        "TEMPO_BRIDGE_RULE_FILES": '["/etc/rules/*.yaml"]',
        "TEMPO_BRIDGE_LOG_LEVEL": "warning",
        "UNRELATED": "x",
    })
    assert config.tempo.url == "http://tempo:3200"
    assert config.tempo.timeout == 5.0
    assert config.tempo.tenant == "team-a"  # the rest of the section stays
    assert config.remote_write.max_samples_per_send == 100
    assert config.state_dir == Path("/srv/state")
    assert config.rule_files == ["/etc/rules/*.yaml"]
    assert config.log_level == "warning"


def test_environment_names_are_case_insensitive_and_empty_is_unset() -> None:
    config = load_config(MINIMAL, {
        "tempo_bridge_tempo__tenant": "lower", "TEMPO_BRIDGE_WEB__LISTEN_ADDRESS": ""})
    assert config.tempo.tenant == "lower"
    assert config.web.listen_address == "127.0.0.1:9478"


def test_environment_mappings() -> None:
    config = load_config(MINIMAL, {
        "TEMPO_BRIDGE_REMOTE_WRITE__EXTERNAL_LABELS": '{"cluster": "eu-1"}',
        "TEMPO_BRIDGE_TEMPO__BASIC_AUTH__USERNAME": "u",
        "TEMPO_BRIDGE_TEMPO__BASIC_AUTH__PASSWORD_FILE": "secrets/rw.password",
    })
    assert config.remote_write.external_labels == {"cluster": "eu-1"}
    assert config.tempo.auth_headers() == {
        "Authorization": "Basic " + base64.b64encode(b"u:s3cret-pw").decode()}


def test_a_relative_state_dir_from_the_environment_is_relative_to_the_config() -> None:
    config = load_config(MINIMAL, {"TEMPO_BRIDGE_STATE_DIR": "state"})
    assert config.state_dir == MINIMAL.parent / "state"


def test_the_environment_can_supply_what_the_file_lacks(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("log_level: info\n")
    config = load_config(path, {"TEMPO_BRIDGE_RULE_FILES": '["r.yaml"]'})
    assert config.rule_files == [str(tmp_path / "r.yaml")]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TEMPO_BRIDGE_TEMPO__URL": "localhost:3200"},
         "TEMPO_BRIDGE_TEMPO__URL: 'localhost:3200' has no scheme; write http://localhost:3200"),
        ({"TEMPO_BRIDGE_TEMPO__TIMEOUT": "30"},
         "TEMPO_BRIDGE_TEMPO__TIMEOUT: '30' has no unit; write 30s for seconds"),
        ({"TEMPO_BRIDGE_REMOTE_WRITE__MAX_SAMPLES_PER_SEND": "many"},
         "TEMPO_BRIDGE_REMOTE_WRITE__MAX_SAMPLES_PER_SEND: expected a whole number, "
         "got the string 'many'"),
        ({"Tempo_Bridge_Tempo__Tenat": "x"},
         "Tempo_Bridge_Tempo__Tenat: unknown key 'tenat' in tempo; did you mean 'tenant'?"),
        ({"TEMPO_BRIDGE_LOG_LEVEL": "loud"},
         "TEMPO_BRIDGE_LOG_LEVEL: 'loud' is not one of 'debug', 'info', 'warning' or 'error'"),
        ({"TEMPO_BRIDGE_REMOTE_WRITE__EXTERNAL_LABELS__0ZONE": "a"},
         "TEMPO_BRIDGE_REMOTE_WRITE__EXTERNAL_LABELS__0ZONE: '0zone' is not a valid label "
         "name (letters, digits and _, not starting with a digit)"),
        ({"TEMPO_BRIDGE_TEMPO__BASIC_AUTH__USERNAME": "u"},
         "TEMPO_BRIDGE_TEMPO__BASIC_AUTH__USERNAME: the required key password_file is missing"),
        ({"TEMPO_BRIDGE_RULE_FILES": "rules/*.yaml"},
         "TEMPO_BRIDGE_RULE_FILES: 'rules/*.yaml' is not valid JSON (Expecting value); write "
         'lists and mappings in JSON there, such as ["a", "b"] or {"key": "value"}'),
        ({"TEMPO_BRIDGE_TEMPO__HEADERS": "X-A: b"},
         "TEMPO_BRIDGE_TEMPO__HEADERS: 'X-A: b' is not valid JSON (Expecting value); write "
         'lists and mappings in JSON there, such as ["a", "b"] or {"key": "value"}'),
    ],
)
def test_environment_errors_name_the_variable(environ: dict[str, str], expected: str) -> None:
    assert issues_of(MINIMAL, environ) == [Issue("<environment>", 0, 0, expected)]


def test_environment_overrides_are_parsed_by_the_bridge() -> None:
    """The parser of TEMPO_BRIDGE_* pinned: names nest by __ in lower case, sections, lists
    and mappings are JSON, keys inside a JSON value are merged over it, empty is unset."""
    assert environment_overrides({
        "TEMPO_BRIDGE_TEMPO": '{"url": "http://a:1", "timeout": "3s", "headers": {"X-A": "1"}}',
        "TEMPO_BRIDGE_TEMPO__TIMEOUT": "5s",
        "TEMPO_BRIDGE_TEMPO__HEADERS__X_B": "2",
        "tempo_bridge_remote_write__external_labels__Zone": "eu",
        "TEMPO_BRIDGE_REMOTE_WRITE__MAX_SAMPLES_PER_SEND": "10",
        "TEMPO_BRIDGE_RULE_FILES": '["a.yaml", "b/*.yaml"]',
        "TEMPO_BRIDGE_TEMPO__BASIC_AUTH": "null",
        "TEMPO_BRIDGE_STATE_DIR": "[1]",  # not JSON: a path is a string
        "TEMPO_BRIDGE_LOG_LEVEL": "",
        "TEMPO_BRIDGE_TEMPO__TENAT": "x",  # kept: validation names it
        "OTHER": "x",
    }) == {
        "tempo": {"url": "http://a:1", "timeout": "5s", "headers": {"X-A": "1", "x_b": "2"},
                  "basic_auth": None, "tenat": "x"},
        "remote_write": {"external_labels": {"zone": "eu"}, "max_samples_per_send": "10"},
        "rule_files": ["a.yaml", "b/*.yaml"],
        "state_dir": "[1]",
    }


def test_environment_mappings_merge_into_the_files() -> None:
    config = load_config(FULL, {
        "TEMPO_BRIDGE_REMOTE_WRITE__EXTERNAL_LABELS": '{"zone": "a"}',
        "TEMPO_BRIDGE_TEMPO": '{"timeout": "3s"}',
    })
    assert config.remote_write.external_labels == {
        "cluster": "eu-1", "__replica__": "a", "zone": "a"}
    assert (config.tempo.timeout, config.tempo.tenant) == (3.0, "team-a")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TEMPO_BRIDGE_STAT_DIR": "/srv"},
         "TEMPO_BRIDGE_STAT_DIR: unknown key 'stat_dir'; did you mean 'state_dir'?"),
        ({"TEMPO_BRIDGE_STATE_DIR__X": "/srv"},
         "TEMPO_BRIDGE_STATE_DIR__X: expected a path, got a mapping"),
        ({"TEMPO_BRIDGE_TEMPO": "http://tempo"},
         "TEMPO_BRIDGE_TEMPO: 'http://tempo' is not valid JSON (Expecting value); write lists "
         'and mappings in JSON there, such as ["a", "b"] or {"key": "value"}'),
    ],
)
def test_every_bridge_variable_is_a_config_key(environ: dict[str, str], expected: str) -> None:
    """A misspelt variable is an error, not silently ignored."""
    assert issues_of(MINIMAL, environ) == [Issue("<environment>", 0, 0, expected)]


def test_file_and_environment_errors_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("tempo:\n  url: tempo\nrule_files: []\n")
    assert sorted(messages(path, {"TEMPO_BRIDGE_REMOTE_WRITE__URL": "ftp://x"})) == [
        f"{path}:2:8: tempo.url: 'tempo' has no scheme; write http://tempo",
        "<environment>: TEMPO_BRIDGE_REMOTE_WRITE__URL: 'ftp://x' has the scheme ftp; "
        "use http or https",
    ]


def test_an_environment_value_hides_a_bad_file_value(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text("tempo:\n  url: tempo\nrule_files: []\n")
    config = load_config(path, {"TEMPO_BRIDGE_TEMPO__URL": "http://tempo"})
    assert config.tempo.url == "http://tempo"


# -- the file itself ----------------------------------------------------------------------


def test_a_missing_config_file(tmp_path: Path) -> None:
    assert messages(tmp_path / "bridge.yaml") == [
        f"{tmp_path}/bridge.yaml: the file does not exist"]


def test_a_directory_as_config_file(tmp_path: Path) -> None:
    assert messages(tmp_path) == [f"{tmp_path}: this is a directory, not a file"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1]:3200", None),
        ("https://tempo", None),
        ("HTTP://tempo:3200", None),
        ("tempo", "'tempo' has no scheme; write http://tempo"),
        ("//tempo:3200", "'//tempo:3200' has no scheme; write http://tempo:3200"),
        ("http://", "'http://' has no host"),
        ("http://:3200", "'http://:3200' has no host"),
        ("grpc://tempo:9095", "'grpc://tempo:9095' has the scheme grpc; use http or https"),
    ],
)
def test_urls(tmp_path: Path, url: str, message: str | None) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(f"tempo:\n  url: '{url}'\nrule_files: []\n")
    if message is None:
        assert load_config(path, {}).tempo.url == url
    else:
        assert messages(path) == [f"{path}:2:8: tempo.url: {message}"]


def test_the_readme_config_reference_shows_every_key() -> None:
    readme = (REPO / "README.md").read_text()
    reference = readme.split("## Config reference", 1)[1].split("```yaml\n", 1)[1]
    written = set(re.findall(r"(\w+):", reference.split("```", 1)[0]))
    for model in (Config, TempoConfig, RemoteWriteConfig, WebConfig, BasicAuth):
        assert set(model.model_fields) <= written, model
