"""Which prefixes of the id a comparison groups rows by, chosen without reading the rows:
charter's ids are UUIDv7 (time-ordered hexadecimal), so ids close in time share their first
characters, and a prefix a few characters longer than the one every id shares cuts the
table into parts of about equal size. Any other text (a row written past charter with an
id of its own) is grouped the same way, only less evenly: an uneven cut costs a little
speed, never a wrong answer (a group is compared whole, whatever it holds)."""

from __future__ import annotations

_HEX = "0123456789abcdef"


def common(low: str, high: str) -> str:
    """The prefix every id between `low` and `high` shares."""
    shared = 0
    while shared < min(len(low), len(high)) and low[shared] == high[shared]:
        shared += 1
    return low[:shared]


def first_length(low: str, high: str, parts: int) -> int:
    """The longest prefix length at which the ids between `low` and `high` fall into at
    most `parts` groups (as many as it would be, were they spread evenly), one character
    longer than they share at least; hexadecimal digits count as 16 ways, a character
    both ends hold at the same place (a UUID's `-`) as one."""
    length = len(common(low, high))
    a = b = 0
    best = length + 1
    while length < max(len(low), len(high)):
        x, y = low[length : length + 1], high[length : length + 1]
        length += 1
        if x == y == "-":
            best = max(best, length)
            continue
        a, b = a * 16 + _digit(x), b * 16 + _digit(y)
        if b - a + 1 > parts:
            break
        best = length
    return best


def _digit(char: str) -> int:
    if not char:
        return 0
    found = _HEX.find(char.lower())
    return found if found >= 0 else min(ord(char), 15)


def step(parts: int) -> int:
    """How many characters more cut a group into at least `parts` (16 ways a character)."""
    chars = 1
    while 16**chars < parts:
        chars += 1
    return chars
