"""Benchmarks of tempo-bridge, one module each (the list: ``python -m bench --help``).

Run them all with ``uv run --frozen python -m bench`` (``--quick`` for small sizes), or one
with ``uv run --frozen python -m bench.<name>``. Each prints figure lines (see
``bench.common.Report``); ``docs/performance.md`` records a run against the targets.
"""
