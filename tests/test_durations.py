"""Durations: Prometheus notation parsed to seconds and formatted back."""

from __future__ import annotations

import pytest

from bridge.durations import DurationError, Unit, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("500ms", 0.5),
        ("1s", 1.0),
        ("90s", 90.0),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("1h0m30s", 3630.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1y", 31536000.0),
        ("1d2h3m4s5ms", 93784.005),
        ("24h", 86400.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "an empty string is not a duration; write a whole number and a unit "
             "(ms, s, m, h, d, w, y), such as 90s or 1h30m"),
        ("30", "'30' has no unit; write 30s for seconds"),
        ("1.5h", "'1.5h' has a fraction; combine whole units instead, such as 1h30m or 1s500ms"),
        ("-1m", "'-1m' is negative; durations cannot be"),
        ("1min", "'1min' has an unknown unit 'min'; use ms, s, m, h, d, w, y"),
        ("1H", "'1H' has an unknown unit 'H'; use ms, s, m, h, d, w, y"),
        ("30s1m", "'30s1m' is not a duration: units go from largest to smallest, "
                  "each at most once, such as 1h30m"),
        ("1m1m", "'1m1m' is not a duration: units go from largest to smallest, "
                 "each at most once, such as 1h30m"),
        ("1m 30s", "'1m 30s' is not a duration; write a whole number and a unit "
                   "(ms, s, m, h, d, w, y), such as 90s or 1h30m"),
        (" 1m", "' 1m' has spaces around it; write a whole number and a unit "
                "(ms, s, m, h, d, w, y), such as 90s or 1h30m"),
        ("m", "'m' is not a duration; write a whole number and a unit "
              "(ms, s, m, h, d, w, y), such as 90s or 1h30m"),
        ("99999999999y", "'99999999999y' is too long a duration"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(text)
    assert str(caught.value) == message


def test_duration_error_is_a_value_error() -> None:
    # pydantic validators turn ValueError into validation errors.
    assert issubclass(DurationError, ValueError)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (45, "45s"),
        (45.5, "45s500ms"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (86400, "1d"),
        (7 * 86400, "1w"),
        (-60, "-1m"),
        (0.0004, "0s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "largest", "text"),
    [
        (2 * 86400, "h", "48h"),
        (8 * 86400 + 1.5, "h", "192h1s500ms"),
        (90, "h", "1m30s"),
        (3 * 3600, "m", "180m"),
        (0, "h", "0s"),
        (-86400, "h", "-24h"),
        (400 * 86400, "d", "400d"),
    ],
)
def test_format_up_to_a_unit(seconds: float, largest: Unit, text: str) -> None:
    assert format_duration(seconds, largest=largest) == text


@pytest.mark.parametrize("text", ["1ms", "59s", "1h1m1s", "2w3d", "1y1d", "10m"])
def test_format_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text
