"""Parsing and printing of the quantities people type: memory sizes and durations."""

from __future__ import annotations

import math
import re

from hivemind_nodepool.protocol.errors import InvalidInput

# ASCII digits only: \d alone also takes other scripts' digits ('٣G'), which nobody means to type.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE | re.ASCII)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE | re.ASCII)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SIZE = 2**63 - 1  # sizes travel as int64


def parse_size(text: str | int) -> int:
    """Bytes in '8G', '512M', '1.5GiB', '1000' (plain bytes). Powers of 1024, as Docker does."""
    if isinstance(text, bool):  # an int to Python, but `true` in a config file is no size
        raise InvalidInput(f"not a size: {text!r} (try 512M, 8G or 1.5GiB)")
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE.match(text)
        if not match:
            raise InvalidInput(f"not a size: {text!r} (try 512M, 8G or 1.5GiB)")
        number, unit, _ = match.groups()
        value = float(number) * 1024 ** _POWERS[unit.lower()]
        if not math.isfinite(value) or value > MAX_SIZE:
            raise InvalidInput(f"too large a size: {text!r} (at most {MAX_SIZE} bytes)")
        size = int(value)
    if size < 0:
        raise InvalidInput(f"a size cannot be negative: {text}")
    if size > MAX_SIZE:
        raise InvalidInput(f"too large a size: {text!r} (at most {MAX_SIZE} bytes)")
    return size


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
    if isinstance(text, bool):  # an int to Python, but `true` in a config file is no duration
        raise InvalidInput(f"not a duration: {text!r} (try 90s, 30m, 2h or 7d)")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        stripped = text.strip()
        parts = _DURATION.findall(stripped)
        if not stripped or "".join(n + u for n, u in parts) != stripped.replace(" ", ""):
            raise InvalidInput(f"not a duration: {text!r} (try 90s, 30m, 2h or 7d)")
        seconds = sum(float(number) * _SECONDS[unit.lower()] for number, unit in parts)
    if math.isnan(seconds):  # TOML and Python's JSON both read nan
        raise InvalidInput(f"not a duration: {text!r} (try 90s, 30m, 2h or 7d)")
    if seconds < 0:
        raise InvalidInput(f"a duration cannot be negative: {text}")
    if math.isinf(seconds):
        raise InvalidInput(f"too long a duration: {text!r}")
    return seconds


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
