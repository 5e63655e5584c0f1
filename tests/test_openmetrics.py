"""OpenMetrics text of rule samples: exemplars where OpenMetrics 1.0 allows them, and only there.

The text is checked line by line, then handed to the real ``promtool tsdb
create-blocks-from openmetrics``, which refuses a whole file with an exemplar on a gauge or
``unknown`` sample, or with two exemplars on one sample.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bridge.openmetrics import Family, OpenMetricsError, format_exemplar, format_openmetrics
from bridge.series import STALE_NAN, Exemplar, Labels, Sample
from tests.support.promtool import PromtoolError, promtool

T = 1_795_780_800_000  # ms, a window end
COST: Labels = (("__name__", "cost_usd_total"), ("model", "a"))
MAX: Labels = (("__name__", "cost_max_usd"), ("model", "a"))
REQUESTS: Labels = (("__name__", "requests_count"), ("model", "a"))
BIG = Exemplar("4bf92f3577b34da6a3ce929d0e0e4736", 2.5, T - 30_500)
SMALL = Exemplar("1", 0.5, T - 1)


def families() -> list[Family]:
    """A counter, a gauge and a counter without ``_total``, each with exemplars."""
    def two(labels: Labels) -> tuple[list[Sample], dict[tuple[Labels, int], list[Exemplar]]]:
        samples = [(labels, T - 60_000, 0.0), (labels, T, 3.0), (labels, T + 60_000, STALE_NAN)]
        return samples, {(labels, T): [BIG, SMALL]}

    return [Family("cost_usd_total", "counter", *two(COST)),
            Family("cost_max_usd", "gauge", *two(MAX)),
            Family("requests_count", "counter", *two(REQUESTS))]


def test_a_counter_sample_carries_its_first_exemplar_and_no_other_sample_does() -> None:
    assert format_openmetrics(families()).splitlines() == [
        "# TYPE cost_usd counter",
        'cost_usd_total{model="a"} 0.0 1795780740',
        'cost_usd_total{model="a"} 3.0 1795780800 '
        '# {traceID="4bf92f3577b34da6a3ce929d0e0e4736"} 2.5 1795780769.500',
        "# TYPE cost_max_usd gauge",
        'cost_max_usd{model="a"} 0.0 1795780740',
        'cost_max_usd{model="a"} 3.0 1795780800',
        "# TYPE requests_count unknown",
        'requests_count{model="a"} 0.0 1795780740',
        'requests_count{model="a"} 3.0 1795780800',
        "# EOF",
    ]


def test_exemplar_syntax() -> None:
    assert format_exemplar(SMALL) == '# {traceID="1"} 0.5 1795780799.999'
    assert format_exemplar(Exemplar("abc", 3.0, T)) == '# {traceID="abc"} 3.0 1795780800'
    assert format_exemplar(Exemplar("abc", math.inf, 5)) == '# {traceID="abc"} +Inf 0.005'
    assert format_exemplar(Exemplar('a"b\\', 1e-07, T)) == (
        '# {traceID="a\\"b\\\\"} 1e-07 1795780800')


def test_rules_sharing_a_family_share_its_exemplars() -> None:
    other: Labels = (("__name__", "cost_usd_total"), ("model", "b"))
    text = format_openmetrics([
        Family("cost_usd_total", "counter", [(COST, T, 1.0)], {(COST, T): [SMALL]}),
        Family("cost_usd_total", "counter", [(other, T, 2.0)], {(other, T): [BIG]}),
    ])
    assert text.splitlines()[1:3] == [
        'cost_usd_total{model="a"} 1.0 1795780800 # {traceID="1"} 0.5 1795780799.999',
        'cost_usd_total{model="b"} 2.0 1795780800 '
        '# {traceID="4bf92f3577b34da6a3ce929d0e0e4736"} 2.5 1795780769.500',
    ]
    with pytest.raises(OpenMetricsError, match="would both write the OpenMetrics family"):
        format_openmetrics([Family("cost_usd_total", "counter", []),
                            Family("cost_usd", "gauge", [])])


@pytest.mark.prometheus
def test_promtool_takes_the_text_and_refuses_exemplars_elsewhere(tmp_path: Path) -> None:
    good = tmp_path / "good.om"
    good.write_text(format_openmetrics(families()))
    promtool("tsdb", "create-blocks-from", "openmetrics", good, tmp_path / "blocks")
    # What the format leaves out, promtool refuses: an exemplar on a gauge's or an unknown
    # family's sample, and a second exemplar on a counter's.
    exemplar = format_exemplar(SMALL)
    for line, name in [('cost_max_usd{model="a"} 3.0 1795780800', "gauge"),
                       ('requests_count{model="a"} 3.0 1795780800', "unknown"),
                       ('cost_usd_total{model="a"} 3.0 1795780800 ' + format_exemplar(BIG),
                        "second")]:
        bad = tmp_path / f"{name}.om"
        bad.write_text(good.read_text().replace(line, f"{line} {exemplar}", 1))
        assert bad.read_text() != good.read_text()
        with pytest.raises(PromtoolError, match="exemplar"):
            promtool("tsdb", "create-blocks-from", "openmetrics", bad, tmp_path / name)
