"""The outbox's queued requests, read back as samples, for tests."""

from __future__ import annotations

from bridge.remote_write import decode_write_request
from bridge.series import Exemplar, Labels
from bridge.state import State


def queued(state: State) -> list[tuple[Labels, int, float]]:
    """Every queued sample, request by request (a request holds each series' samples in
    time order), labels as sent (external labels included)."""
    return [(labels, ts, value) for labels, samples, _ in requests(state)
            for ts, value in samples]


def requests(state: State) -> list[tuple[Labels, list[tuple[int, float]], list[Exemplar]]]:
    """Every series of every queued request, in outbox order."""
    found = []
    after = 0
    while batch := state.outbox(after=after, limit=1000):
        for request_id, request in batch:
            found.extend(decode_write_request(request.body))
            after = request_id
    return found
