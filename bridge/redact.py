"""Redaction: what may be shown of a URL in logs, errors, metrics and the status page."""

from __future__ import annotations

import httpx


def display_url(url: str | httpx.URL) -> str:
    """``url`` without credentials, query or fragment (a query can hold a token)."""
    parsed = httpx.URL(url)
    shown = str(parsed.copy_with(userinfo=b"", query=None, fragment=None))
    return shown + ("?..." if parsed.query else "")
