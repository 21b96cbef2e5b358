"""The one duration grammar (hpcinsight.core.durations): what it reads, what it refuses and how it
says so, and that its formatter writes what it reads back."""

from __future__ import annotations

import pytest

from hpcinsight.core.durations import describe_ms, format_ms, parse_ms, parse_seconds
from hpcinsight.core.settings import ConfigError


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("90s", 90_000),
        ("5m", 300_000),
        ("1h30m", 5_400_000),
        ("2d", 172_800_000),
        ("0s", 0),
        ("250ms", 250),
        ("1.5s", 1500),
        ("0.1s", 100),
        ("1.5d", 129_600_000),
        ("1h1m1s1ms", 3_661_001),
        (" 10s ", 10_000),
        ("5ms", 5),
        ("1m30s", 90_000),
        ("1.5ms", 2),
    ],
)
def test_the_grammar(text: str, ms: int) -> None:
    assert parse_ms(text, "--x") == ms
    assert parse_seconds(text, "--x") == (0.0015 if text == "1.5ms" else ms / 1000)  # seconds are not rounded


def test_seconds_are_exact() -> None:
    assert parse_seconds("0.1s", "--x") + parse_seconds("0.2s", "--x") == pytest.approx(0.3)
    assert parse_seconds("1h30m", "--x") == 5400.0


def test_a_plain_number_only_where_the_setting_takes_one_and_in_its_unit() -> None:
    assert parse_ms("90", "--lateness", plain="s") == 90_000
    assert parse_ms("0.5", "--lateness", plain="s") == 500
    assert parse_seconds("90", "--since", plain="s") == 90.0
    assert parse_ms("250", "--x", plain="ms") == 250
    assert parse_ms("2", "--x", plain="d") == 172_800_000
    with pytest.raises(ConfigError, match="group_wait: '30' is not a duration"):
        parse_seconds("30", "group_wait")


@pytest.mark.parametrize("bad", ["", "  ", "5x", "5", "m5", "5 m", "1h-5m", "-5s", "1e3s", "s", "5mm", "1.s", ".5s", "5S"])
def test_a_bad_value_names_the_setting(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_ms(bad, "--windows")
    assert str(err.value) == f"--windows: {bad!r} is not a duration (e.g. 500ms, 90s, 5m, 1h30m, 2d)"
    assert isinstance(err.value, ValueError)  # callers that catch ValueError still do


def test_the_message_of_the_issue() -> None:
    with pytest.raises(ConfigError, match=r"^--windows: '5x' is not a duration \(e.g. 500ms, 90s, 5m, 1h30m, 2d\)$"):
        parse_ms("5x", "--windows")


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (500, "500ms"),
        (90_000, "1m30s"),
        (5_400_000, "1h30m"),
        (86_400_000, "1d"),
        (172_800_000 + 1000, "2d1s"),
        (3_661_001, "1h1m1s1ms"),
    ],
)
def test_format(ms: int, text: str) -> None:
    assert format_ms(ms) == text
    assert parse_ms(text, "--x") == ms


def test_round_trip() -> None:
    for ms in [0, 1, 999, 1000, 59_999, 60_000, 3_599_999, 86_399_999, 86_400_001, 10**12 + 7, *range(0, 200_000, 997)]:
        assert parse_ms(format_ms(ms), "--x") == ms
    for text in ("500ms", "45s", "5m", "1h30m", "2d", "0s", "1d1h1m1s1ms"):
        assert format_ms(parse_ms(text, "--x")) == text
    with pytest.raises(ValueError):
        format_ms(-1)


def test_describe_is_for_people() -> None:
    assert [describe_ms(ms) for ms in (45_000, 720_000, 5_400_000, 3 * 86_400_000, 1.5 * 86_400_000, 0)] == [
        "45 s",
        "12 min",
        "1.5 h",
        "3 d",
        "1.5 d",
        "0 s",
    ]
