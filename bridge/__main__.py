"""``python -m bridge``: the same as the ``tempo-bridge`` command."""

from bridge.cli import entry

entry()
