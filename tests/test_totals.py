"""Totals: a mapping of Total kept as arrays; copies share positions, not values."""

from __future__ import annotations

import tracemalloc
from array import array

import pytest

from bridge.series import TempoKey
from bridge.totals import Total, Totals


def key(n: int) -> TempoKey:
    return (("span.model", f"m{n}"),)


A, B, C = key(0), key(1), key(2)


def test_read_as_a_mapping_it_is_the_dict_of_its_totals() -> None:
    totals = Totals({B: Total(2.0, 60), A: Total(1.5, 120)})
    assert list(totals) == [B, A]  # the order added
    assert list(totals.items()) == [(B, Total(2.0, 60)), (A, Total(1.5, 120))]
    assert totals == {A: Total(1.5, 120), B: Total(2.0, 60)}
    assert totals[A] == Total(1.5, 120)
    assert totals.get(C) is None
    assert A in totals
    assert C not in totals
    assert len(totals) == 2
    assert dict(totals) == {A: Total(1.5, 120), B: Total(2.0, 60)}


def test_a_copy_changes_without_changing_the_original() -> None:
    original = Totals({A: Total(1.0, 60), B: Total(2.0, 60)})
    copy = original.copy()
    assert copy.at is original.at  # shared until a series is added
    copy.grow(copy.at[A], 5.0, 120)
    copy.add(C, 3.0, 120)
    assert copy.at is not original.at
    copy.remove([B])
    assert original == {A: Total(1.0, 60), B: Total(2.0, 60)}
    assert copy == {A: Total(5.0, 120), C: Total(3.0, 120)}
    # the original no longer changes its positions in place once copied, nor does a
    # second copy of it: each adds to positions of its own
    second = original.copy()
    second.add(C, 1.0, 180)
    assert second.at is not original.at
    assert list(original) == [A, B]
    assert second == {A: Total(1.0, 60), B: Total(2.0, 60), C: Total(1.0, 180)}


def test_grow_keeps_the_latest_time() -> None:
    totals = Totals({A: Total(1.0, 120)})
    totals.grow(0, 1.5, 60)  # a late span found for an earlier window
    assert totals[A] == Total(1.5, 120)


def test_changed_is_what_was_set_since_the_copy() -> None:
    copy = Totals({A: Total(1.0, 60), B: Total(2.0, 60), C: Total(3.0, 60)}).copy()
    assert copy.changed() == {}
    assert not copy.changed()
    copy.grow(copy.at[C], 4.0, 120)
    copy.add(key(3), 1.0, 120)
    copy.remove([A])  # positions move: what changed stays with its series
    assert copy.changed() == {C: Total(4.0, 120), key(3): Total(1.0, 120)}
    assert len(copy.changed()) == 2
    with pytest.raises(KeyError):
        copy.changed()[B]
    assert Totals({A: Total(1.0, 60)}).changed() == {A: Total(1.0, 60)}  # a new one: all


def test_from_arrays_takes_them_as_they_are() -> None:
    values, grown = array("d", [1.0, 2.0]), array("q", [60, 120])
    totals = Totals.from_arrays(iter([A, B]), values, grown)
    assert totals.value is values
    assert totals.last_grown is grown
    assert totals == {A: Total(1.0, 60), B: Total(2.0, 120)}
    assert not totals.changed()
    with pytest.raises(ValueError, match="2 series, 2 values and 1 times"):
        Totals.from_arrays([A, B], values, array("q", [60]))


def test_of_keeps_totals_and_converts_a_dict() -> None:
    totals = Totals({A: Total(1.0, 60)})
    assert Totals.of(totals) is totals
    assert isinstance(Totals.of({A: Total(1.0, 60)}), Totals)


def test_a_copy_grown_whole_makes_no_object_per_series() -> None:
    n = 100_000
    totals = Totals({key(i): Total(float(i), 60) for i in range(n)})
    tracemalloc.start()
    try:
        copy = totals.copy()
        for i in range(n):
            copy.grow(i, copy.value[i] + 1.0, 120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # two arrays and a byte per series (1.7 MB); a dict copy of new Total tuples and
    # floats took 14 MB
    assert peak < 2_500_000
    assert copy[key(n - 1)] == Total(float(n), 120)
    assert totals[key(n - 1)] == Total(float(n - 1), 60)
