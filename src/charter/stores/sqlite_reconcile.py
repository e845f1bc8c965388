"""Reconciliation's side of an SQLite store: digests computed inside the database by the
functions charter registers on its connections (`_sqlite`: charter_digests, charter_row_hash,
from charter.digests), so no row leaves SQLite to be compared; and the mends a repair
brings (records.Mend), applied by the copy's projector."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from charter import clock, digests
from charter.digests import Digest
from charter.errors import OutOfTimeError
from charter.model import Copy, Entity, Field
from charter.records import Mend


def _columns(fields: Sequence[Field]) -> str:
    """The arguments of charter_digests / charter_row_hash: token kinds, id, version, fields."""
    names = "".join(f', "{f.name}"' for f in fields)
    return f"'{digests.codes(fields)}', id, version{names}"


def _under(prefix: str, column: str = "id", joined: str = "WHERE") -> tuple[str, list[Any]]:
    """A condition: `column` starting with `prefix`, as a range an index serves (SQLite
    compares text by its bytes: code points)."""
    if not prefix:
        return "", []
    end = digests.prefix_end(prefix)
    if end is None:
        return f" {joined} {column} >= ?", [prefix]
    return f" {joined} {column} >= ? AND {column} < ?", [prefix, end]


def id_range(conn: sqlite3.Connection, table: Entity | Copy) -> tuple[str, str] | None:
    """Two queries: SQLite reads min(id) or max(id) alone from the end of the index, but
    both in one query from every row (a whole pass, before a check's budget could start)."""
    (low,) = conn.execute(f'SELECT min(id) FROM "{table.table}"').fetchone()
    (high,) = conn.execute(f'SELECT max(id) FROM "{table.table}"').fetchone()
    return None if low is None or high is None else (str(low), str(high))


def digest(
    conn: sqlite3.Connection,
    table: Entity | Copy,
    fields: Sequence[Field],
    prefix: str,
    length: int,
    deadline: float | None = None,
) -> dict[str, Digest]:
    """One pass over the ids under `prefix`, grouped as it goes (digests.SQLiteGroups);
    with `deadline`, interrupted by a progress handler once it passes."""
    where, params = _under(prefix)
    query = f'SELECT charter_digests(?, {_columns(fields)}) FROM "{table.table}"{where}'
    with _until(conn, deadline):
        (text,) = conn.execute(query, [max(length, 0), *params]).fetchone()
    return digests.parse_groups(text)


PROGRESS_STEPS = 20_000  # SQLite's VM instructions between looks at the deadline (~1 ms)


@contextmanager
def _until(conn: sqlite3.Connection, deadline: float | None) -> Iterator[None]:
    """Around one query: past `deadline` (clock.monotonic()) SQLite stops it, and this
    raises OutOfTimeError."""
    if deadline is None:
        yield
        return
    digests.in_time(deadline)
    conn.set_progress_handler(lambda: int(clock.monotonic() > deadline), PROGRESS_STEPS)
    try:
        yield
    except sqlite3.OperationalError as exc:
        if clock.monotonic() > deadline and "interrupt" in str(exc):
            raise OutOfTimeError("the digest was stopped at its deadline") from exc
        raise
    finally:
        conn.set_progress_handler(None, 0)


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


# -- incremental digests: buckets kept as rows change ------------------------------------
#
# Each (table, fields) compared incrementally has its buckets (the digest of the rows whose
# id starts with each `length`-character prefix) in charter_bucket, and triggers on the
# table that mark a bucket dirty in the same transaction as any write to it (charter's or
# not: SQLite's triggers cannot be turned off). A check recomputes only the dirty buckets,
# in a write transaction (so no write slips between the recomputation and the marks'
# removal), then hands back every bucket.

BUCKET_TABLES = """
CREATE TABLE IF NOT EXISTS charter_bucket (
    key TEXT NOT NULL, bucket TEXT NOT NULL, count INTEGER NOT NULL, total INTEGER NOT NULL,
    PRIMARY KEY (key, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS charter_bucket_dirty (
    key TEXT NOT NULL, bucket TEXT NOT NULL, PRIMARY KEY (key, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS charter_bucket_meta (
    key TEXT PRIMARY KEY, tbl TEXT NOT NULL, length INTEGER NOT NULL);
"""


def bucket_length(conn: sqlite3.Connection, key: str) -> int | None:
    """The prefix length the buckets of `key` are kept at (None: not kept)."""
    try:
        row = conn.execute("SELECT length FROM charter_bucket_meta WHERE key = ?", (key,))
    except sqlite3.OperationalError:  # no such table: never kept
        return None
    found = row.fetchone()
    return None if found is None else int(found[0])


def refresh(
    conn: sqlite3.Connection,
    table: Entity | Copy,
    fields: Sequence[Field],
    key: str,
    length: int,
) -> None:
    """Bring the buckets of `table` on `fields` at `length` up to date, inside the caller's
    write transaction: built (triggers, every bucket) when not kept at that length, else
    the dirty ones recomputed."""
    if bucket_length(conn, key) != length:
        _build(conn, table, fields, key, length)
    else:
        dirty = [
            b
            for (b,) in conn.execute(
                "SELECT bucket FROM charter_bucket_dirty WHERE key = ?", (key,)
            )
        ]
        for bucket in dirty:
            fresh = digest(conn, table, fields, bucket, length).get(bucket)
            if fresh is None or fresh.count == 0:
                conn.execute(
                    "DELETE FROM charter_bucket WHERE key = ? AND bucket = ?", (key, bucket)
                )
            else:
                conn.execute(
                    "INSERT INTO charter_bucket VALUES (?, ?, ?, ?) ON CONFLICT (key, bucket) "
                    "DO UPDATE SET count = excluded.count, total = excluded.total",
                    (key, bucket, fresh.count, digests.signed(fresh.total)),
                )
        conn.execute("DELETE FROM charter_bucket_dirty WHERE key = ?", (key,))
        _upper(conn, key, dirty)


def _top(conn: sqlite3.Connection, key: str) -> int | None:
    """The length of the upper level kept for `key` (None: none kept)."""
    columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(charter_bucket_meta)")}
    if "top" not in columns:
        return None
    row = conn.execute("SELECT top FROM charter_bucket_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _upper(conn: sqlite3.Connection, key: str, buckets: Sequence[str]) -> None:
    """The upper level's groups over `buckets` ("": all) summed again from the buckets (a
    TicTac tree's second level, kept under `key^`), in the caller's transaction."""
    top = _top(conn, key)
    if top is None or not buckets:
        return
    upper = f"{key}^"
    groups = [""] if "" in buckets else sorted({b[:top] for b in buckets})
    for group in groups:
        where, params = _under(group, "bucket", "AND")
        if group:
            conn.execute("DELETE FROM charter_bucket WHERE key = ? AND bucket = ?", (upper, group))
        else:
            conn.execute("DELETE FROM charter_bucket WHERE key = ?", (upper,))
        sums = _sums(conn, key, where, params, top)
        conn.executemany(
            "INSERT INTO charter_bucket VALUES (?, ?, ?, ?)",
            [
                (upper, b, d.count, digests.signed(d.total))
                for b, d in sums.items()
                if not group or b == group
            ],
        )


def bucket_digest(conn: sqlite3.Connection, key: str, prefix: str, by: int) -> dict[str, Digest]:
    """The kept buckets of `key` under `prefix`, summed by their first `by` characters (the
    upper level as kept, when it is the one asked for)."""
    if not prefix and by == _top(conn, key):
        rows = conn.execute(
            "SELECT bucket, count, total FROM charter_bucket WHERE key = ?", (f"{key}^",)
        )
        return {str(b): Digest(int(c), int(t) & digests.MASK) for b, c, t in rows}
    where, params = _under(prefix, "bucket", "AND")
    return _sums(conn, key, where, params, by)


def _sums(
    conn: sqlite3.Connection, key: str, where: str, params: list[Any], by: int
) -> dict[str, Digest]:
    rows = conn.execute(  # the halves of each (signed) total: SQLite sums in 64 bits
        "SELECT substr(bucket, 1, ?), sum(count), sum(total & 4294967295), sum(total >> 32) "
        f"FROM charter_bucket WHERE key = ?{where} GROUP BY 1",
        [by, key, *params],
    )
    return {
        str(b): Digest(int(c), (int(low) + (int(high) << 32)) & digests.MASK)
        for b, c, low, high in rows
    }


def _build(
    conn: sqlite3.Connection, table: Entity | Copy, fields: Sequence[Field], key: str, length: int
) -> None:
    for statement in BUCKET_TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)
    drop_buckets(conn, key)
    if isinstance(table, Copy):  # a copy has one set of fields: those it had are gone
        others = conn.execute(
            "SELECT key FROM charter_bucket_meta WHERE tbl = ? AND key <> ?", (table.table, key)
        ).fetchall()
        for (other,) in others:
            drop_buckets(conn, str(other))
    name = _trigger(key)
    # not INSERT OR IGNORE: the outer statement's conflict policy (an apply's upsert) would
    # override the trigger's
    mark = (
        f"INSERT INTO charter_bucket_dirty SELECT {_quote(key)}, substr({{0}}.id, 1, {length}) "
        f"WHERE NOT EXISTS (SELECT 1 FROM charter_bucket_dirty WHERE key = {_quote(key)} "
        f"AND bucket = substr({{0}}.id, 1, {length}))"
    )
    for event, rows in (("INSERT", ("NEW",)), ("DELETE", ("OLD",)), ("UPDATE", ("OLD", "NEW"))):
        body = "; ".join(mark.format(r) for r in rows)
        conn.execute(
            f'CREATE TRIGGER "{name}_{event.lower()}" AFTER {event} ON "{table.table}" '
            f"BEGIN {body}; END"
        )
    whole = digest(conn, table, fields, "", length)
    conn.executemany(
        "INSERT INTO charter_bucket VALUES (?, ?, ?, ?)",
        [(key, b, d.count, digests.signed(d.total)) for b, d in whole.items()],
    )
    columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(charter_bucket_meta)")}
    if "top" not in columns:  # kept before there was an upper level
        conn.execute("ALTER TABLE charter_bucket_meta ADD COLUMN top INTEGER")
    ends = id_range(conn, table)
    top = digests.upper_length(ends[0] if ends else "", length)
    conn.execute(
        "INSERT INTO charter_bucket_meta (key, tbl, length, top) VALUES (?, ?, ?, ?)",
        (key, table.table, length, top),
    )
    _upper(conn, key, [""])


def drop_buckets(conn: sqlite3.Connection, key: str) -> None:
    """Stop keeping the buckets of `key` (its triggers, its rows)."""
    name = _trigger(key)
    for event in ("insert", "delete", "update"):
        conn.execute(f'DROP TRIGGER IF EXISTS "{name}_{event}"')
    if bucket_length(conn, key) is None and not _has_tables(conn):
        return
    for table in ("charter_bucket", "charter_bucket_dirty", "charter_bucket_meta"):
        conn.execute(f"DELETE FROM {table} WHERE key = ?", (key,))
    conn.execute("DELETE FROM charter_bucket WHERE key = ?", (f"{key}^",))


def _has_tables(conn: sqlite3.Connection) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'charter_bucket_meta'"
        ).fetchone()
        is not None
    )


def _trigger(key: str) -> str:
    return "charter_bucket_" + hashlib.sha1(key.encode()).hexdigest()[:12]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
