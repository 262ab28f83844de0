"""Sizes and durations as people type them, and as the pool prints them."""

from __future__ import annotations

import math

import pytest

from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.units import (
    MAX_SIZE,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

KiB, MiB, GiB, TiB, PiB = (1024**n for n in range(1, 6))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1000", 1000),
        ("0", 0),
        ("512M", 512 * MiB),
        ("8G", 8 * GiB),
        ("1.5GiB", 3 * GiB // 2),
        ("1k", KiB),
        ("1KB", KiB),
        ("1kib", KiB),
        (" 2 g ", 2 * GiB),
        ("0.5K", 512),
        ("1 TB", TiB),
        ("1P", PiB),
        ("1.5", 1),  # plain bytes: the fraction of a byte is dropped
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_reads_what_people_type(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "G",
        "-1G",
        "+1G",
        "1GG",
        "1E",  # no exbibytes
        "1e3",
        "NaN",
        "nan",
        "inf",
        "1,5G",
        "1.G",
        ".5G",
        "ten",
        "\u0663G",  # ARABIC-INDIC DIGIT THREE
        "\uff11G",  # FULLWIDTH DIGIT ONE
        "8\u00a0G",  # a no-break space between number and unit
    ],
)
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_refuses_booleans(value: bool) -> None:
    with pytest.raises(InvalidInput, match="not a size"):
        parse_size(value)


def test_parse_size_refuses_negative_numbers() -> None:
    with pytest.raises(InvalidInput, match="cannot be negative"):
        parse_size(-1)


@pytest.mark.parametrize("text", ["9" * 400, "99999999P", "8192P", 2**63, 2**70])
def test_parse_size_refuses_what_does_not_fit_the_wire(text: str | int) -> None:
    with pytest.raises(InvalidInput, match="too large"):
        parse_size(text)


def test_parse_size_takes_the_largest_size_that_fits() -> None:
    assert parse_size(MAX_SIZE) == MAX_SIZE
    assert 0 < parse_size("8191P") <= MAX_SIZE


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("0", 0.0),
        ("30s", 30.0),
        ("30m", 1800.0),
        ("30M", 1800.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        (" 7d ", 7 * 86400.0),
        ("1w", 7 * 86400.0),
        ("1h1h", 7200.0),  # parts add up
        (0, 0.0),
        (12, 12.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_reads_what_people_type(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(
    "text",
    ["", "  ", "h", "-5s", "5x", "1e3", "nan", "inf", "1h-30m", "30 minutes", "\u0663m", "\uff11h", True],
)
def test_parse_duration_refuses_what_is_not_a_duration(text: str | bool) -> None:
    with pytest.raises(InvalidInput, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, -0.5, float("-inf")])
def test_parse_duration_refuses_negative_numbers(value: float) -> None:
    with pytest.raises(InvalidInput, match="cannot be negative"):
        parse_duration(value)


def test_parse_duration_refuses_nan() -> None:
    with pytest.raises(InvalidInput, match="not a duration"):
        parse_duration(math.nan)


@pytest.mark.parametrize("value", [math.inf, "9" * 400])
def test_parse_duration_refuses_an_endless_duration(value: float | str) -> None:
    with pytest.raises(InvalidInput, match="too long"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (512 * MiB, "512.0 MiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (TiB, "1.0 TiB"),
        (PiB, "1024.0 TiB"),  # TiB is the largest unit
        (-2048, "-2.0 KiB"),
        (1023.4, "1023 B"),
    ],
)
def test_format_size(size: float, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize("text", ["512M", "8G", "1.5GiB", "3T"])
def test_format_size_prints_what_parse_size_reads(text: str) -> None:
    printed = format_size(parse_size(text)).replace(" ", "")
    assert parse_size(printed) == parse_size(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0s"),
        (4.2, "4.2s"),
        (59.9, "59.9s"),
        (60, "1m 00s"),
        (61, "1m 01s"),
        (185, "3m 05s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (3725, "1h 02m"),
        (47 * 3600 + 59 * 60, "47h 59m"),
        (48 * 3600, "2d 0h"),
        (200_000, "2d 7h"),
        (30 * 86400 + 3 * 3600 + 5, "30d 3h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
