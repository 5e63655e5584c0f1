"""Totals: a counter rule's running total of each Tempo series, kept as two arrays.

A rule of a million series holds a million totals, and each evaluation, which is pure,
makes a new set of them from the stored one. As a dictionary of :class:`Total` tuples
that was about 120 bytes a series held (the dictionary's entry, the tuple, its float)
and as much again for the copy while the evaluation ran. :class:`Totals` keeps the
values and the times each last grew in two arrays (16 bytes a series), found through one
dictionary of positions (about 85 bytes a series in all); a copy copies the arrays and
shares the positions until a series is added or removed. The state stores the arrays as
they are, and reads them back as they are.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

from bridge.series import TempoKey


class Total(NamedTuple):
    """A counter's running total for one Tempo series."""

    value: float
    last_grown: int
    """End of the last window in which it grew or first appeared (or the checkpoint of a
    settle pass that found it grown): it is written while this is less than
    ``idle_after`` ago."""


_new: Callable[[type[Total], tuple[float, int]], Total] = tuple.__new__
"""``_new(Total, (value, last_grown))``: a Total without the Python-level ``__new__`` of a
NamedTuple (about 3 times faster), for totals read as a mapping."""


class Totals(Mapping[TempoKey, Total]):
    """Each Tempo series' :class:`Total`, in the order the series were added.

    Read as a mapping, each value is made as it is read. The evaluation's loops use
    :attr:`at`, :attr:`value`, :attr:`last_grown` and :attr:`touched` directly:
    ``value[at[key]]``. Only a copy made by :meth:`copy` (or a new one) is changed, and
    only by its maker.
    """

    __slots__ = ("_owned", "at", "last_grown", "touched", "value")

    def __init__(self, totals: Mapping[TempoKey, Total] | None = None) -> None:
        self.at: dict[TempoKey, int] = {}
        """The position of each series in the arrays."""
        self.value: array[float] = array("d")
        """Each series' total."""
        self.last_grown: array[int] = array("q")
        """When each series last grew (see :attr:`Total.last_grown`)."""
        self.touched = bytearray()
        """1 for each total set since the copy was made (every total of a new one)."""
        self._owned = True  # whether ``at`` is this one's alone, to change in place
        for key, total in (totals or {}).items():
            self.add(key, total.value, total.last_grown)

    @classmethod
    def of(cls, totals: Mapping[TempoKey, Total]) -> Totals:
        """``totals`` as Totals: itself when it is one."""
        return totals if isinstance(totals, Totals) else cls(totals)

    @classmethod
    def from_arrays(
        cls, keys: Iterable[TempoKey], values: array[float], grown: array[int],
    ) -> Totals:
        """Totals of ``keys`` (distinct), the arrays taken as they are."""
        totals = cls()
        totals.at = {key: i for i, key in enumerate(keys)}
        if not len(totals.at) == len(values) == len(grown):
            raise ValueError(
                f"{len(totals.at)} series, {len(values)} values and {len(grown)} times"
            )
        totals.value, totals.last_grown = values, grown
        totals.touched = bytearray(len(values))
        return totals

    def copy(self) -> Totals:
        """A copy to change: the arrays copied, the positions shared until a series is
        added or removed (by either; this one no longer changes them in place either)."""
        copied = Totals()
        copied.at, copied.value, copied.last_grown = self.at, self.value[:], self.last_grown[:]
        copied.touched = bytearray(len(self.value))
        copied._owned = self._owned = False
        return copied

    def changed(self) -> Mapping[TempoKey, Total]:
        """The totals set since the copy was made, as a mapping (a view: this one is not
        changed any more)."""
        return _Touched(self)

    def add(self, key: TempoKey, value: float, grown: int) -> None:
        """A new series' total (``key`` is not one of these)."""
        if not self._owned:
            self.at, self._owned = dict(self.at), True
        self.at[key] = len(self.value)
        self.value.append(value)
        self.last_grown.append(grown)
        self.touched.append(1)

    def grow(self, i: int, value: float, grown: int) -> None:
        """Set the total at position ``i`` to ``value``, grown at ``grown`` (or later)."""
        self.value[i] = value
        if grown > self.last_grown[i]:
            self.last_grown[i] = grown
        self.touched[i] = 1

    def remove(self, keys: Iterable[TempoKey]) -> None:
        """Drop the totals of ``keys`` (those held); the others keep their order."""
        gone = {self.at[key] for key in keys if key in self.at}
        if not gone:
            return
        kept = [(key, i) for key, i in self.at.items() if i not in gone]
        self.value = array("d", [self.value[i] for _, i in kept])
        self.last_grown = array("q", [self.last_grown[i] for _, i in kept])
        self.touched = bytearray([self.touched[i] for _, i in kept])
        self.at = {key: n for n, (key, _) in enumerate(kept)}
        self._owned = True

    # the mapping ----------------------------------------------------------------------

    def __getitem__(self, key: TempoKey) -> Total:
        i = self.at[key]
        return _new(Total, (self.value[i], self.last_grown[i]))

    def __contains__(self, key: object) -> bool:
        return key in self.at

    def __iter__(self) -> Iterator[TempoKey]:
        return iter(self.at)

    def __len__(self) -> int:
        return len(self.at)

    def __repr__(self) -> str:
        return f"Totals({dict(self.items())!r})"


class _Touched(Mapping[TempoKey, Total]):
    """The totals of a :class:`Totals` set since it was copied (:meth:`Totals.changed`)."""

    __slots__ = ("_totals",)

    def __init__(self, totals: Totals) -> None:
        self._totals = totals

    def __getitem__(self, key: TempoKey) -> Total:
        i = self._totals.at[key]
        if not self._totals.touched[i]:
            raise KeyError(key)
        return self._totals[key]

    def __iter__(self) -> Iterator[TempoKey]:
        touched = self._totals.touched
        return (key for key, i in self._totals.at.items() if touched[i])

    def __len__(self) -> int:
        return self._totals.touched.count(1)

    def __repr__(self) -> str:
        return f"{dict(self.items())!r}"
