"""Sizes as operators write them (`512M`, `4G`, `3.5G`) and as hosts report them (bytes)."""
from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
# What a setting may hold: digits, an optional fraction, a unit (no spaces, no bare bytes).
_SETTING_SIZE = re.compile(r"(\d{1,9})(?:\.(\d{1,3}))?([KMGT])(?:i?B)?", re.IGNORECASE)
SIZE_FORM = "a number with K, M, G or T, e.g. '512M', '4G' or '3.5G'"


def parse_size(value: str | int) -> int:
    """Bytes in a size; `0` is zero. Raises ValueError naming the value and the accepted form.

    Lenient (bare bytes, spaces): for sizes hosts and tools report. Settings go through
    :func:`parse_size_setting`."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative. Fix: 0 or more")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size. Fix: {SIZE_FORM}")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def parse_size_setting(value: object, *, zero_means_off: bool = False) -> int:
    """Bytes in a size setting: a string with a unit (`512M`, `3.5G`). A bare number is refused
    (Docker reads `512` as bytes, an operator usually means MiB), so are bools, ints and floats.
    `"0"` is accepted only where the setting says 0 turns the feature off."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size in quotes. Fix: {SIZE_FORM}")
    if zero_means_off and value == "0":
        return 0
    match = _SETTING_SIZE.fullmatch(value)
    if not match:
        hint = " (a unit is required)" if re.fullmatch(r"\d+(?:\.\d+)?", value) else ""
        zero = "; '0' turns it off" if zero_means_off else ""
        raise ValueError(f"{value!r} is not a size{hint}. Fix: {SIZE_FORM}{zero}")
    whole, fraction, unit = match.groups()
    factor = _UNITS[unit.lower()]
    fraction = fraction or ""
    size = int(whole) * factor + int(fraction or 0) * factor // 10 ** len(fraction)
    if size == 0:
        raise ValueError(f"{value!r} is zero. Fix: {SIZE_FORM}" + ("; or '0' to turn it off" if zero_means_off else ""))
    return size


def format_bytes(value: int) -> str:
    """The shortest exact size string (`3584M`, `4G`), as Docker and operators read it."""
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit.lower()]
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}B" if value else "0"
