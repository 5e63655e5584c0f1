"""Backfill: the samples rules would have written over a past range, as OpenMetrics blocks input.

``tempo-bridge backfill`` evaluates every rule (or the ``--rule`` ones) over the windows
of a past time range with :func:`bridge.engine.dry_run`, counters starting from zero at
the start of the range, and writes OpenMetrics text that
``promtool tsdb create-blocks-from openmetrics FILE DIR`` turns into TSDB blocks. The
series carry the config's external labels, as the daemon's remote writes do, so the
backfilled history joins the series the daemon writes.

A window is only evaluated once its group's ``query_offset`` has passed, as the daemon
does: blocks cannot be amended, and a younger window could still be missing spans.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.config import Config
from bridge.engine import dry_run
from bridge.errors import BridgeError
from bridge.evaluation import Sample
from bridge.openmetrics import Family, format_openmetrics
from bridge.remote_write import add_external_labels, is_stale_nan
from bridge.rules import Group
from bridge.tempo import TempoClient


@dataclass(frozen=True)
class Summary:
    """What a backfill wrote."""

    families: int
    series: int
    samples: int
    first_ms: int | None
    last_ms: int | None
    notes: tuple[str, ...]


def tempo_client(config: Config) -> TempoClient:
    """A Tempo client as the config describes it."""
    return TempoClient(
        config.tempo.url,
        tenant=config.tempo.tenant,
        headers=config.tempo.auth_headers(),
        timeout=config.tempo.timeout,
    )


async def evaluate_range(
    tempo: TempoClient,
    groups: Sequence[Group],
    start: float,
    end: float,
    only: Sequence[str] | None,
    max_duration: int,
    *,
    end_for: Callable[[Group], float] | None = None,
) -> list[Family]:
    """Dry-run every rule (or those recorded as one of ``only``) over ``(start, end]``.

    ``end_for`` may move a group's end earlier (it is never moved later).
    """
    families: list[Family] = []
    for group in groups:
        group_end = end if end_for is None else min(end, end_for(group))
        for rule in group.rules:
            if only and rule.record not in only:
                continue
            if group_end <= start:
                samples: list[Sample] = []
            else:
                samples = await dry_run(tempo, group, rule, start, group_end, max_duration)
            families.append((rule.record, rule.kind, samples))
    return families


async def backfill(
    config: Config,
    groups: Sequence[Group],
    start: float,
    end: float,
    only: Sequence[str] | None,
    out: Path,
    *,
    clock: Callable[[], float] = time.time,
) -> Summary:
    """Evaluate the rules over ``(start, end]`` and write OpenMetrics to ``out``.

    ``out`` is replaced atomically: it holds either the previous content or the whole
    new text. Raises :class:`BridgeError` for a bad range or an unknown ``only`` name,
    and :class:`bridge.errors.TempoError` when Tempo does not answer completely.
    """
    if end <= start:
        raise BridgeError(f"backfill: --to ({end:.0f}) must be after --from ({start:.0f})")
    records = {rule.record for group in groups for rule in group.rules}
    unknown = sorted(set(only or ()) - records)
    if unknown:
        raise BridgeError(f"backfill: no rule records {', '.join(unknown)}")
    now = clock()
    notes = []
    for group in groups:
        settled = now - group.query_offset
        if end > settled:
            notes.append(
                f"group {group.name}: windows ending after {settled:.0f} (now - query_offset "
                f"{group.query_offset}s) are not evaluated: Tempo may not have all their spans"
            )
        if group.settle and end > now - group.settle[-1]:
            notes.append(
                f"group {group.name}: windows younger than its last settle age "
                f"({group.settle[-1]}s) can still receive late spans, which blocks will not hold"
            )
    tempo = tempo_client(config)
    try:
        families = await evaluate_range(
            tempo, groups, start, end, only, int(config.tempo.max_duration),
            end_for=lambda g: now - g.query_offset,
        )
    finally:
        await tempo.aclose()
    external = dict(config.remote_write.external_labels)
    labelled: list[Family] = [
        (record, kind, [(add_external_labels(labels, external), ts, value)
                        for labels, ts, value in samples])
        for record, kind, samples in families
    ]
    text = format_openmetrics(labelled)
    _write_atomically(out, text)
    written = [s for _r, _k, samples in labelled for s in samples if not is_stale_nan(s[2])]
    times = [ts for _labels, ts, _value in written]
    return Summary(
        families=len({record for record, _k, _s in labelled}),
        series=len({labels for labels, _ts, _value in written}),
        samples=len(written),
        first_ms=min(times, default=None),
        last_ms=max(times, default=None),
        notes=tuple(notes),
    )


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BridgeError(f"backfill: cannot write {path}: {exc.strerror or exc}") from exc
