"""Reconciliation's side of an SQLite store: digests computed inside the database by the
functions charter registers on its connections (`_sqlite`: charter_digests, charter_row_hash,
from charter.digests), so no row leaves SQLite to be compared; and the mends a repair
brings (records.Mend), applied by the copy's projector."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from charter import digests
from charter.digests import Digest
from charter.model import Copy, Entity, Field
from charter.records import Mend


def _columns(fields: Sequence[Field]) -> str:
    """The arguments of charter_digests / charter_row_hash: token kinds, id, version, fields."""
    names = "".join(f', "{f.name}"' for f in fields)
    return f"'{digests.codes(fields)}', id, version{names}"


def _under(prefix: str) -> tuple[str, list[Any]]:
    """A WHERE clause: ids starting with `prefix`, as a range of the primary key (SQLite
    compares text by its bytes: code points)."""
    if not prefix:
        return "", []
    end = digests.prefix_end(prefix)
    if end is None:
        return " WHERE id >= ?", [prefix]
    return " WHERE id >= ? AND id < ?", [prefix, end]


def id_range(conn: sqlite3.Connection, table: Entity | Copy) -> tuple[str, str] | None:
    low, high = conn.execute(f'SELECT min(id), max(id) FROM "{table.table}"').fetchone()
    return None if low is None else (str(low), str(high))


def digest(
    conn: sqlite3.Connection,
    table: Entity | Copy,
    fields: Sequence[Field],
    prefix: str,
    length: int,
) -> dict[str, Digest]:
    """One pass over the ids under `prefix`, grouped as it goes (digests.SQLiteGroups)."""
    where, params = _under(prefix)
    query = f'SELECT charter_digests(?, {_columns(fields)}) FROM "{table.table}"{where}'
    (text,) = conn.execute(query, [max(length, 0), *params]).fetchone()
    return digests.parse_groups(text)


def digest_rows(
    conn: sqlite3.Connection,
    table: Entity | Copy,
    fields: Sequence[Field],
    prefixes: Sequence[str],
) -> list[tuple[str, int, int]]:
    found: dict[str, tuple[int, int]] = {}
    query = f'SELECT id, version, charter_row_hash({_columns(fields)}) FROM "{table.table}"'
    for prefix in prefixes:
        where, params = _under(prefix)
        for i, v, h in conn.execute(query + where, params):
            found[str(i)] = (int(v), int(h) & digests.MASK)
    return [(i, v, h) for i, (v, h) in sorted(found.items())]


def tombstone(conn: sqlite3.Connection, copy: Copy, entity_id: str) -> int | None:
    row = conn.execute(
        "SELECT version FROM charter_tombstone WHERE copy = ? AND id = ?", (copy.name, entity_id)
    ).fetchone()
    return None if row is None else int(row[0])


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
