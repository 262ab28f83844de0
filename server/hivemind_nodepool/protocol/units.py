"""Parsing and printing of the quantities people type: memory sizes and durations."""

from __future__ import annotations

import re

from hivemind_nodepool.protocol.errors import InvalidInput

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str | int) -> int:
    """Bytes in '8G', '512M', '1.5GiB', '1000' (plain bytes). Powers of 1024, as Docker does."""
    if isinstance(text, int):
        if text < 0:
            raise InvalidInput(f"a size cannot be negative: {text}")
        return text
    match = _SIZE.match(text)
    if not match:
        raise InvalidInput(f"not a size: {text!r} (try 512M, 8G or 1.5GiB)")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** _POWERS[unit.lower()])


def format_size(size: int | float) -> str:
    """'1.5 GiB' for 1610612736."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_duration(text: str | int | float) -> float:
    """Seconds in '30m', '1h30m', '7d', '90' (plain seconds)."""
    if isinstance(text, (int, float)):
        if text < 0:
            raise InvalidInput(f"a duration cannot be negative: {text}")
        return float(text)
    stripped = text.strip()
    parts = _DURATION.findall(stripped)
    if not stripped or "".join(n + u for n, u in parts) != stripped.replace(" ", ""):
        raise InvalidInput(f"not a duration: {text!r} (try 90s, 30m, 2h or 7d)")
    return sum(float(number) * _SECONDS[unit.lower()] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """'1h 02m', '3m 05s', '4.2s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24}h"
