"""Series types: an evaluation's samples as :class:`bridge.series.Samples` keeps them."""

from __future__ import annotations

import pytest

from bridge.series import Labels, Sample, Samples

A: Labels = (("__name__", "x_total"), ("model", "a"))
B: Labels = (("__name__", "x_total"), ("model", "b"))


def test_samples_read_back_in_the_order_written_singles_and_columns_alike() -> None:
    samples = Samples([(A, 60_000, 1.0)])
    samples.add_columns(120_000, [A, B], [2.0, 3.0])
    samples.add_columns(150_000, [], [])  # nothing written: nothing kept
    samples.append((B, 180_000, 4.0))
    samples.append((A, 180_000, 5.0))
    want: list[Sample] = [(A, 60_000, 1.0), (A, 120_000, 2.0), (B, 120_000, 3.0),
                          (B, 180_000, 4.0), (A, 180_000, 5.0)]
    assert list(samples) == want
    assert list(samples) == want  # read again: the same
    assert len(samples) == 5
    assert samples == want
    assert samples != want[:4]
    assert (samples[1], samples[-1], samples[1:3]) == (want[1], want[-1], want[1:3])
    assert [labels for labels, _, _ in samples] == [A, A, B, B, A]
    assert not Samples()
    assert Samples() == []
    with pytest.raises(TypeError):
        hash(samples)


def test_samples_know_when_each_series_has_one() -> None:
    """One window end's columns hold each series once (the encoder then writes each as
    it comes); anything else is counted."""
    end = Samples()
    end.add_columns(60_000, [A, B], [1.0, 2.0])
    assert end.distinct_series()
    end.append((A, 120_000, 3.0))
    assert not end.distinct_series()
    assert Samples([(A, 60_000, 1.0), (B, 60_000, 1.0)]).distinct_series()
    assert not Samples([(A, 60_000, 1.0), (A, 120_000, 1.0)]).distinct_series()
