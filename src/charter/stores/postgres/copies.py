"""The copy's side of the PostgreSQL store: checkpoints (one per copy, or per lane), a
batch of events applied as one statement (one by one when it fails, to park only what
fails), backfill, and parked events kept, retried and dropped."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import psycopg

from charter import clock, latency
from charter.events import Event
from charter.lanes import Lane
from charter.model import Copy
from charter.records import (
    Checkpoint,
    LaneCheckpoint,
    Parked,
    Row,
    latest_lanes,
)
from charter.stores import waiting
from charter.stores.common import unstorable
from charter.stores.postgres.core import PREPARED
from charter.stores.postgres.listen import Listener, channel
from charter.stores.postgres.schema import _Schema
from charter.stores.postgres.writes import Statement, pipelined, rollback
from charter.values import now_text

# SQLSTATE classes of failures that pass (deadlock, serialization, lock or statement
# timeout, resources, connection): an event that meets one is not parked as unstorable.
_TRANSIENT = frozenset({"08", "40", "53", "55", "57"})


def _text(value: str) -> str:
    """`value` as PostgreSQL text can hold it (no NUL character), to park what holds one."""
    return value.replace("\x00", "\\0") if "\x00" in value else value


def _parked(row: Sequence[Any]) -> Parked:
    return Parked(row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6] or b""), row[7])


class _Copies(_Schema):
    """Checkpoints, apply, backfill, parked, waits for a version."""

    _listening: Listener | None  # the LISTEN connection of waits, once made
    _listen_lock: threading.Lock

    # -- copy side --------------------------------------------------------------

    def checkpoint(self, copy: Copy, lane: Lane | None = None) -> Checkpoint | None:
        mine = (lane.lanes, lane.number) if lane else (0, 0)
        cp, lanes = self._t("charter_checkpoint"), self._t("charter_lane")
        with self.pool.connection() as conn:
            row = conn.execute(
                # the whole copy: its own position, or the lowest of a complete set of lanes
                # if higher (charter.lanes); a lane: its own, or the whole copy's if higher
                "SELECT greatest(c.position, l.position, m.position), "
                "greatest(c.applied_at, l.applied_at), c.fields "
                f"FROM {cp} AS c LEFT JOIN LATERAL ("
                "  SELECT max(low) AS position, max(last) AS applied_at FROM ("
                "    SELECT min(position) AS low, max(applied_at) AS last"
                f"    FROM {lanes} WHERE copy = c.copy GROUP BY lanes HAVING count(*) = lanes"
                "  ) AS complete"
                f") AS l ON true LEFT JOIN {lanes} AS m "
                "  ON m.copy = c.copy AND m.lanes = %s AND m.lane = %s "
                "WHERE c.copy = %s",
                (*mine, copy.name),
                prepare=PREPARED,
            ).fetchone()
        if row is None:
            return None
        return Checkpoint(int(row[0]), row[1], tuple(orjson.loads(row[2])))

    def lanes(self, copy: Copy) -> list[LaneCheckpoint]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT lanes, lane, position, applied_at "
                f"FROM {self._t('charter_lane')} WHERE copy = %s",
                (copy.name,),
            ).fetchall()
        return latest_lanes(rows)

    def apply(
        self,
        copy: Copy,
        items: Sequence[tuple[int, Event]],
        parked: Sequence[Parked],
        position: int,
        lane: Lane | None = None,
        latencies: Sequence[tuple[int, float]] = (),
    ) -> list[Parked]:
        timed = self._latency_parts(copy, latencies, lane)
        with self.pool.connection() as conn:
            try:
                self._apply_batch(conn, copy, items, parked, position, lane, timed)
                self._changed(copy)
                return []
            except psycopg.Error:
                if conn.closed or not items:
                    raise
            # Something in the batch the table refuses: find it, park it, apply the rest.
            failed = self._apply_one_by_one(conn, copy, items, parked, position, lane, timed)
        self._changed(copy)
        return failed

    def _apply_batch(
        self,
        conn: psycopg.Connection[Any],
        copy: Copy,
        items: Sequence[tuple[int, Event]],
        parked: Sequence[Parked],
        position: int,
        lane: Lane | None,
        timed: Sequence[tuple[str, list[Any]]] = (),
    ) -> None:
        """The whole batch in one transaction and one round trip. What another process
        running this copy applied already changes nothing: a copy takes only newer versions,
        never a deleted record again, parks only what is past its checkpoint, and its
        checkpoint only moves forward. `timed`: the latency parts (_latency_parts)."""
        now = now_text()
        parts = self._apply_parts(copy, items, now)
        if parked:
            park, params = self._park_statement(copy, parked, now, lane)
            parts.append((f"p AS ({park})", [*(params or ())]))
        parts += timed
        checkpoint = self._checkpoint_statement(copy, position, now, lane)
        statement = self._announcing(copy, parts, checkpoint)
        try:
            pipelined(conn, [("BEGIN", None), *self._turn(copy, lane), statement, ("COMMIT", None)])
        except BaseException:
            rollback(conn)
            raise

    def _turn(self, copy: Copy, lane: Lane | None) -> list[Statement]:
        """Appliers of one copy (or lane) take turns, each transaction's writes after the
        lock in a statement of their own: under READ COMMITTED a statement sees what was
        committed when it began, so an applier behind, whose statement began before
        another's delete committed, would find neither the row nor its tombstone and insert
        the older version again, the deleted record back (G4). A lane takes its own turn
        and shares the whole copy's (disjoint ids: lanes never meet on a record)."""
        key = f"charter apply {self.schema}.{copy.name}"
        if lane is None:
            return [("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])]
        mine = f"{key} {lane.lanes}/{lane.number}"
        return [
            (
                "SELECT pg_advisory_xact_lock_shared(hashtextextended(%s, 0)), "
                "pg_advisory_xact_lock(hashtextextended(%s, 0))",
                [key, mine],
            )
        ]

    def _apply_one_by_one(
        self,
        conn: psycopg.Connection[Any],
        copy: Copy,
        items: Sequence[tuple[int, Event]],
        parked: Sequence[Parked],
        position: int,
        lane: Lane | None,
        timed: Sequence[tuple[str, list[Any]]] = (),
    ) -> list[Parked]:
        """Event by event, each under a savepoint; what fails is parked."""
        now = now_text()
        start, params = self._start(copy, lane, lock=True)
        try:
            begin = [("BEGIN", None), *self._turn(copy, lane), (f"SELECT {start}", params)]
            locked = pipelined(conn, begin)[-1]
            row = locked.fetchone()
            start_at = int(row[0]) if row else 0
            failed: list[Parked] = []
            for at, event in items:
                if at <= start_at:
                    continue
                conn.execute("SAVEPOINT charter_event")
                try:
                    parts = self._apply_parts(copy, [(at, event)], now)
                    conn.execute(*self._with(parts, ("SELECT 1", None)))
                except psycopg.Error as exc:
                    if (exc.sqlstate or "")[:2] in _TRANSIENT:
                        raise  # not the event's fault: the batch is tried again
                    conn.execute("ROLLBACK TO SAVEPOINT charter_event")
                    failed.append(unstorable(copy, at, event, exc))
                else:
                    conn.execute("RELEASE SAVEPOINT charter_event")
            statements: list[Statement] = []
            if parked or failed:
                statements.append(self._park_statement(copy, [*parked, *failed], now, lane))
            if timed:
                statements.append(self._with(timed, ("SELECT 1", None)))
            statements += [
                self._checkpoint_statement(copy, position, now, lane),
                self._announce(copy),
                ("COMMIT", None),
            ]
            pipelined(conn, statements)
            return failed
        except BaseException:
            rollback(conn)
            raise

    def _latency_parts(
        self, copy: Copy, latencies: Sequence[tuple[int, float]], lane: Lane | None
    ) -> list[tuple[str, list[Any]]]:
        """As parts of the apply's WITH list: the latencies of the batch added to this
        minute's counts, and (once a minute) the minutes past the retention deleted. The
        counts are made here (a few buckets: the events of one owner transaction share a
        latency) and added only when the batch's first timed event is past the checkpoint:
        a batch another process had begun to apply is not counted again (nor, the rare
        overlap of two processes on one copy, in part: a histogram may miss a batch, never
        count one twice). Planning the exact per-event form cost a third of the apply."""
        minute = latency.minute(clock.time_ns())
        table = self._t("charter_latency")
        parts: list[tuple[str, list[Any]]] = []
        oldest = self._latency.prune_before(copy, minute)
        if oldest is not None:
            delete = f"lx AS (DELETE FROM {table} WHERE copy = %s AND minute < %s)"
            parts.append((delete, [copy.name, oldest]))
        counts = self._latency.counts(latencies, 0)
        if counts:
            start, params = self._start(copy, lane)
            rows = ", ".join(["(%s, %s, %s::smallint, %s::bigint)"] * len(counts))
            values: list[Any] = []
            for at, count in counts.items():
                values += [copy.name, minute, at, count]
            insert = (
                f"l AS (INSERT INTO {table} SELECT * FROM (VALUES {rows}) AS c WHERE {start} < %s "
                f"ON CONFLICT (copy, minute, bucket) DO UPDATE SET count = {table}.count + "
                "excluded.count)"
            )
            parts.append((insert, [*values, *params, latencies[0][0]]))
        return parts

    def latency(self, copy: Copy, since: int) -> dict[int, int]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT bucket, sum(count) FROM {self._t('charter_latency')} "
                "WHERE copy = %s AND minute >= %s GROUP BY bucket",
                (copy.name, since),
            ).fetchall()
        return {int(at): int(count) for at, count in rows}

    def _start(self, copy: Copy, lane: Lane | None, lock: bool = False) -> tuple[str, list[Any]]:
        """An SQL expression for where the copy (or `lane`) is, so that only what is past it
        is parked; `lock` holds the checkpoint's row against another process's batch."""
        whole = f"(SELECT position FROM {self._t('charter_checkpoint')} WHERE copy = %s"
        whole += " FOR UPDATE)" if lock and lane is None else ")"
        if lane is None:
            return f"coalesce({whole}, 0)", [copy.name]
        own = (
            f"(SELECT position FROM {self._t('charter_lane')} "
            "WHERE copy = %s AND lanes = %s AND lane = %s" + (" FOR UPDATE)" if lock else ")")
        )
        params = [copy.name, copy.name, lane.lanes, lane.number]
        return f"coalesce(greatest({whole}, {own}), 0)", params

    def _checkpoint_statement(
        self, copy: Copy, position: int, now: str, lane: Lane | None
    ) -> Statement:
        if lane is not None:
            table = self._t("charter_lane")
            return (
                f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s) ON CONFLICT (copy, lanes, lane) "
                "DO UPDATE SET position = excluded.position, applied_at = excluded.applied_at "
                f"WHERE excluded.position > {table}.position",
                (copy.name, lane.lanes, lane.number, position, now),
            )
        table = self._t("charter_checkpoint")
        return (
            f"INSERT INTO {table} VALUES (%s, %s, %s, %s) ON CONFLICT (copy) DO UPDATE "
            "SET position = excluded.position, applied_at = excluded.applied_at "
            f"WHERE excluded.position > {table}.position",
            (copy.name, position, now, orjson.dumps(copy.fields).decode()),
        )

    def _park_statement(
        self, copy: Copy, parked: Sequence[Parked], now: str, lane: Lane | None
    ) -> Statement:
        """Parks what is past the checkpoint (what is not was parked when it was passed),
        once (another process or lane may have parked it)."""
        columns: list[list[Any]] = [[] for _ in range(7)]
        for p in parked:
            texts = (_text(p.entity_id), _text(p.event_id), _text(p.reason))
            for column, value in zip(
                columns,
                (p.copy, texts[0], p.version, texts[1], p.position, texts[2], p.body),
                strict=True,
            ):
                column.append(value)
        start, params = self._start(copy, lane)
        query = (
            f"INSERT INTO {self._t('charter_parked')} SELECT u.*, %s FROM unnest(%s::text[], "
            "%s::text[], %s::integer[], %s::text[], %s::bigint[], %s::text[], %s::bytea[]) "
            f"AS u(copy, entity_id, version, event_id, position, reason, body) "
            f"WHERE u.position > {start} AND NOT EXISTS (SELECT 1 FROM "
            f"{self._t('charter_parked')} AS p WHERE p.copy = u.copy AND p.position = u.position)"
        )
        return query, [now, *columns, *params]

    def _apply_parts(
        self, copy: Copy, items: Sequence[tuple[int, Event]], now: str
    ) -> list[tuple[str, list[Any]]]:
        """A batch as the parts of one statement's WITH list: each id's newest event (events
        carry the whole state, so the newest is all that matters), ids sorted so that two
        processes applying one copy lock its rows in the same order."""
        newest: dict[str, Event] = {}
        for _, event in items:
            seen = newest.get(event.entity_id)
            if seen is None or event.version > seen.version:
                newest[event.entity_id] = event
        upserts: list[Event] = []
        deletes: list[Event] = []
        for entity_id in sorted(newest):
            event = newest[entity_id]
            (deletes if event.op == "deleted" else upserts).append(event)
        parts: list[tuple[str, list[Any]]] = []
        if upserts:
            rows = [{**(e.state or {}), "id": e.entity_id, "version": e.version} for e in upserts]
            upsert = self._sql[f"apply:{copy.name}"]
            parts.append((f"u AS ({upsert})", [now, orjson.dumps(rows).decode(), copy.name]))
        if deletes:
            gone = orjson.dumps([{"id": e.entity_id, "version": e.version} for e in deletes])
            parts.append((self._sql[f"delete:{copy.name}"], [gone.decode(), copy.name]))
        return parts

    def _announce(self, copy: Copy) -> Statement:
        """The NOTIFY that wakes waits on the copy (listen.py), sent when the transaction
        it is part of commits."""
        return "SELECT pg_notify(%s, '')", [channel(self.schema, copy.name)]

    def _changed(self, copy: Copy) -> None:
        """Wake this process's waits on the copy at once (others hear the NOTIFY)."""
        if self._listening is not None:
            self._listening.heard(channel(self.schema, copy.name))

    def _announcing(
        self, copy: Copy, parts: Sequence[tuple[str, list[Any]]], main: Statement
    ) -> Statement:
        """`parts` and `main` as one statement that also announces the change (_announce):
        `main` becomes the last part of the WITH list (a statement that writes runs
        whether or not anything reads it), the NOTIFY the statement."""
        last = (f"cp AS ({main[0]})", [*(main[1] or ())])
        return self._with([*parts, last], self._announce(copy))

    @staticmethod
    def _with(parts: Sequence[tuple[str, list[Any]]], main: Statement) -> Statement:
        """One statement: `parts` as its WITH list, then `main`. One statement is one
        transaction on an autocommit connection, in one round trip."""
        if not parts:
            return main
        query = "WITH " + ", ".join(part for part, _ in parts) + " " + main[0]
        return query, [*(p for _, params in parts for p in params), *(main[1] or ())]

    def backfill(self, copy: Copy, rows: Iterator[tuple[str, int, Row]], position: int) -> int:
        refresh = self._sql[f"refresh:{copy.name}"]
        now = now_text()
        count = 0
        with self.pool.connection() as conn, conn.transaction():
            for query, params in self._turn(copy, None):
                conn.execute(query, params)

            def send(batch: list[tuple[str, int, Row]]) -> None:
                # One row per id: ON CONFLICT refuses to touch a row twice in a statement,
                # and a fill through the bus may hold several versions of one record.
                newest: dict[str, tuple[int, Row]] = {}
                for i, v, state in batch:
                    if i not in newest or v > newest[i][0]:
                        newest[i] = (v, state)
                states = [{**state, "id": i, "version": v} for i, (v, state) in newest.items()]
                conn.execute(refresh, [now, orjson.dumps(states).decode(), copy.name])

            batch: list[tuple[str, int, Row]] = []
            for item in rows:
                batch.append(item)
                if len(batch) >= 1000:
                    send(batch)
                    count += len(batch)
                    batch = []
            if batch:
                send(batch)
                count += len(batch)
            conn.execute(
                f"INSERT INTO {self._t('charter_checkpoint')} VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (copy) DO UPDATE SET position = least("
                f"{self._t('charter_checkpoint')}.position, excluded.position), "
                "fields = excluded.fields, applied_at = excluded.applied_at",
                (copy.name, position, now, orjson.dumps(copy.fields).decode()),
            )
            conn.execute(*self._announce(copy))
        self._changed(copy)
        return count

    def copy_rows(self, copy: Copy, where: Row | None = None) -> Iterator[Row]:
        yield from self._stream(
            self._sql[f"select-copy:{copy.name}"], self._selects[f"copy:{copy.name}"], where
        )

    def wait_applied(self, copy: Copy, entity_id: str, version: int, timeout: float) -> int:
        watch = self._listener().watch(channel(self.schema, copy.name))
        query = (
            f"SELECT greatest((SELECT version FROM {self._t(copy.table)} WHERE id = %s), "
            f"(SELECT version FROM {self._t('charter_tombstone')} WHERE copy = %s AND id = %s))"
        )

        def held() -> int:
            with self.pool.connection() as conn:
                row = conn.execute(query, (entity_id, copy.name, entity_id), prepare=PREPARED)
                found = row.fetchone()
            return int(found[0] or 0) if found else 0

        return waiting.wait_applied(held, version, timeout, watch)

    def _listener(self) -> Listener:
        """This store's LISTEN connection (listen.py), made on the first wait."""
        with self._listen_lock:
            if self._listening is None:
                copies = self._prepared[0].copies_in(self._prepared[1]) if self._prepared else []
                names = [channel(self.schema, c.name) for c in copies]
                self._listening = Listener(self._conninfo, names)
            return self._listening

    def parked(self, copy: Copy) -> list[Parked]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT * FROM {self._t('charter_parked')} WHERE copy = %s ORDER BY position",
                (copy.name,),
            ).fetchall()
        return [_parked(row) for row in rows]

    def retry_parked(
        self, copy: Copy, events: Sequence[tuple[int, Event]], kept: Sequence[Parked]
    ) -> list[Parked]:
        now, table = now_text(), self._t("charter_parked")
        failed: list[Parked] = []
        with self.pool.connection() as conn, conn.transaction():
            for at, event in sorted(events, key=lambda item: item[0]):
                try:
                    with conn.transaction():  # a savepoint
                        parts = self._apply_parts(copy, [(at, event)], now)
                        conn.execute(*self._with(parts, ("SELECT 1", None)))
                except psycopg.Error as exc:
                    if conn.closed or (exc.sqlstate or "")[:2] in _TRANSIENT:
                        raise
                    failed.append(unstorable(copy, at, event, exc))
            stay = [*kept, *failed]
            gone = sorted({at for at, _ in events} - {p.position for p in failed})
            conn.execute(
                f"DELETE FROM {table} WHERE copy = %s AND position = ANY(%s::bigint[])",
                (copy.name, gone),
            )
            conn.execute(
                f"UPDATE {table} AS p SET reason = u.reason FROM unnest(%s::bigint[], "
                "%s::text[]) AS u(position, reason) WHERE p.copy = %s AND p.position = u.position",
                ([p.position for p in stay], [_text(p.reason) for p in stay], copy.name),
            )
            conn.execute(*self._announce(copy))
        self._changed(copy)
        return stay

    def drop_parked(self, copy: Copy, positions: Sequence[int]) -> list[Parked]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"DELETE FROM {self._t('charter_parked')} "
                "WHERE copy = %s AND position = ANY(%s::bigint[]) RETURNING *",
                (copy.name, list(positions)),
            ).fetchall()
        return sorted(map(_parked, rows), key=lambda p: p.position)
