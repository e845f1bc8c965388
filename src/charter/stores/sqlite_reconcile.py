"""Reconciliation's side of an SQLite store: digests computed inside the database by the
functions charter registers on its connections (`_sqlite`: charter_digest and
charter_row_hash, from charter.digests), so no row leaves SQLite to be compared; and the
mends a repair brings (records.Mend), applied by the copy's projector."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence

from charter import digests
from charter.digests import Digest
from charter.model import Copy, Entity, Field
from charter.records import Mend


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


def mend(conn: sqlite3.Connection, copy: Copy, mends: Sequence[Mend], now: str) -> int:
    """Each mend the copy takes (Mend.takes), inside the caller's write transaction."""
    table = f'"{copy.table}"'
    names = ["id", "version", *copy.fields, "synced_at"]
    columns = ", ".join(f'"{n}"' for n in names)
    sets = ", ".join(f'"{n}" = excluded."{n}"' for n in names[1:])
    upsert = (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' for _ in names)}) "
        f"ON CONFLICT (id) DO UPDATE SET {sets}"
    )
    changed = 0
    for item in mends:
        held = conn.execute(f"SELECT version FROM {table} WHERE id = ?", (item.entity_id,))
        row = held.fetchone()
        seen = conn.execute(
            "SELECT version FROM charter_tombstone WHERE copy = ? AND id = ?",
            (copy.name, item.entity_id),
        ).fetchone()
        if not item.takes(row[0] if row else None, seen[0] if seen else None):
            continue
        changed += 1
        if item.over is not None:
            conn.execute(
                "DELETE FROM charter_tombstone WHERE copy = ? AND id = ?",
                (copy.name, item.entity_id),
            )
        if item.state is None:
            conn.execute(f"DELETE FROM {table} WHERE id = ?", (item.entity_id,))
            conn.execute(
                "INSERT INTO charter_tombstone VALUES (?, ?, ?) ON CONFLICT (copy, id) "
                "DO UPDATE SET version = max(version, excluded.version)",
                (copy.name, item.entity_id, item.version),
            )
        else:
            state = item.state
            values = [state.get(name) for name in copy.fields]
            conn.execute(upsert, (item.entity_id, item.version, *values, now))
    return changed
