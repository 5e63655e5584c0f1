"""Backfill: the samples rules would have written over a past range, as OpenMetrics blocks input.

``tempo-bridge backfill`` evaluates every rule (or the ``--rule`` ones) over the windows
of a past time range with the engine's dry run, counters starting from zero at the start
of the range, and writes OpenMetrics text that
``promtool tsdb create-blocks-from openmetrics FILE DIR`` turns into TSDB blocks. The
series carry the config's external labels, as the daemon's remote writes do, so the
backfilled history joins the series the daemon writes. Counter samples carry an exemplar
where Tempo gave one (``bridge.openmetrics`` says which); blocks do not keep exemplars.

A window is only evaluated once its group's ``query_offset`` has passed, as the daemon
does: blocks cannot be amended, and a younger window could still be missing spans.

With ``--seed-state`` the daemon's state is given each rule's final totals and last window,
as if the daemon had recorded the range itself: started afterwards, it continues the same
counters from there, so the blocks and the remote-written samples form one counter per
series, with no reset at the boundary. A rule that already has state is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.components import limits, open_state, tempo_client
from bridge.config import Config
from bridge.engine import DryRun, dry_run, rule_key
from bridge.errors import BridgeError
from bridge.evaluation import Update
from bridge.openmetrics import Family, format_openmetrics
from bridge.remote_write import add_external_labels
from bridge.rules import Group
from bridge.series import is_stale_nan
from bridge.tempo import TempoClient
from bridge.windows import Limits


@dataclass(frozen=True)
class Summary:
    """What a backfill wrote."""

    families: int
    series: int
    samples: int
    first_ms: int | None
    last_ms: int | None
    notes: tuple[str, ...]


async def evaluate_range(
    tempo: TempoClient,
    groups: Sequence[Group],
    start: float,
    end: float,
    only: Sequence[str] | None,
    limits: Limits,
    *,
    now: float,
) -> list[Family]:
    """The samples of every rule (or of the ``only`` ones) over ``(start, end]``, from zero,
    with their exemplars; windows younger than their group's ``query_offset`` are left
    out."""
    runs = await dry_run(tempo, groups, start, end, limits, now=now, only=only)
    return [Family(r.rule.record, r.rule.kind, r.samples, r.exemplars) for r in runs]


async def backfill(
    config: Config,
    groups: Sequence[Group],
    start: float,
    end: float,
    only: Sequence[str] | None,
    out: Path,
    *,
    seed_state: bool = False,
    clock: Callable[[], float] = time.time,
) -> Summary:
    """Evaluate the rules over ``(start, end]`` and write OpenMetrics to ``out``.

    ``out`` is replaced atomically: it holds either the previous content or the whole
    new text. ``seed_state``: then store each rule's totals and last window in the
    daemon's state (see the module's docstring). Raises :class:`BridgeError` for a bad
    range, an unknown ``only`` name or a rule that already has state, and
    :class:`bridge.errors.TempoError` when Tempo does not answer completely.
    """
    if end <= start:
        raise BridgeError(f"backfill: --to ({end:.0f}) must be after --from ({start:.0f})")
    records = {rule.record for group in groups for rule in group.rules}
    unknown = sorted(set(only or ()) - records)
    if unknown:
        raise BridgeError(f"backfill: no rule records {', '.join(unknown)}")
    if seed_state:
        _refuse_known_rules(config, groups, only)
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
        runs = await dry_run(tempo, groups, start, end, limits(config), now=now, only=only)
    finally:
        await tempo.aclose()
    external = dict(config.remote_write.external_labels)
    labelled = [
        Family(
            r.rule.record, r.rule.kind,
            [(add_external_labels(labels, external), ts, value)
             for labels, ts, value in r.samples],
            {(add_external_labels(labels, external), ts): found
             for (labels, ts), found in r.exemplars.items()},
        )
        for r in runs
    ]
    text = format_openmetrics(labelled)
    _write_atomically(out, text)
    if seed_state:
        _seed(config, runs)
    written = [s for family in labelled for s in family.samples if not is_stale_nan(s[2])]
    times = [ts for _labels, ts, _value in written]
    return Summary(
        families=len({family.record for family in labelled}),
        series=len({labels for labels, _ts, _value in written}),
        samples=len(written),
        first_ms=min(times, default=None),
        last_ms=max(times, default=None),
        notes=tuple(notes),
    )


def _refuse_known_rules(
    config: Config, groups: Sequence[Group], only: Sequence[str] | None
) -> None:
    state = open_state(config)
    try:
        known = sorted(
            f"{group.name}/{rule.record}" for group in groups for rule in group.rules
            if (not only or rule.record in only)
            and state.load(rule_key(group, rule)) is not None
        )
    finally:
        state.close()
    if known:
        raise BridgeError(
            f"backfill --seed-state: the state in {config.state_dir} already has "
            f"{', '.join(known)}; its counters cannot be continued from a backfill (seed "
            "before the daemon first runs these rules, or backfill without --seed-state)"
        )


def _seed(config: Config, runs: Sequence[DryRun]) -> None:
    """Store each rule's final state as the daemon would have: its totals, live series
    and checkpoint. The backfilled windows are in blocks, which settle passes could not
    amend, so every settle age starts at the checkpoint."""
    state = open_state(config, exclusive=True)
    try:
        for run in runs:
            if run.stored is None:
                continue
            stored = run.stored
            ages = run.group.settle if run.rule.kind == "counter" else ()
            state.commit(
                rule_key(run.group, run.rule),
                Update(
                    stored.checkpoint, stored.live, dict.fromkeys(ages, stored.checkpoint),
                    totals=dict(stored.totals), prune_upto=stored.checkpoint,
                ),
                interval=run.group.interval, tenant=run.group.tenant,
            )
    finally:
        state.close()


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
