"""Cutting a range of ids into parts of about equal size, without reading it: charter's
ids are UUIDv7 (time-ordered), cut as 128-bit numbers; any other text (a row written past
charter with an id of its own) is cut by its characters' code points. A cut only needs to
be an id between the ends (ids compare as text in every store), so an uneven cut costs a
little speed, never a wrong answer."""

from __future__ import annotations

import re
import uuid

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_WIDTH = 8  # characters after the common prefix that a cut of other text looks at
_BASE = 0x110000  # code points
_SURROGATES = range(0xD800, 0xE000)  # not text: a cut there moves past them


def split(low: str, high: str, parts: int) -> list[str]:
    """Ascending ids `s` with low < s <= high that cut [low, high] into up to `parts`
    parts (fewer when the range is too narrow; none when low == high)."""
    if parts < 2 or low >= high:
        return []
    if _UUID.match(low) and _UUID.match(high):
        a, b = uuid.UUID(low).int, uuid.UUID(high).int
        cuts = [str(uuid.UUID(int=a + (b - a) * k // parts)) for k in range(1, parts)]
    else:
        cuts = _text_cuts(low, high, parts)
    return sorted({c for c in cuts if low < c <= high})


def _text_cuts(low: str, high: str, parts: int) -> list[str]:
    common = 0
    while common < min(len(low), len(high)) and low[common] == high[common]:
        common += 1
    prefix = low[:common]
    a = _number(low[common : common + _WIDTH])
    b = _number(high[common : common + _WIDTH])
    if b <= a:  # high only longer (low is its prefix) beyond what we look at
        b = a + 1
    return [prefix + _text(a + (b - a) * k // parts) for k in range(1, parts)]


def _number(text: str) -> int:
    digits = [ord(c) for c in text] + [0] * (_WIDTH - len(text))
    value = 0
    for digit in digits:
        value = value * _BASE + digit
    return value


def _text(value: int) -> str:
    digits = []
    for _ in range(_WIDTH):
        value, digit = divmod(value, _BASE)
        digits.append(digit)
    chars = []
    for digit in reversed(digits):
        if digit in _SURROGATES:
            digit = _SURROGATES.stop
        chars.append(chr(max(digit, 1)))  # no NUL: PostgreSQL text cannot hold one
    return "".join(chars).rstrip("\x01") or "\x01"
