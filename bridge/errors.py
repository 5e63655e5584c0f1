"""Error types, one per boundary: configuration and rules, Tempo, the receiver, the state."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Issue:
    """One problem in a config or rule file, located as ``file:line:col`` (1-based);
    line 0 means the whole file (missing, unreadable, empty) and is shown as ``file:``."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class BridgeError(Exception):
    """Base class of every error tempo-bridge reports to an operator."""


class ConfigError(BridgeError):
    """A config or rule file is invalid; carries every issue found, each with its position."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class TempoError(BridgeError):
    """Tempo did not give a complete answer: network error, HTTP error, partial or malformed body.

    ``reason`` is a short token for metrics (``http_400``, ``timeout``, ``partial`` ...);
    the message carries the query and the body as Tempo sent it.
    """

    def __init__(self, reason: str, message: str, *, status: int | None = None) -> None:
        self.reason = reason
        self.status = status
        super().__init__(message)


class ReceiverError(BridgeError):
    """The remote-write receiver refused or failed a request."""

    def __init__(self, reason: str, message: str, *, status: int | None = None,
                 retryable: bool = False, retry_after: float | None = None) -> None:
        self.reason = reason
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(message)


class StateError(BridgeError):
    """The state database cannot be opened, read or written."""
