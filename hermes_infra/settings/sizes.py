"""Sizes as operators write them (`512M`, `4G`, `3.5G`) and as hosts report them (bytes)."""
from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: str | int) -> int:
    """Bytes in a size; `0` is zero. Raises ValueError naming the value and the accepted form."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative. Fix: 0 or more")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size. Fix: a number with K, M, G or T, e.g. '512M' or '4G'")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def format_bytes(value: int) -> str:
    """The shortest exact size string (`3584M`, `4G`), as Docker and operators read it."""
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit.lower()]
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}B" if value else "0"
