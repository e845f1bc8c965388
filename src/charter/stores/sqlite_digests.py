"""Reconciliation's digests in an SQLite store, computed inside the database by the
functions charter registers on its connections (`_sqlite`: charter_digest and
charter_row_hash, from charter.digests), so no row leaves SQLite to be compared."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence

from charter import digests
from charter.digests import Digest
from charter.model import Copy, Entity, Field


def _columns(fields: Sequence[Field]) -> str:
    """The arguments of charter_digest / charter_row_hash: token kinds, id, version, fields."""
    names = "".join(f', "{f.name}"' for f in fields)
    return f"'{digests.codes(fields)}', id, version{names}"


def _range(low: str, high: str | None) -> tuple[str, list[str]]:
    if high is None:
        return "id >= ?", [low]
    return "id >= ? AND id < ?", [low, high]


def id_range(conn: sqlite3.Connection, table: Entity | Copy) -> tuple[str, str] | None:
    low, high = conn.execute(f'SELECT min(id), max(id) FROM "{table.table}"').fetchone()
    return None if low is None else (str(low), str(high))


def digest(
    conn: sqlite3.Connection,
    table: Entity | Copy,
    fields: Sequence[Field],
    low: str,
    high: str | None,
    splits: Sequence[str],
) -> list[Digest]:
    """One query per part: each a range scan of the primary key, so the parts together
    read the range once."""
    query = (
        f"SELECT count(*), charter_digest({_columns(fields)}), min(id), max(id) "
        f'FROM "{table.table}" WHERE '
    )
    bounds: list[str | None] = [low, *splits, high]
    found = []
    for start, end in itertools.pairwise(bounds):
        where, params = _range(start or "", end)
        count, total, first, last = conn.execute(query + where, params).fetchone()
        found.append(Digest(int(count), int(total or 0) & digests.MASK, first, last))
    return found


def digest_rows(
    conn: sqlite3.Connection,
    table: Entity | Copy,
    fields: Sequence[Field],
    low: str,
    high: str | None,
) -> list[tuple[str, int, int]]:
    where, params = _range(low, high)
    rows = conn.execute(
        f"SELECT id, version, charter_row_hash({_columns(fields)}) "
        f'FROM "{table.table}" WHERE {where} ORDER BY id',
        params,
    )
    return [(str(i), int(v), int(h) & digests.MASK) for i, v, h in rows]
