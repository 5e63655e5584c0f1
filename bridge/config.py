"""The daemon's configuration: one YAML file, TEMPO_BRIDGE_* environment overrides, secret files."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails
from ruamel.yaml.comments import CommentedMap

from bridge.durations import DAY, format_duration, parse_duration
from bridge.errors import ConfigError, Issue
from bridge.names import label_name_problem, tenant_problem
from bridge.yamlfile import (
    YamlFile,
    describe,
    load_yaml,
    locate,
    lookup,
    node_position,
    os_error_message,
    to_plain,
    unknown_key,
)

ENV_PREFIX = "TEMPO_BRIDGE_"
ENV_FILE = "<environment>"  # Issue.file of a problem in an environment override


# -- field types ------------------------------------------------------------------------------


def _duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return parse_duration(str(value))  # 0, or explains the missing unit
    raise ValueError(f"expected a duration such as 30s, got {describe(value)}")


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


def _a_day_or_more(seconds: float) -> float:
    if seconds < DAY:
        raise ValueError(f"must be at least 1d, got {format_duration(seconds)}")
    return seconds


Duration = Annotated[float, BeforeValidator(_duration)]
"""A duration written as "30s", "1h30m"...; seconds."""
PositiveDuration = Annotated[float, BeforeValidator(_duration), AfterValidator(_positive)]
Retention = Annotated[float, BeforeValidator(_duration), AfterValidator(_a_day_or_more)]


def _http_url(url: str) -> str:
    if "://" not in url:
        raise ValueError(f"{url!r} has no scheme; write http://{url.lstrip('/')}")
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"{url!r} has the scheme {scheme}; use http or https")
    host = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in host:
        raise ValueError(
            "the URL holds credentials; use bearer_token_file or basic_auth instead, so "
            "that they stay out of the config and the logs"
        )
    if not host or host.startswith(":"):
        raise ValueError(f"{url!r} has no host")
    return url


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _base_url(url: str) -> str:
    return url.rstrip("/")


def _tenant(tenant: str) -> str:
    if problem := tenant_problem(tenant):
        raise ValueError(problem)
    return tenant


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_name(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("a header value cannot contain a line break")
    return value


def _label_name(name: str) -> str:
    if problem := label_name_problem(name, reserved_allowed=True):
        raise ValueError(problem)
    return name


def _label_value(value: str) -> str:
    if not value:
        raise ValueError("the value is empty; leave the label out instead")
    return value


Headers = dict[
    Annotated[str, AfterValidator(_header_name)], Annotated[str, AfterValidator(_header_value)]
]
Labels = dict[
    Annotated[str, AfterValidator(_label_name)], Annotated[str, AfterValidator(_label_value)]
]


def _listen_address(address: str) -> str:
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port, such as 127.0.0.1:9478")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{address!r} has an unclosed IPv6 bracket, such as [::1]:9478")
    return address


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


# -- the models -------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasicAuth(_Section):
    """HTTP basic authentication; the password is read from a file."""

    username: str
    password_file: Path


class _Endpoint(_Section):
    """An HTTP endpoint with optional authentication (bearer token or basic auth)."""

    url: HttpUrl
    # Validated in this order: the checks of basic_auth and headers look at the fields before.
    bearer_token_file: Path | None = None
    basic_auth: BasicAuth | None = None
    headers: Headers = {}
    timeout: PositiveDuration = 30.0
    # The bearer token or the basic auth password, read by load_config.
    _secret: SecretStr | None = PrivateAttr(default=None)

    @field_validator("basic_auth")
    @classmethod
    def _one_authentication(cls, basic_auth: BasicAuth | None, info: ValidationInfo) -> object:
        if basic_auth is not None and info.data.get("bearer_token_file") is not None:
            raise ValueError("set bearer_token_file or basic_auth, not both")
        return basic_auth

    @field_validator("headers")
    @classmethod
    def _no_authorization(cls, headers: dict[str, str], info: ValidationInfo) -> object:
        authenticated = info.data.get("bearer_token_file") or info.data.get("basic_auth")
        if authenticated and any(name.lower() == "authorization" for name in headers):
            raise ValueError(
                "an Authorization header here would replace the one made from "
                "bearer_token_file or basic_auth; remove one of them"
            )
        return headers

    @property
    def secret_file(self) -> Path | None:
        """The file holding this endpoint's secret, if it has one."""
        if self.basic_auth is not None:
            return self.basic_auth.password_file
        return self.bearer_token_file

    def _read_secret(self, directory: Path) -> str | None:
        """Read the secret file (relative to ``directory``); the problem, or None when read."""
        if self.secret_file is None:
            return None
        path = directory / self.secret_file
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return f"cannot read the secret file {path}: {os_error_message(exc)}"
        except UnicodeDecodeError:
            return f"the secret file {path} is not UTF-8 text"
        if not secret:
            return f"the secret file {path} is empty"
        self._secret = SecretStr(secret)
        return None

    def auth_headers(self) -> dict[str, str]:
        """``headers`` plus the Authorization header, when authentication is configured."""
        headers = dict(self.headers)
        if self.secret_file is None:
            return headers
        if self._secret is None:
            raise RuntimeError("the secret files are read by load_config; this config was not")
        secret = self._secret.get_secret_value()
        if self.basic_auth is not None:
            pair = f"{self.basic_auth.username}:{secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            headers["Authorization"] = f"Bearer {secret}"
        return headers


class TempoConfig(_Endpoint):
    """Where and how to query Tempo, and Tempo's own limits the bridge must respect."""

    url: Annotated[HttpUrl, AfterValidator(_base_url)] = "http://127.0.0.1:3200"
    tenant: Annotated[str, AfterValidator(_tenant)] | None = None
    query_end_cutoff: Duration = 30.0  # Tempo answers nothing for the last 30 s
    ingest_delay: Duration = 15.0  # a span becomes queryable this long after it arrives
    max_duration: PositiveDuration = 24 * 3600.0  # Tempo's longest range query
    max_intervals: int = Field(default=10000, ge=1)  # Tempo's most steps in a range query
    # the most samples (series x windows) the bridge asks for in one range answer
    max_points: int = Field(default=2_000_000, ge=1)

    @property
    def min_query_offset(self) -> float:
        """The shortest query_offset that sees complete windows: Tempo's cutoff + ingest delay
        (45 s with the defaults); rule files are checked against it."""
        return self.query_end_cutoff + self.ingest_delay


class RemoteWriteConfig(_Endpoint):
    """Where to send the samples (Prometheus remote write 1.0)."""

    url: HttpUrl = "http://127.0.0.1:9090/api/v1/write"
    external_labels: Labels = {}
    max_sample_age: Duration = 50 * 60.0  # 0 = no limit
    max_samples_per_send: int = Field(default=2000, ge=1)


class WebConfig(_Section):
    """The HTTP server for /metrics, health and reload."""

    listen_address: Annotated[str, AfterValidator(_listen_address)] = "127.0.0.1:9478"


class Config(BaseModel):
    """The whole configuration; build it with :func:`load_config`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tempo: TempoConfig = TempoConfig()
    remote_write: RemoteWriteConfig = RemoteWriteConfig()
    state_dir: Path = Path("data")
    # Totals of rules removed, and of counter series idle, for longer are dropped.
    state_retention: Retention = 30.0 * DAY
    rule_files: list[Annotated[str, Field(min_length=1)]]
    web: WebConfig = WebConfig()
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)
    ] = "info"


# -- loading ----------------------------------------------------------------------------------


def load_config(path: Path, environ: Mapping[str, str] = os.environ) -> Config:
    """Read the config file ``path``, apply ``environ``'s overrides and read the secret files.

    Relative paths (state_dir, rule_files) are relative to the config file's directory;
    relative secret files to ``$CREDENTIALS_DIRECTORY`` when it is set, else to that directory
    too. Raises ConfigError with every problem found.
    """
    document = load_yaml(path)
    if not isinstance(document.root, CommentedMap):
        raise ConfigError([document.issue(
            node_position(document.root),
            f"the config is a mapping with keys such as tempo and rule_files, "
            f"not {describe(document.root)}",
        )])
    from_env = environment_overrides(environ)
    locator = _Locator(document, from_env, environ)
    try:
        config = Config.model_validate(_merge(to_plain(document.root), from_env))
    except ValidationError as exc:
        raise ConfigError([locator.validation_issue(e) for e in exc.errors()]) from None

    base = path.absolute().parent
    config = config.model_copy(update={
        "state_dir": Path(os.path.normpath(base / config.state_dir)),
        "rule_files": [os.path.normpath(base / pattern) for pattern in config.rule_files],
    })
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    secrets_base = Path(credentials) if credentials else base
    issues = []
    for section in ("tempo", "remote_write"):
        endpoint: _Endpoint = getattr(config, section)
        if problem := endpoint._read_secret(secrets_base):
            key = ("basic_auth", "password_file") if endpoint.basic_auth else ("bearer_token_file",)
            issues.append(locator.issue((section, *key), problem))
    if issues:
        raise ConfigError(issues)
    return config


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The config values of the ``TEMPO_BRIDGE_*`` variables of ``environ``, nested by ``__``.

    ``TEMPO_BRIDGE_TEMPO__URL=http://tempo:3200`` gives ``{"tempo": {"url": ...}}``. Names
    are case-insensitive and read in lower case, mapping keys written in a name too
    (``..._EXTERNAL_LABELS__ZONE=a`` sets the label ``zone``); an empty variable is unset.
    A section, list or mapping (``TEMPO_BRIDGE_RULE_FILES``, ``TEMPO_BRIDGE_TEMPO``) is
    written in JSON, and a variable naming a key inside it is merged over it. Unknown keys
    are kept, for validation to report them. Raises ConfigError for JSON that is not.
    """
    found: list[tuple[tuple[str, ...], str, str]] = []
    for name, value in environ.items():
        if name.upper().startswith(ENV_PREFIX) and value != "":
            path = tuple(name[len(ENV_PREFIX):].lower().split("__"))
            found.append((path, name, value))
    overrides: dict[str, Any] = {}
    issues = []
    for path, name, value in sorted(found):  # a section before the keys inside it
        decoded: Any = value
        if _is_json(path):
            try:
                decoded = json.loads(value)
            except json.JSONDecodeError as exc:
                issues.append(Issue(
                    ENV_FILE, 0, 0,
                    f"{name}: {value!r} is not valid JSON ({exc.msg}); write lists and "
                    'mappings in JSON there, such as ["a", "b"] or {"key": "value"}',
                ))
                continue
        section = overrides
        for part in path[:-1]:
            if not isinstance(section.get(part), dict):
                section[part] = {}
            section = section[part]
        section[path[-1]] = _merge(section[path[-1]], decoded) if path[-1] in section else decoded
    if issues:
        raise ConfigError(issues)
    return overrides


def _is_json(path: tuple[str, ...]) -> bool:
    """Whether the value at ``path`` is a section, list or mapping, written in JSON."""
    annotation: Any = None
    model: type[BaseModel] | None = Config
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:  # unknown, or a key inside a mapping: a string
            return False
        annotation = field.annotation
        model = _model_in(annotation)
    return model is not None or get_origin(annotation) in (list, dict)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class ``annotation`` names (also as ``Model | None``), if any."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _merge(base: Any, override: Any) -> Any:
    """``override`` over ``base``: mappings are merged key by key, anything else replaced."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if key in merged else value
    return merged


Loc = tuple[str | int, ...]


class _Locator:
    """Turns a problem at a config key path into an Issue: in the file, or naming the variable."""

    def __init__(
        self, document: YamlFile, from_env: dict[str, Any], environ: Mapping[str, str]
    ) -> None:
        self.document = document
        self.from_env = from_env
        self.environ_names = {name.upper(): name for name in environ}

    def issue(self, loc: Loc, message: str, *, key: bool = False, prefix: bool = True) -> Issue:
        """The Issue for ``message`` about ``loc``, prefixed by the key path or variable name."""
        if self._in_environment(loc):
            return Issue(ENV_FILE, 0, 0, f"{self._variable(loc)}: {message}")
        position = locate(self.document.root, loc, key=key)
        return self.document.issue(position, f"{_dotted(loc)}: {message}" if prefix else message)

    def validation_issue(self, error: ErrorDetails) -> Issue:
        """The Issue for one pydantic error, in sentences."""
        loc, kind = tuple(error["loc"]), error["type"]
        if loc[-1:] == ("[key]",):  # a problem with a key of a mapping, such as a label name
            return self.issue(loc[:-1], _sentence(error), key=True)
        if kind == "extra_forbidden":
            message = unknown_key(loc[-1], _fields_at(loc[:-1]), _dotted(loc[:-1]))
            return self.issue(loc, message, key=True, prefix=False)
        if kind == "missing":
            parent = loc[:-1]
            message = f"the required key {loc[-1]} is missing"
            if loc == ("rule_files",):
                message += "; list the rule files to load, such as rule_files: [rules/*.yaml]"
            return self.issue(parent, message, key=True, prefix=bool(parent))
        section = isinstance(error["input"], dict)  # a whole section: point at its key
        return self.issue(loc, _sentence(error), key=section)

    def _in_environment(self, loc: Loc) -> bool:
        """Whether the value at ``loc`` (or else its nearest parent) comes from a variable."""
        for depth in range(len(loc), -1, -1):
            prefix = loc[:depth]
            in_env, value = lookup(self.from_env, prefix)
            if in_env and not isinstance(value, dict):
                return True  # a leaf value from the environment beats the file
            if lookup(self.document.root, prefix)[0]:
                return False
            if in_env:
                return True
        return False

    def _variable(self, loc: Loc) -> str:
        """The name of the variable (as set) that gave the value at ``loc``."""
        for depth in range(len(loc), 0, -1):
            stem = ENV_PREFIX + "__".join(str(part) for part in loc[:depth]).upper()
            if stem in self.environ_names:
                return self.environ_names[stem]
            nested = sorted(n for n in self.environ_names if n.startswith(stem + "__"))
            if nested:
                return self.environ_names[nested[0]]
        return ENV_PREFIX + "__".join(str(part) for part in loc).upper()


def _dotted(loc: Sequence[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _fields_at(loc: Loc) -> list[str]:
    """The keys allowed in the section at ``loc``."""
    model: type[BaseModel] | None = Config
    for part in loc:
        field = model.model_fields.get(str(part)) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _sentence(error: ErrorDetails) -> str:
    """A pydantic error as a sentence about the value."""
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    got = describe(value)
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "string_type":
        return f"expected a string, got {got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {got}"
    if kind == "list_type":
        hint = f"; write [{value}]" if isinstance(value, str) else ""
        return f"expected a list, got {got}{hint}"
    if kind == "path_type":
        return f"expected a path, got {got}"
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx['expected']}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {value}"
    if kind == "string_too_short":
        return "must not be empty"
    return str(error["msg"])
