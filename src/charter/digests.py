"""The canonical encoding of a row, its 64-bit hash, and the digest of a set of rows, so
that an owner and its copy can be compared without reading either (charter.reconcile).

The encoding is generated from the charter's field types, not from what a database happens
to print, so every store produces the same bytes for the same values: each store computes
it inside its database (PostgreSQL in SQL: `stores/postgres/reconcile.py`; SQLite with the
functions below, registered on charter's connections), and this module is the reference
they are tested against (`tests/test_digest.py`).

A row's canonical text is its id, its version, then each field in the order asked, each
value as one token: `~` for null, else `<length>:<text>` (the length in characters, so no
value can run into the next). The text of a value, by type:

- string, text, enum, uuid, date: the canonical (wire) form (`charter.values`);
- timestamp: UTC, microseconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ`;
- integer: decimal; boolean: `true` / `false`;
- number: the 16 hexadecimal digits of its IEEE 754 double, big-endian, -0 taken as 0
  (printing a double is where databases disagree: PostgreSQL writes 1e+15, Python
  1000000000000000.0).

A row's hash is the first 8 bytes of the MD5 of that text (UTF-8), as an unsigned number.
A digest is the count of rows and the sum of their hashes modulo 2^64: the same whatever
order the rows come in, and it can be kept up to date by adding a row's hash when it
arrives and subtracting it when it goes (charter's incremental digests).

Two different sets of rows get the same digest only if their counts match and their sums
collide: for changes that look random to MD5, about one chance in 2^64 (1.8e19) per range
compared. Someone who can choose the rows could build a collision on purpose (MD5 is not
secure, and sums are easier to steer than a hash): reconciliation finds accidents, not an
adversary with write access to the copy, who is a G1 problem."""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from charter.model import Field

MOD = 1 << 64
MASK = MOD - 1

# One letter per kind of token: what a field's type is hashed as.
TEXT, INTEGER, NUMBER, BOOLEAN = "s", "i", "n", "b"
CODES = {
    "string": TEXT,
    "text": TEXT,
    "enum": TEXT,
    "uuid": TEXT,
    "date": TEXT,
    "timestamp": TEXT,
    "integer": INTEGER,
    "number": NUMBER,
    "boolean": BOOLEAN,
}
KEY_CODES = TEXT + INTEGER  # the id and the version, before the fields


def codes(fields: Sequence[Field]) -> str:
    """The token kinds of a row of `fields`: id and version first."""
    return KEY_CODES + "".join(CODES[f.type] for f in fields)


def value_text(code: str, value: Any) -> str:
    """The text of one non-null value, for its token kind. A value stored past charter in
    a type the field does not have (SQLite keeps what it is given) gets its plain text:
    it then hashes differently from the owner's, which is the point."""
    if code == NUMBER and isinstance(value, int | float) and not isinstance(value, bool):
        return struct.pack(">d", float(value) + 0.0).hex()
    if code == BOOLEAN and isinstance(value, bool | int):
        return "true" if value else "false"
    if code == INTEGER and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def row_text(kinds: str, values: Sequence[Any]) -> str:
    """The canonical text of one row: `kinds` from codes(), `values` id, version, fields."""
    parts = []
    for code, value in zip(kinds, values, strict=True):
        if value is None:
            parts.append("~")
        else:
            text = value_text(code, value)
            parts.append(f"{len(text)}:{text}")
    return "".join(parts)


def text_hash(text: str) -> int:
    """The unsigned 64-bit hash of a canonical text."""
    return int.from_bytes(hashlib.md5(text.encode("utf-8", "surrogatepass")).digest()[:8])


def row_hash(kinds: str, values: Sequence[Any]) -> int:
    return text_hash(row_text(kinds, values))


def signed(value: int) -> int:
    """An unsigned 64-bit number as SQLite keeps integers (signed)."""
    value &= MASK
    return value - MOD if value >= 1 << 63 else value


@dataclass(frozen=True, slots=True)
class Digest:
    """The rows of one id range: how many, the sum of their hashes modulo 2^64, and the
    lowest and highest id (None when there are none), to split the range further."""

    count: int = 0
    total: int = 0
    low: str | None = None
    high: str | None = None

    def same(self, other: Digest) -> bool:
        """Whether the two hold the same rows (as far as a digest can tell)."""
        return self.count == other.count and self.total == other.total

    @classmethod
    def of(cls, rows: Sequence[tuple[str, int]]) -> Digest:
        """The digest of (id, hash) pairs."""
        if not rows:
            return cls()
        ids = [i for i, _ in rows]
        return cls(len(rows), sum(h for _, h in rows) & MASK, min(ids), max(ids))


def sqlite_row_hash(kinds: str, *values: Any) -> int:
    """charter_row_hash(kinds, id, version, fields…) on charter's SQLite connections."""
    return signed(row_hash(kinds, values))


class SQLiteDigest:
    """charter_digest(kinds, id, version, fields…): the sum of the rows' hashes modulo 2^64,
    an aggregate on charter's SQLite connections (signed, as SQLite keeps integers)."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, kinds: str, *values: Any) -> None:
        self.total += row_hash(kinds, values)

    def finalize(self) -> int:
        return signed(self.total)


def cut(rows: Sequence[tuple[str, int]], splits: Sequence[str]) -> list[Digest]:
    """The digests of (id, hash) pairs in the parts that ascending `splits` cut them into."""
    parts: list[list[tuple[str, int]]] = [[] for _ in range(len(splits) + 1)]
    for row in rows:
        parts[bisect.bisect_right(splits, row[0])].append(row)
    return [Digest.of(part) for part in parts]
