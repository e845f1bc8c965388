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

- string, text, enum, uuid: the canonical (wire) form (`charter.values`);
- timestamp: the microseconds since 2000-01-01T00:00:00Z as a signed 64-bit number, its 16
  hexadecimal digits big-endian (what PostgreSQL's `timestamptz_send` writes, so the
  server formats nothing: printing a time with `to_char` cost a third of a digest);
- date: the days since 2000-01-01 as a signed 32-bit number, 8 hexadecimal digits;
- integer: decimal; boolean: `true` / `false`;
- number: the 16 hexadecimal digits of its IEEE 754 double, big-endian, -0 taken as 0
  (printing a double is where databases disagree: PostgreSQL writes 1e+15, Python
  1000000000000000.0).

A row's hash is the first 8 bytes of the MD5 of that text (UTF-8), as an unsigned number.
A digest is the count of rows and the sum of their hashes modulo 2^64: the same whatever
order the rows come in, and it can be kept up to date by adding a row's hash when it
arrives and subtracting it when it goes (charter's incremental digests).

Between two PostgreSQL stores, groups of rows may be digested by PostgreSQL's own hash
instead (`hash_record_extended`, the functions of its hash indexes and partitions: 64 bits,
each type's equality, a fifth of the md5's cost), when both servers say they hash alike
(Store.native_hash: their version, a probe value's hash, the columns' types); the rows of a
differing group are still read and compared by the canonical hash, so what is found is
the same, and the odds below the same in kind.

Two different sets of rows get the same digest only if their counts match and their sums
collide: for changes that look random to MD5, about one chance in 2^64 (1.8e19) per range
compared. Someone who can choose the rows could build a collision on purpose (MD5 is not
secure, and sums are easier to steer than a hash): reconciliation finds accidents, not an
adversary with write access to the copy, who is a G1 problem."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from charter import clock
from charter.errors import OutOfTimeError
from charter.model import Field

MOD = 1 << 64
MASK = MOD - 1

# One letter per kind of token: what a field's type is hashed as.
TEXT, INTEGER, NUMBER, BOOLEAN, TIMESTAMP, DATE = "s", "i", "n", "b", "t", "d"
CODES = {
    "string": TEXT,
    "text": TEXT,
    "enum": TEXT,
    "uuid": TEXT,
    "date": DATE,
    "timestamp": TIMESTAMP,
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
    if code == TIMESTAMP:
        moment = _moment(value)
        if moment is not None:
            delta = moment - _EPOCH
            micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            return struct.pack(">q", micros).hex()
    if code == DATE:
        day = _day(value)
        if day is not None:
            return struct.pack(">i", (day - _EPOCH.date()).days).hex()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _moment(value: Any) -> dt.datetime | None:
    """A timestamp as a store holds it (an aware datetime, or its text), None if not one."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value
    return None


def _day(value: Any) -> dt.date | None:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            return None
    return value if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else None


def row_text(kinds: str, values: Sequence[Any]) -> str:
    """The canonical text of one row: `kinds` from codes(), `values` id, version, fields."""
    parts = []
    for code, value in zip(kinds, values, strict=True):
        if value is None:
            parts.append("~")
            continue
        # the common cases first: value_text's checks were a third of SQLite's digest
        if code == TEXT and type(value) is str:
            text = value
        elif code == INTEGER and type(value) is int:
            text = str(value)
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


class SQLiteGroups:
    """charter_digests(length, kinds, id, version, fields…): the rows' digests by the
    first `length` characters of their id, as text (`key count total` lines, the key in
    JSON), in one pass in the table's order: SQLite would sort a million rows to GROUP BY
    an expression, and sums its integers in 64 bits."""

    def __init__(self) -> None:
        self.groups: dict[str, list[int]] = {}

    def step(self, length: int, kinds: str, *values: Any) -> None:
        key = str(values[0])[:length]
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = [0, 0]
        group[0] += 1
        group[1] += row_hash(kinds, values)

    def finalize(self) -> str:
        return "\n".join(
            f"{json.dumps(key)} {count} {total & MASK}"
            for key, (count, total) in self.groups.items()
        )


def parse_groups(text: str | None) -> dict[str, Digest]:
    """What SQLiteGroups wrote, as Store.digest returns it."""
    found: dict[str, Digest] = {}
    for line in (text or "").splitlines():
        key, count, total = line.rsplit(" ", 2)
        found[json.loads(key)] = Digest(int(count), int(total))
    return found


def group(rows: Iterable[tuple[str, int]], prefix: str, length: int) -> dict[str, Digest]:
    """The digests of (id, hash) pairs whose id starts with `prefix`, by the first `length`
    characters of the id (the whole id when shorter): what Store.digest returns."""
    found: dict[str, list[int]] = {}
    for entity_id, hashed in rows:
        if entity_id.startswith(prefix):
            group = found.setdefault(entity_id[:length], [0, 0])
            group[0] += 1
            group[1] += hashed
    return {key: Digest(count, total & MASK) for key, (count, total) in found.items()}


_TOP = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def prefix_end(prefix: str) -> str | None:
    """The least text above every text that starts with `prefix` (None: there is none), so
    `prefix <= id < prefix_end(prefix)` is "id starts with prefix" as a range an index
    serves (ids compare by code points in every store: binary in SQLite, C collation)."""
    while prefix:
        last = ord(prefix[-1])
        if last < _TOP:
            following = last + 1
            if following in _SURROGATES:
                following = _SURROGATES.stop
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


UPPER = 256  # at most about how many buckets one group of the kept upper level sums


def upper_length(sample: str, length: int) -> int:
    """The prefix length of the upper level a store keeps over buckets of `length` (a
    TicTac tree's second level), so that each of its groups sums at most about UPPER
    buckets: each character of `sample` (any id) counted as 16 ways, a `-` (a UUID's, at
    the same place in every id) as one."""
    shorter, ways = length, 1
    while shorter > 0 and ways < UPPER:
        shorter -= 1
        ways *= 1 if sample[shorter : shorter + 1] == "-" else 16
    return shorter


def bucket_key(table: str, fields: Sequence[Field]) -> str:
    """What a store keeps the incremental buckets of `table` on `fields` under: a copy of
    other fields (or after a field was added) is another key, built anew."""
    return f"{table}:{codes(fields)}:{','.join(f.name for f in fields)}"


def in_time(deadline: float | None) -> None:
    """OutOfTimeError when `deadline` (clock.monotonic()) has passed before a digest starts:
    each store's pass is then stopped inside its database (its own way) if it runs past."""
    if deadline is not None and clock.monotonic() > deadline:
        raise OutOfTimeError("the deadline passed before the digest started")
