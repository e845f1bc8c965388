"""A context's store in one SQLite file.

Single writer in the database itself: every entity and copy table carries
triggers that refuse INSERT, UPDATE and DELETE from any connection charter did
not open (see `_sqlite.IS_CHARTER`), so a plain `sqlite3` connection is refused
with a message naming the owner. Writers are serialised by BEGIN IMMEDIATE, which also
makes `unique` and `no_overlap` hold under any concurrency."""

from __future__ import annotations

import fcntl
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TextIO

import orjson

from charter import clock, digests, latency
from charter._sqlite import IS_CHARTER, Connections, quote, sqlite_path
from charter.digests import Digest
from charter.errors import ConstraintError, SchemaChangeError
from charter.events import Event
from charter.lanes import Lane
from charter.model import Charter, Copy, Entity, Field, NoOverlap
from charter.records import (
    Backlog,
    Checkpoint,
    Drift,
    Fence,
    LaneCheckpoint,
    Mend,
    OutboxRow,
    Parked,
    RecordedCommand,
    Row,
    latest_lanes,
)
from charter.stores import fencing, sqlite_reconcile, waiting
from charter.stores.common import (
    DRIFT_COLUMNS,
    HISTORY_COLUMNS,
    OUTBOX_ADDED_COLUMNS,
    OUTBOX_COLUMNS,
    OUTBOX_COLUMNS_OF_O,
    OUTBOX_INSERT,
    LatencyMinutes,
    check_extension,
    copy_guard_message,
    counted,
    drift_of,
    drift_values,
    entity_guard_message,
    extension_problems,
    outbox_row,
    outbox_values,
    overlap_refused,
    unstorable,
    where_clause,
)
from charter.values import now_text

_COLUMN_TYPE = {"integer": "INTEGER", "boolean": "INTEGER", "number": "REAL"}
_CHANGES = waiting.Registry()  # (file, copy): this process's applies, for wait_applied

_META = """
CREATE TABLE IF NOT EXISTS charter_schema (
    kind TEXT NOT NULL, name TEXT NOT NULL, field TEXT NOT NULL, type TEXT NOT NULL,
    PRIMARY KEY (kind, name, field)
);
CREATE TABLE IF NOT EXISTS charter_outbox (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, entity TEXT NOT NULL,
    entity_id TEXT NOT NULL, version INTEGER NOT NULL, op TEXT NOT NULL,
    changed TEXT NOT NULL, time TEXT NOT NULL, body BLOB NOT NULL,
    actor TEXT, private_changed TEXT
);
CREATE INDEX IF NOT EXISTS charter_outbox_entity_id ON charter_outbox (entity_id);
CREATE TABLE IF NOT EXISTS charter_relay (id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER);
INSERT OR IGNORE INTO charter_relay VALUES (1, 0);
CREATE TABLE IF NOT EXISTS charter_checkpoint (
    copy TEXT PRIMARY KEY, position INTEGER NOT NULL, applied_at TEXT, fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charter_lane (
    copy TEXT NOT NULL, lanes INTEGER NOT NULL, lane INTEGER NOT NULL,
    position INTEGER NOT NULL, applied_at TEXT, PRIMARY KEY (copy, lanes, lane)
);
CREATE TABLE IF NOT EXISTS charter_tombstone (
    copy TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (copy, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS charter_parked (
    copy TEXT NOT NULL, entity_id TEXT NOT NULL, version INTEGER, event_id TEXT,
    position INTEGER NOT NULL, reason TEXT NOT NULL, body BLOB, parked_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charter_latency (
    copy TEXT NOT NULL, minute INTEGER NOT NULL, bucket INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (copy, minute, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS charter_drift (
    copy TEXT PRIMARY KEY, checked_at TEXT NOT NULL, took REAL NOT NULL,
    complete INTEGER NOT NULL, missing INTEGER NOT NULL, extra INTEGER NOT NULL,
    stale INTEGER NOT NULL, divergent INTEGER NOT NULL, ahead INTEGER NOT NULL,
    in_flight INTEGER NOT NULL, sample TEXT NOT NULL, repaired TEXT, error TEXT
);
CREATE TABLE IF NOT EXISTS charter_command (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, result BLOB NOT NULL, time TEXT NOT NULL
) WITHOUT ROWID;
"""


def _column_type(field: Field) -> str:
    return _COLUMN_TYPE.get(field.type, "TEXT")


class SQLiteStore:
    """One context's tables in one SQLite file."""

    def __init__(self, url: str) -> None:
        self.url = url
        path, synchronous = sqlite_path(url)
        self._conns = Connections(path, synchronous)
        self._sql: dict[str, str] = {}
        self._relayed = self._saved = 0  # relay position: in memory / known to be saved
        self._leads: dict[str, TextIO] = {}  # relay holder → its open, locked lead file
        self._latency = LatencyMinutes()

    # -- schema ---------------------------------------------------------------

    def prepare(self, charter: Charter, context: str) -> None:
        self._latency.prepared(charter)
        conn = self._conns.get()
        conn.executescript(_META)
        owned = charter.owned_by(context)
        copies = charter.copies_in(context)
        team = charter.contexts[context].team
        with self._conns.write():
            present = {row[1] for row in conn.execute("PRAGMA table_info(charter_outbox)")}
            for column in OUTBOX_ADDED_COLUMNS:  # a store made before they were
                if column not in present:
                    conn.execute(f"ALTER TABLE charter_outbox ADD COLUMN {column} TEXT")
            conn.execute(fencing.sqlite_schema())
            fenced = {r[0] for r in conn.execute("SELECT DISTINCT entity FROM charter_fence")}
            for entity in owned:
                self._prepare_entity(conn, entity, team)
                if entity.moves or entity.name in fenced:
                    for sql in fencing.sqlite_triggers(entity.name, entity.table):
                        conn.execute(sql)
            for copy in copies:
                entity = charter.entities[copy.of]
                owner = charter.contexts[entity.owner]
                self._prepare_copy(conn, copy, entity, owner.name, owner.team)
        for entity in owned:
            self._compile_entity(entity)
        for copy in copies:
            self._compile_copy(copy)

    def check(self, charter: Charter, context: str) -> list[SchemaChangeError]:
        path = self._conns.path
        if not path.exists():
            return []
        conn = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)  # changes nothing
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if "charter_schema" not in tables:
                return []
            shapes = [
                ("entity", e.name, e.table, list(e.fields.values()))
                for e in charter.owned_by(context)
            ]
            for copy in charter.copies_in(context):
                entity = charter.entities[copy.of]
                fields = [entity.fields[name] for name in copy.fields]
                shapes.append(
                    ("copy", copy.name, copy.table, [*fields, Field("synced_at", "timestamp")])
                )
            found = []
            for kind, name, table, fields in shapes:
                if table in tables:
                    present = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
                    rows = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                    recorded = self._recorded(conn, kind, name)
                    found += extension_problems(kind, name, table, fields, recorded, present, rows)
            return found
        finally:
            conn.close()

    def _recorded(self, conn: sqlite3.Connection, kind: str, name: str) -> dict[str, str]:
        rows = conn.execute(
            "SELECT field, type FROM charter_schema WHERE kind = ? AND name = ?", (kind, name)
        )
        return dict(rows.fetchall())

    def _extend(
        self,
        conn: sqlite3.Connection,
        kind: str,
        name: str,
        table: str,
        fields: list[Field],
        key_columns: str,
    ) -> None:
        """Create the table, or add the new columns; refuse a type change."""
        recorded = self._recorded(conn, kind, name)
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        if not exists:
            columns = ", ".join(f'"{f.name}" {_column_type(f)}' for f in fields)
            sep = ", " if columns else ""
            conn.execute(f'CREATE TABLE "{table}" ({key_columns}{sep}{columns}) WITHOUT ROWID')
        else:
            present = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
            rows = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for field in fields:
                old = recorded.get(field.name)
                if not check_extension(kind, name, table, field, old, rows, field.name in present):
                    continue
                default = ""
                if kind == "entity" and field.default is not None:
                    default = f" DEFAULT {quote(str(field.default))}"
                column = f'"{field.name}" {_column_type(field)}{default}'
                conn.execute(f'ALTER TABLE "{table}" ADD COLUMN {column}')
        conn.executemany(
            "INSERT OR REPLACE INTO charter_schema VALUES (?, ?, ?, ?)",
            [(kind, name, f.name, f.type) for f in fields],
        )

    def _guard(self, conn: sqlite3.Connection, table: str, message: str) -> None:
        for action in ("INSERT", "UPDATE", "DELETE"):
            trigger = f"{table}_charter_guard_{action.lower()}"
            conn.execute(f'DROP TRIGGER IF EXISTS "{trigger}"')
            conn.execute(
                f'CREATE TRIGGER "{trigger}" BEFORE {action} ON "{table}" '
                f"WHEN NOT {IS_CHARTER} "
                f"BEGIN SELECT RAISE(ABORT, {quote(message)}); END"
            )

    def _prepare_entity(self, conn: sqlite3.Connection, entity: Entity, team: str) -> None:
        table = entity.table
        fields = list(entity.fields.values())
        self._extend(
            conn,
            "entity",
            entity.name,
            table,
            fields,
            "id TEXT PRIMARY KEY, version INTEGER NOT NULL",
        )
        for field in fields:
            if field.unique:
                conn.execute(
                    f'CREATE UNIQUE INDEX IF NOT EXISTS "{table}_{field.name}_unique" '
                    f'ON "{table}" ("{field.name}")'
                )
        enforced = self._recorded(conn, "no_overlap", entity.name)
        for number, rule in enumerate(entity.constraints, 1):
            per = " AND ".join(f'"{p}" IS NEW."{p}"' for p in rule.per) or "1"
            cols = ", ".join(f'"{c}"' for c in (*rule.per, rule.start))
            conn.execute(
                f'CREATE INDEX IF NOT EXISTS "{table}_no_overlap_{number}" ON "{table}" ({cols})'
            )
            if enforced.get(str(number)) != rule.describe():  # new or changed: check the rows
                _check_no_overlap(conn, entity, rule)
                conn.execute(
                    "INSERT OR REPLACE INTO charter_schema VALUES ('no_overlap', ?, ?, ?)",
                    (entity.name, str(number), rule.describe()),
                )
            message = (
                f"charter-constraint: {entity.name} no_overlap: another {entity.name} with the "
                f"same {', '.join(rule.per) or 'scope'} overlaps [{rule.start}, {rule.end})"
            )
            for action in ("INSERT", "UPDATE"):
                trigger = f"{table}_no_overlap_{number}_{action.lower()}"
                conn.execute(f'DROP TRIGGER IF EXISTS "{trigger}"')
                conn.execute(
                    f'CREATE TRIGGER "{trigger}" BEFORE {action} ON "{table}" '
                    f'WHEN {counted(rule, "NEW.", quote)} AND EXISTS (SELECT 1 FROM "{table}" '
                    f"WHERE {per} AND id != NEW.id AND {counted(rule, '', quote)} "
                    f'AND "{rule.start}" < NEW."{rule.end}" AND NEW."{rule.start}" < "{rule.end}") '
                    f"BEGIN SELECT RAISE(ABORT, {quote(message)}); END"
                )
        self._guard(
            conn,
            table,
            entity_guard_message(entity, team),
        )

    def _prepare_copy(
        self, conn: sqlite3.Connection, copy: Copy, entity: Entity, owner: str, team: str
    ) -> None:
        fields = [entity.fields[name] for name in copy.fields]
        self._extend(
            conn,
            "copy",
            copy.name,
            copy.table,
            [*fields, Field("synced_at", "timestamp")],
            "id TEXT PRIMARY KEY, version INTEGER NOT NULL",
        )
        self._guard(
            conn,
            copy.table,
            copy_guard_message(copy, entity, owner, team),
        )

    def _compile_entity(self, entity: Entity) -> None:
        names = ["id", "version", *entity.fields]
        cols = ", ".join(f'"{n}"' for n in names)
        marks = ", ".join("?" for _ in names)
        sets = ", ".join(f'"{n}" = ?' for n in names[1:])
        table = entity.table
        self._sql[f"insert:{entity.name}"] = f'INSERT INTO "{table}" ({cols}) VALUES ({marks})'
        self._sql[f"update:{entity.name}"] = (
            f'UPDATE "{table}" SET {sets} WHERE id = ? AND version = ?'
        )
        self._sql[f"select:{entity.name}"] = f'SELECT {cols} FROM "{table}"'

    def _compile_copy(self, copy: Copy) -> None:
        names = ["id", "version", *copy.fields, "synced_at"]
        cols = ", ".join(f'"{n}"' for n in names)
        marks = ", ".join(f"?{i}" for i in range(1, len(names) + 1))
        updates = ", ".join(f'"{n}" = excluded."{n}"' for n in names[1:])
        table = copy.table
        upsert = (
            f'INSERT INTO "{table}" ({cols}) SELECT {marks} WHERE NOT EXISTS '
            f"(SELECT 1 FROM charter_tombstone WHERE copy = {quote(copy.name)} "
            f"AND id = ?1 AND version >= ?2) "
            f"ON CONFLICT (id) DO UPDATE SET {updates} "
        )
        newer = f'WHERE excluded.version > "{table}".version'
        self._sql[f"apply:{copy.name}"] = upsert + newer
        # the same without the tombstone look-up, for a copy that has no deleted ids yet
        self._sql[f"apply-no-tombstones:{copy.name}"] = (
            f'INSERT INTO "{table}" ({cols}) VALUES ({marks}) '
            f"ON CONFLICT (id) DO UPDATE SET {updates} {newer}"
        )
        self._sql[f"refresh:{copy.name}"] = upsert + f'WHERE excluded.version >= "{table}".version'
        self._sql[f"select-copy:{copy.name}"] = f'SELECT {cols} FROM "{table}"'
        self._sql[f"held:{copy.name}"] = (
            f'SELECT max(coalesce((SELECT version FROM "{table}" WHERE id = ?1), 0), '
            "coalesce((SELECT version FROM charter_tombstone WHERE copy = ?2 AND id = ?1), 0))"
        )

    # -- owner side -------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[_Writes]:
        return _Transaction(self)

    def fetch(self, entity: Entity, entity_id: str) -> Row | None:
        return _fetch(self, self._conns.get(), entity, entity_id)

    def rows(self, entity: Entity, where: Row | None = None) -> Iterator[Row]:
        names = ["id", "version", *entity.fields]
        sql, params = where_clause(self._sql[f"select:{entity.name}"], where, names, "?")
        for row in self._conns.get().execute(sql + " ORDER BY id", params):
            yield dict(zip(names, row, strict=True))

    # -- fences (G10: charter transfer) ------------------------------------------

    def fence(
        self, entity: Entity, parts: Sequence[int] | None, epoch: int, holder: str, state: str
    ) -> None:
        """From this commit on, this store writes `parts` of `entity` (None: all of it) only
        as `state` says; BEGIN IMMEDIATE waits for the write in flight, if any."""
        rows = [(entity.name, p, epoch, state, holder) for p in fencing.parts_of(parts)]
        conn = self._conns.get()
        with self._conns.write():
            conn.execute(fencing.sqlite_schema())
            for sql in fencing.sqlite_triggers(entity.name, entity.table):
                conn.execute(sql)
            if parts is None:
                conn.execute("DELETE FROM charter_fence WHERE entity = ?", (entity.name,))
            conn.executemany("INSERT OR REPLACE INTO charter_fence VALUES (?, ?, ?, ?, ?)", rows)

    def unfence(self, entity: Entity, parts: Sequence[int] | None) -> None:
        """Forget the fence rows of `parts` (a rolled-back transfer)."""
        conn = self._conns.get()
        with self._conns.write():
            conn.execute(fencing.sqlite_schema())
            conn.executemany(
                "DELETE FROM charter_fence WHERE entity = ? AND part = ?",
                [(entity.name, p) for p in fencing.parts_of(parts)],
            )

    def fences(self, entity: str) -> list[Fence]:
        conn = self._conns.get()
        conn.execute(fencing.sqlite_schema())
        rows = conn.execute(
            "SELECT entity, part, epoch, state, holder FROM charter_fence WHERE entity = ? "
            "ORDER BY part",
            (entity,),
        )
        return [Fence(*row) for row in rows]

    def promote(
        self,
        entity: Entity,
        parts: Sequence[int] | None,
        epoch: int,
        holder: str,
        rows: Sequence[Row],
        gone: Sequence[str] = (),
        state: str = fencing.OWNER,
    ) -> None:
        """In one transaction: `rows` (the old owner's, versions kept) written, `gone`
        deleted, and `parts` made this store's to write at `epoch`."""
        fence_rows = [
            (entity.name, p, epoch, fencing.OWNER, holder) for p in fencing.parts_of(parts)
        ]
        names = ["id", "version", *entity.fields]
        insert = self._sql[f"insert:{entity.name}"]
        conn = self._conns.get()
        with self._conns.write():
            conn.execute(fencing.sqlite_schema())
            for sql in fencing.sqlite_triggers(entity.name, entity.table):
                conn.execute(sql)
            if parts is None:
                conn.execute("DELETE FROM charter_fence WHERE entity = ?", (entity.name,))
            conn.executemany(
                "INSERT OR REPLACE INTO charter_fence VALUES (?, ?, ?, ?, ?)", fence_rows
            )
            table = entity.table
            ids = [(r["id"],) for r in rows] + [(i,) for i in gone]
            conn.executemany(f'DELETE FROM "{table}" WHERE id = ?', ids)
            conn.executemany(insert, [tuple(r.get(n) for n in names) for r in rows])
            if state != fencing.OWNER:
                conn.executemany(
                    "UPDATE charter_fence SET state = ? WHERE entity = ? AND part = ?",
                    [(state, entity.name, p) for p in fencing.parts_of(parts)],
                )

    # -- relay side -------------------------------------------------------------

    def outbox(self, after: int, limit: int) -> list[OutboxRow]:
        rows = self._conns.get().execute(
            f"SELECT {OUTBOX_COLUMNS} FROM charter_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [outbox_row(r) for r in rows]

    # The relay's position is kept in memory and saved when the write lock is free, so the
    # relay never queues behind the owner's commits. Saving late only means that after a
    # crash a few events are published again, which the bus drops by event id (G3).

    def pending(self, limit: int, skip: Sequence[OutboxRow] = ()) -> list[OutboxRow]:
        # Writers are serialised, so seq order is commit order and a position never skips.
        after = max(self._relayed, skip[-1].seq if skip else 0)
        rows = self._conns.get().execute(
            f"SELECT {OUTBOX_COLUMNS} FROM charter_outbox "
            "WHERE seq > max((SELECT position FROM charter_relay), ?) ORDER BY seq LIMIT ?",
            (after, limit),
        )
        found = [outbox_row(r) for r in rows]
        if not found and self._relayed > self._saved:  # idle: a good moment to save
            self._save_position(block=True)
        return found

    def mark_relayed(self, rows: Sequence[OutboxRow]) -> None:
        if rows:
            self._relayed = max(self._relayed, rows[-1].seq)
            self._save_position(block=False)

    def _save_position(self, block: bool) -> None:
        sql, params = "UPDATE charter_relay SET position = max(position, ?)", (self._relayed,)
        if block:
            with self._conns.write() as conn:
                conn.execute(sql, params)
        elif not self._conns.try_write(sql, params):
            return
        self._saved = self._relayed

    def lead(self, holder: str) -> bool:
        """A lock on a file beside the database, which the system frees when the process
        holding it ends, however it ends."""
        if holder in self._leads:
            return True
        handle = open(f"{self._conns.path}.relay-lead", "a")  # noqa: SIM115 (kept open)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._leads[holder] = handle
        return True

    def release(self, holder: str) -> None:
        handle = self._leads.pop(holder, None)
        if handle is not None:
            handle.close()  # frees the lock

    def rewind(self, after: int = 0) -> None:
        with self._conns.write() as conn:
            conn.execute("UPDATE charter_relay SET position = ?", (after,))
        self._relayed = self._saved = after

    def unrelayed(self, entity: str) -> Backlog:
        count, oldest = (
            self._conns.get()
            .execute(
                "SELECT count(*), min(time) FROM charter_outbox WHERE entity = ? "
                "AND seq > max((SELECT position FROM charter_relay), ?)",
                (entity, self._relayed),
            )
            .fetchone()
        )
        return Backlog(int(count), oldest)

    def history(self, entity: str, entity_id: str) -> list[OutboxRow]:
        rows = self._conns.get().execute(
            f"SELECT {HISTORY_COLUMNS} FROM charter_outbox WHERE entity_id = ? AND entity = ? "
            "ORDER BY version",
            (entity_id, entity),
        )
        return [outbox_row(r) for r in rows]

    def current(self, entity: Entity, after: str = "", limit: int = 1000) -> list[OutboxRow]:
        rows = self._conns.get().execute(
            f'SELECT {OUTBOX_COLUMNS_OF_O} FROM "{entity.table}" AS e JOIN charter_outbox AS o '
            "ON o.entity_id = e.id AND o.version = e.version AND o.entity = ? "
            "WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (entity.name, after, limit),
        )
        return [outbox_row(r) for r in rows]

    # -- copy side --------------------------------------------------------------

    def checkpoint(self, copy: Copy, lane: Lane | None = None) -> Checkpoint | None:
        return _checkpoint(self._conns.get(), copy, lane)

    def lanes(self, copy: Copy) -> list[LaneCheckpoint]:
        rows = self._conns.get().execute(
            "SELECT lanes, lane, position, applied_at FROM charter_lane WHERE copy = ?",
            (copy.name,),
        )
        return latest_lanes(rows.fetchall())

    def apply(
        self,
        copy: Copy,
        items: Sequence[tuple[int, Event]],
        parked: Sequence[Parked],
        position: int,
        lane: Lane | None = None,
        latencies: Sequence[tuple[int, float]] = (),
    ) -> list[Parked]:
        with self._conns.write() as conn:
            current = _checkpoint(conn, copy, lane)
            start = current.position if current else 0
            self._record_latency(conn, copy, latencies, start)
            fresh = [(p, e) for p, e in items if p > start]
            failed: list[Parked] = []
            if fresh:
                now = now_text()
                conn.execute("SAVEPOINT batch")
                try:
                    self._apply_events(conn, copy, fresh, now)
                    conn.execute("RELEASE batch")
                except sqlite3.Error:
                    conn.execute("ROLLBACK TO batch")
                    conn.execute("RELEASE batch")
                    failed = self._apply_one_by_one(conn, copy, fresh, now)
            late = [p for p in (*parked, *failed) if p.position > start]
            if late:
                conn.executemany(  # once: another process or lane may have parked it
                    "INSERT INTO charter_parked SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 "
                    "WHERE NOT EXISTS (SELECT 1 FROM charter_parked WHERE copy = ?1 "
                    "AND position = ?5)",
                    [
                        (
                            p.copy,
                            p.entity_id,
                            p.version,
                            p.event_id,
                            p.position,
                            p.reason,
                            p.body,
                            now_text(),
                        )
                        for p in late
                    ],
                )
            if position > start and lane is not None:
                conn.execute(
                    "INSERT INTO charter_lane VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (copy, lanes, lane) DO UPDATE "
                    "SET position = excluded.position, applied_at = excluded.applied_at "
                    "WHERE excluded.position > position",
                    (copy.name, lane.lanes, lane.number, position, now_text()),
                )
            elif position > start:
                conn.execute(
                    "INSERT INTO charter_checkpoint VALUES (?, ?, ?, ?) ON CONFLICT (copy) DO "
                    "UPDATE SET position = excluded.position, applied_at = excluded.applied_at",
                    (copy.name, position, now_text(), orjson.dumps(copy.fields).decode()),
                )
        self._changed(copy, items, failed, start)
        return failed

    def _record_latency(
        self,
        conn: sqlite3.Connection,
        copy: Copy,
        latencies: Sequence[tuple[int, float]],
        start: int,
    ) -> None:
        """Count the latencies of the events past `start` in this minute's rows; delete the
        minutes past the retention (once a minute)."""
        minute = latency.minute(clock.time_ns())
        oldest = self._latency.prune_before(copy, minute)
        if oldest is not None:
            conn.execute(
                "DELETE FROM charter_latency WHERE copy = ? AND minute < ?", (copy.name, oldest)
            )
        counts = self._latency.counts(latencies, start)
        if counts:
            conn.executemany(
                "INSERT INTO charter_latency VALUES (?, ?, ?, ?) ON CONFLICT "
                "(copy, minute, bucket) DO UPDATE SET count = count + excluded.count",
                [(copy.name, minute, at, count) for at, count in counts.items()],
            )

    def latency(self, copy: Copy, since: int) -> dict[int, int]:
        rows = self._conns.get().execute(
            "SELECT bucket, sum(count) FROM charter_latency WHERE copy = ? AND minute >= ? "
            "GROUP BY bucket",
            (copy.name, since),
        )
        return {int(at): int(count) for at, count in rows}

    def _apply_events(
        self, conn: sqlite3.Connection, copy: Copy, items: Sequence[tuple[int, Event]], now: str
    ) -> None:
        tombstones = conn.execute(
            "SELECT 1 FROM charter_tombstone WHERE copy = ? LIMIT 1", (copy.name,)
        ).fetchone()
        upsert = self._sql[f"apply{'' if tombstones else '-no-tombstones'}:{copy.name}"]
        fields = copy.fields
        batch: list[tuple[Any, ...]] = []
        for _, event in items:
            if event.op == "deleted":
                if batch:
                    conn.executemany(upsert, batch)
                    batch = []
                _delete_copy_row(conn, copy, event.entity_id, event.version)
                upsert = self._sql[f"apply:{copy.name}"]
            else:
                state = event.state or {}
                batch.append((event.entity_id, event.version, *[state.get(f) for f in fields], now))
        if batch:
            conn.executemany(upsert, batch)

    def _apply_one_by_one(
        self, conn: sqlite3.Connection, copy: Copy, items: Sequence[tuple[int, Event]], now: str
    ) -> list[Parked]:
        failed: list[Parked] = []
        for position, event in items:
            conn.execute("SAVEPOINT one")
            try:
                self._apply_events(conn, copy, [(position, event)], now)
                conn.execute("RELEASE one")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK TO one")
                conn.execute("RELEASE one")
                failed.append(unstorable(copy, position, event, exc))
        return failed

    def backfill(self, copy: Copy, rows: Iterator[tuple[str, int, Row]], position: int) -> int:
        refresh = self._sql[f"refresh:{copy.name}"]
        now = now_text()
        count = 0
        with self._conns.write() as conn:
            batch: list[tuple[Any, ...]] = []
            for entity_id, version, state in rows:
                batch.append((entity_id, version, *[state.get(f) for f in copy.fields], now))
                if len(batch) >= 1000:
                    conn.executemany(refresh, batch)
                    count += len(batch)
                    batch = []
            conn.executemany(refresh, batch)
            count += len(batch)
            conn.execute(
                "INSERT INTO charter_checkpoint VALUES (?, ?, ?, ?) ON CONFLICT (copy) DO UPDATE "
                "SET position = min(position, excluded.position), fields = excluded.fields, "
                "applied_at = excluded.applied_at",
                (copy.name, position, now, orjson.dumps(copy.fields).decode()),
            )
        self._changed(copy)
        return count

    def copy_rows(self, copy: Copy, where: Row | None = None) -> Iterator[Row]:
        names = ["id", "version", *copy.fields, "synced_at"]
        sql, params = where_clause(self._sql[f"select-copy:{copy.name}"], where, names, "?")
        for row in self._conns.get().execute(sql + " ORDER BY id", params):
            yield dict(zip(names, row, strict=True))

    def wait_applied(self, copy: Copy, entity_id: str, version: int, timeout: float) -> int:
        conn = self._conns.get()
        changes = _CHANGES(str(self._conns.path), copy.name)
        held = self._sql[f"held:{copy.name}"]
        with changes.wanting(entity_id, version) as wanted:
            return waiting.wait_applied(
                lambda: int(conn.execute(held, (entity_id, copy.name)).fetchone()[0]),
                version,
                timeout,
                _FileWatch(conn, changes),
                wanted,
            )

    def _changed(
        self,
        copy: Copy,
        items: Sequence[tuple[int, Event]] = (),
        skipped: Sequence[Parked] = (),
        start: int = 0,
    ) -> None:
        """Wake this process's waits on the copy (those of other processes ask the file),
        handing them the versions an apply took: `items` after `start`, but `skipped`."""
        changes = _CHANGES(str(self._conns.path), copy.name)
        changes.bump(waiting.taken(items, skipped, start) if changes.waiting else None)

    def parked(self, copy: Copy) -> list[Parked]:
        rows = self._conns.get().execute(
            "SELECT * FROM charter_parked WHERE copy = ? ORDER BY position", (copy.name,)
        )
        return [Parked(*row) for row in rows]

    def retry_parked(
        self, copy: Copy, events: Sequence[tuple[int, Event]], kept: Sequence[Parked]
    ) -> list[Parked]:
        with self._conns.write() as conn:
            in_order = sorted(events, key=lambda item: item[0])
            failed = self._apply_one_by_one(conn, copy, in_order, now_text())
            stay = [*kept, *failed]
            gone = {at for at, _ in events} - {p.position for p in failed}
            conn.executemany(
                "DELETE FROM charter_parked WHERE copy = ? AND position = ?",
                [(copy.name, at) for at in gone],
            )
            conn.executemany(
                "UPDATE charter_parked SET reason = ? WHERE copy = ? AND position = ?",
                [(p.reason, copy.name, p.position) for p in stay],
            )
        self._changed(copy)
        return stay

    def drop_parked(self, copy: Copy, positions: Sequence[int]) -> list[Parked]:
        with self._conns.write() as conn:
            dropped = []
            for at in positions:
                rows = conn.execute(
                    "DELETE FROM charter_parked WHERE copy = ? AND position = ? RETURNING *",
                    (copy.name, at),
                ).fetchall()
                dropped += [Parked(*row) for row in rows]
        return dropped

    # -- reconciliation (stores/sqlite_reconcile.py) -------------------------------------

    def id_range(self, table: Entity | Copy) -> tuple[str, str] | None:
        return sqlite_reconcile.id_range(self._conns.get(), table)

    def digest(
        self, table: Entity | Copy, fields: Sequence[Field], prefix: str, length: int
    ) -> dict[str, Digest]:
        return sqlite_reconcile.digest(self._conns.get(), table, fields, prefix, length)

    def digest_under(
        self,
        table: Entity | Copy,
        fields: Sequence[Field],
        prefixes: Sequence[str],
        length: int,
        native: bool = False,
    ) -> dict[str, Digest]:
        conn, found = self._conns.get(), dict[str, Digest]()
        for prefix in prefixes:  # in process: a query each costs no round trip
            found.update(sqlite_reconcile.digest(conn, table, fields, prefix, length))
        return found

    def native_hash(self, table: Entity | Copy, fields: Sequence[Field]) -> str | None:
        return None  # SQLite has no hash of its own: charter's, registered on the connection

    def digest_rows(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str]
    ) -> list[tuple[str, int, int]]:
        return sqlite_reconcile.digest_rows(self._conns.get(), table, fields, prefixes)

    def tombstone(self, copy: Copy, entity_id: str) -> int | None:
        return sqlite_reconcile.tombstone(self._conns.get(), copy, entity_id)

    def bucket_length(self, table: Entity | Copy, fields: Sequence[Field]) -> int | None:
        key = digests.bucket_key(table.table, fields)
        return sqlite_reconcile.bucket_length(self._conns.get(), key)

    def refresh_buckets(self, table: Entity | Copy, fields: Sequence[Field], length: int) -> None:
        key = digests.bucket_key(table.table, fields)
        with self._conns.write() as conn:
            sqlite_reconcile.refresh(conn, table, fields, key, length)

    def bucket_digest(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str], by: int
    ) -> dict[str, Digest]:
        key, conn = digests.bucket_key(table.table, fields), self._conns.get()
        found: dict[str, Digest] = {}
        for prefix in prefixes:
            found.update(sqlite_reconcile.bucket_digest(conn, key, prefix, by))
        return found

    def drop_buckets(self, table: Entity | Copy, fields: Sequence[Field]) -> None:
        with self._conns.write() as conn:
            sqlite_reconcile.drop_buckets(conn, digests.bucket_key(table.table, fields))

    def mend(self, copy: Copy, mends: Sequence[Mend]) -> int:
        with self._conns.write() as conn:
            return sqlite_reconcile.mend(conn, copy, mends, now_text())

    # -- the last check of each copy (charter.reconcile) -----------------------------

    def record_drift(self, drift: Drift) -> None:
        marks = ", ".join("?" * len(DRIFT_COLUMNS))
        with self._conns.write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO charter_drift VALUES ({marks})", drift_values(drift)
            )

    def drift(self, copy: Copy) -> Drift | None:
        row = (
            self._conns.get()
            .execute(
                f"SELECT {', '.join(DRIFT_COLUMNS)} FROM charter_drift WHERE copy = ?",
                (copy.name,),
            )
            .fetchone()
        )
        return None if row is None else drift_of(row)

    def close(self) -> None:
        for holder in list(self._leads):
            self.release(holder)
        self._conns.close()


class _FileWatch:
    """Changes of one copy in a SQLite file. This process's applies wake the wait at once
    (`waiting.Changes`); another process's commits cannot wake anyone, so the wait asks the
    file, cheaply (PRAGMA data_version on the waiting thread's connection, which changes
    whenever another connection commits; no I/O, no lock), after pauses from 0.1 ms to
    1 ms (waiting.poll_pause). Any commit to the file counts: a wait may wake for another
    table's change, and reads again."""

    __slots__ = ("_began", "_conn", "_local", "_version")

    def __init__(self, conn: sqlite3.Connection, changes: waiting.Changes) -> None:
        self._conn, self._local = conn, changes.watch()
        self._version = self._data_version()
        self._began = time.monotonic()

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return
            woken = self._local.changed(waiting.poll_pause(now - self._began, left))
            version = self._data_version()
            if woken or version != self._version:
                self._version = version
                return


class _Transaction:
    """An owner's write transaction; a class rather than a generator, as it is on the
    hot path of every commit."""

    __slots__ = ("_conn", "_conns", "_store")

    def __init__(self, store: SQLiteStore) -> None:
        self._store, self._conns = store, store._conns
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> _Writes:
        self._conns._writer.acquire()
        try:
            conn = self._conn = self._conns.get()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._conns._writer.release()
            raise
        return _Writes(self._store, conn)

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        conn = self._conn
        assert conn is not None
        try:
            if kind is None:
                conn.execute("COMMIT")
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._conns._writer.release()


class _Writes:
    """The store's half of one owner transaction."""

    __slots__ = ("_conn", "_depth", "_store")

    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection) -> None:
        self._store, self._conn = store, conn
        self._depth = 0  # savepoints open

    def fetch(self, entity: Entity, entity_id: str) -> Row | None:
        return _fetch(self._store, self._conn, entity, entity_id)

    def insert(self, entity: Entity, row: Row) -> None:
        sql = self._store._sql[f"insert:{entity.name}"]
        try:
            self._conn.execute(sql, tuple(row.values()))
        except sqlite3.IntegrityError as exc:
            raise self._refused(entity, row["id"], exc) or _constraint(entity, row, exc) from None

    def _refused(
        self, entity: Entity, entity_id: str, exc: sqlite3.IntegrityError
    ) -> Exception | None:
        """A fence trigger's refusal (G10), said with the fence that refused."""
        if not str(exc).startswith(fencing.PREFIX):
            return None
        found = self._conn.execute(
            "SELECT entity, part, epoch, state, holder FROM charter_fence WHERE entity = ?",
            (entity.name,),
        )
        return fencing.refused(entity.name, [Fence(*r) for r in found], entity_id) or (
            fencing.from_message(entity.name, str(exc))
        )

    def update(self, entity: Entity, entity_id: str, old_version: int, row: Row) -> bool:
        sql = self._store._sql[f"update:{entity.name}"]
        values = list(row.values())[1:]
        try:
            cursor = self._conn.execute(sql, (*values, entity_id, old_version))
        except sqlite3.IntegrityError as exc:
            raise self._refused(entity, entity_id, exc) or _constraint(entity, row, exc) from None
        return cursor.rowcount == 1

    def delete(self, entity: Entity, entity_id: str, old_version: int) -> bool:
        try:
            cursor = self._conn.execute(
                f'DELETE FROM "{entity.table}" WHERE id = ? AND version = ?',
                (entity_id, old_version),
            )
        except sqlite3.IntegrityError as exc:
            raise self._refused(entity, entity_id, exc) or _constraint(entity, {}, exc) from None
        return cursor.rowcount == 1

    def append(
        self,
        events: Sequence[Event],
        bodies: Sequence[bytes],
        private: Sequence[tuple[str, ...]] = (),
    ) -> None:
        sql = f"INSERT INTO charter_outbox {OUTBOX_INSERT} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        rows = outbox_values(events, bodies, private)
        if len(rows) == 1:
            self._conn.execute(sql, rows[0])
        else:
            self._conn.executemany(sql, rows)

    def command(self, key: str) -> RecordedCommand | None:
        row = self._conn.execute(
            "SELECT key, name, result, time FROM charter_command WHERE key = ?", (key,)
        ).fetchone()
        return RecordedCommand(row[0], row[1], bytes(row[2]), row[3]) if row else None

    def record_command(self, command: RecordedCommand) -> None:
        try:
            self._conn.execute(
                "INSERT INTO charter_command VALUES (?, ?, ?, ?)",
                (command.key, command.name, command.result, command.time),
            )
        except sqlite3.IntegrityError:
            raise ConstraintError(f"command key {command.key!r} was handled already") from None

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        # SQLite refuses a change when it is made: nothing is left to check at the exit.
        self._depth += 1
        name = f"charter_{self._depth}"
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute(f"ROLLBACK TO {name}")
            raise
        finally:
            self._depth -= 1
            if self._conn.in_transaction:
                self._conn.execute(f"RELEASE {name}")


def _fetch(
    store: SQLiteStore, conn: sqlite3.Connection, entity: Entity, entity_id: str
) -> Row | None:
    row = conn.execute(
        store._sql[f"select:{entity.name}"] + " WHERE id = ?", (entity_id,)
    ).fetchone()
    if row is None:
        return None
    return dict(zip(["id", "version", *entity.fields], row, strict=True))


def _checkpoint(conn: sqlite3.Connection, copy: Copy, lane: Lane | None) -> Checkpoint | None:
    """The whole copy's position: its own, or the lowest of a complete set of lanes if
    higher (charter.lanes); a lane's: its own, or the whole copy's if higher."""
    row = conn.execute(
        "SELECT max(c.position, coalesce(l.position, 0)), "
        "max(coalesce(c.applied_at, ''), coalesce(l.applied_at, '')), c.fields "
        "FROM charter_checkpoint AS c LEFT JOIN ("
        "  SELECT max(low) AS position, max(last) AS applied_at FROM ("
        "    SELECT min(position) AS low, max(applied_at) AS last, count(*) = lanes AS complete"
        "    FROM charter_lane WHERE copy = ?1 GROUP BY lanes)"
        "  WHERE complete) AS l WHERE c.copy = ?1",
        (copy.name,),
    ).fetchone()
    if row is None:
        return None
    whole, applied_at, fields = row
    position = int(whole)
    if lane is not None:
        mine = conn.execute(
            "SELECT position FROM charter_lane WHERE copy = ? AND lanes = ? AND lane = ?",
            (copy.name, lane.lanes, lane.number),
        ).fetchone()
        position = max(position, int(mine[0]) if mine else 0)
    return Checkpoint(position, applied_at or None, tuple(orjson.loads(fields)))


def _delete_copy_row(conn: sqlite3.Connection, copy: Copy, entity_id: str, version: int) -> None:
    conn.execute(f'DELETE FROM "{copy.table}" WHERE id = ? AND version < ?', (entity_id, version))
    conn.execute(
        "INSERT INTO charter_tombstone VALUES (?, ?, ?) ON CONFLICT (copy, id) "
        "DO UPDATE SET version = max(version, excluded.version)",
        (copy.name, entity_id, version),
    )


def _check_no_overlap(conn: sqlite3.Connection, entity: Entity, rule: NoOverlap) -> None:
    """Refuse a rule (new, or changed) that the records already stored break."""
    same = "".join(f' AND a."{p}" IS b."{p}"' for p in rule.per)
    pair = conn.execute(
        f'SELECT a.id, b.id FROM "{entity.table}" AS a JOIN "{entity.table}" AS b '
        f'ON a.id < b.id{same} AND a."{rule.start}" < b."{rule.end}" '
        f'AND b."{rule.start}" < a."{rule.end}" '
        f"WHERE {counted(rule, 'a.', quote)} AND {counted(rule, 'b.', quote)} LIMIT 1"
    ).fetchone()
    if pair is not None:
        raise overlap_refused(entity, rule, pair)


def _constraint(entity: Entity, row: Row, exc: sqlite3.IntegrityError) -> ConstraintError:
    text = str(exc)
    if text.startswith("charter-constraint: "):
        return ConstraintError(text.removeprefix("charter-constraint: "))
    prefix = f"UNIQUE constraint failed: {entity.table}."
    if text.startswith(prefix):
        field = text.removeprefix(prefix)
        return ConstraintError(
            f"{entity.name}.{field} must be unique: {row.get(field)!r} is already used by "
            f"another {entity.name}"
        )
    return ConstraintError(f"{entity.name}: {text}")
