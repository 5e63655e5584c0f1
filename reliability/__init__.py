"""Reliability harness: the real daemon through faults, with windows lost and double-counted
counted per scenario. Not a benchmark and not a unit test: run it with ``uv run --frozen
python -m reliability.faults`` (``--quick`` for CI sizes); ``docs/reliability.md`` records
a full run, and ``tests/test_faults.py`` runs the quick one.
"""
