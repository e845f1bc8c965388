"""The relay's side of the PostgreSQL store: the outbox read, pending rows read and
unmarked once relayed (gathered, with the pending table vacuumed now and then), what is
not relayed yet, history and current state, and the lead among relays."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg

from charter.model import Entity
from charter.records import (
    Backlog,
    OutboxRow,
)
from charter.stores.common import (
    HISTORY_COLUMNS,
    OUTBOX_COLUMNS,
    OUTBOX_COLUMNS_OF_O,
    outbox_row,
)
from charter.stores.postgres.core import log
from charter.stores.postgres.schema import _Schema
from charter.stores.postgres.writes import Statement

# (a hashed subplan: `<> ALL(array)` compares each row with every element, 4x slower here)
_NOT_PASSED = "p.seq NOT IN (SELECT unnest(%s::bigint[]))"
UNMARK_AT = 1000  # relayed events unmarked together (see PostgresStore.pending)
UNMARK_AFTER_S = 0.05
VACUUM_EVERY = 20_000  # relayed events between two vacuums of the pending table, or
VACUUM_AFTER_S = 2.0  # seconds (when anything was relayed): a few ms on a small table
LEAD_CHECK_S = 1.0  # how long a relay trusts that it still leads before asking again


class _Relay(_Schema):
    """Outbox, pending, marks, lead."""

    _relayed: list[int]
    _marked: float
    _unmarked: int
    _vacuumed: float
    _leads: dict[str, tuple[psycopg.Connection[Any], float, bool]]

    # -- relay side -------------------------------------------------------------

    def outbox(self, after: int, limit: int) -> list[OutboxRow]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM {self._t('charter_outbox')} WHERE seq > %s "
                "ORDER BY seq LIMIT %s",
                (after, limit),
            ).fetchall()
        return [outbox_row(r) for r in rows]

    # What the relay has published is unmarked by a later read, in the same statement, once
    # UNMARK_AT events or UNMARK_AFTER_S seconds have gathered (one commit for many steps);
    # meanwhile the reads skip them. If the relay stops first, they are published again, and
    # the bus drops them.

    def pending(self, limit: int, skip: Sequence[OutboxRow] = ()) -> list[OutboxRow]:
        select = (
            f"SELECT {OUTBOX_COLUMNS_OF_O} "
            f"FROM {self._t('charter_pending')} p JOIN {self._t('charter_outbox')} o "
            "USING (seq) "
        )
        with self._lock:
            marks = self._relayed
            due = len(marks) >= UNMARK_AT or time.monotonic() - self._marked >= UNMARK_AFTER_S
            if due:
                self._relayed = []
        passed = [*marks, *(r.seq for r in skip)]
        statement: Statement
        if not passed:
            statement = (select + "ORDER BY p.seq LIMIT %s", (limit,))
        elif not due or not marks:
            statement = (select + f"WHERE {_NOT_PASSED} ORDER BY p.seq LIMIT %s", (passed, limit))
        else:  # (the SELECT sees the rows the DELETE removes: one snapshot)
            statement = (
                f"WITH done AS (DELETE FROM {self._t('charter_pending')} WHERE seq = ANY(%s)) "
                f"{select} WHERE {_NOT_PASSED} ORDER BY p.seq LIMIT %s",
                (marks, passed, limit),
            )
        with self.pool.connection() as conn:
            rows = conn.execute(*statement, binary=True).fetchall()  # bytea: no hex to decode
            if not rows and not skip and marks and not due:
                self._flush_marks(conn)  # idle: let every process see it is all relayed
            if due and marks:
                self._unmarked += len(marks)
                since = time.monotonic() - self._vacuumed
                if self._unmarked >= VACUUM_EVERY or since >= VACUUM_AFTER_S:
                    self._vacuum_pending(conn)
        return [outbox_row(r) for r in rows]

    def _vacuum_pending(self, conn: psycopg.Connection[Any]) -> None:
        """The pending table is a queue: every relayed row leaves a dead one behind, and the
        relay's ordered read steps over all of them until a vacuum. Autovacuum looks once a
        minute, by when a busy relay has read past hundreds of thousands (its reads grew from
        0.8k to 7.6k buffers over 100,000 changes), so the relay vacuums it itself, every
        VACUUM_EVERY events or VACUUM_AFTER_S seconds. Without truncating: that would take
        a lock that stops the owner's commits for a moment."""
        self._unmarked, self._vacuumed = 0, time.monotonic()
        try:
            conn.execute(f"VACUUM (TRUNCATE false) {self._t('charter_pending')}")
        except psycopg.Error as exc:  # not the table's owner, say: autovacuum will do it
            log.info("charter: could not vacuum %s: %s", self._t("charter_pending"), exc)

    def mark_relayed(self, rows: Sequence[OutboxRow]) -> None:
        with self._lock:
            if not self._relayed:
                self._marked = time.monotonic()
            self._relayed = [*self._relayed, *(r.seq for r in rows)]

    def _flush_marks(self, conn: psycopg.Connection[Any]) -> None:
        """Unmark now what was relayed since the last unmarking (if anything)."""
        with self._lock:
            done, self._relayed = self._relayed, []
        if done:
            conn.execute(f"DELETE FROM {self._t('charter_pending')} WHERE seq = ANY(%s)", (done,))

    def rewind(self, after: int = 0) -> None:
        with self.pool.connection() as conn:
            self._flush_marks(conn)
            conn.execute(
                f"INSERT INTO {self._t('charter_pending')} SELECT seq FROM "
                f"{self._t('charter_outbox')} WHERE seq > %s ON CONFLICT DO NOTHING",
                (after,),
            )

    def unrelayed(self, entity: str) -> Backlog:
        with self.pool.connection() as conn:
            self._flush_marks(conn)
            row = conn.execute(
                f"SELECT count(*), min(o.time) FROM {self._t('charter_pending')} p "
                f"JOIN {self._t('charter_outbox')} o USING (seq) WHERE o.entity = %s",
                (entity,),
            ).fetchone()
        assert row is not None
        return Backlog(int(row[0]), row[1])

    def history(self, entity: str, entity_id: str) -> list[OutboxRow]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {HISTORY_COLUMNS} FROM {self._t('charter_outbox')} "
                "WHERE entity_id = %s AND entity = %s ORDER BY version",
                (entity_id, entity),
            ).fetchall()
        return [outbox_row(r) for r in rows]

    def current(self, entity: Entity, after: str = "", limit: int = 1000) -> list[OutboxRow]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS_OF_O} FROM {self._t(entity.table)} AS e "
                f"JOIN {self._t('charter_outbox')} AS o "
                "ON o.entity_id = e.id AND o.version = e.version AND o.entity = %s "
                "WHERE e.id > %s ORDER BY e.id LIMIT %s",
                (entity.name, after, limit),
                binary=True,
            ).fetchall()
        return [outbox_row(r) for r in rows]

    def lead(self, holder: str) -> bool:
        """A session advisory lock on a connection of the relay's own, which the server
        frees when that session ends. Held, it is checked at most every LEAD_CHECK_S (a
        server restart ends the session); not held, asked for again on that connection."""
        conn, checked, held = self._leads.get(holder) or (None, 0.0, False)
        now = time.monotonic()
        if held and now - checked < LEAD_CHECK_S:
            return True
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10)
            # true also when this session holds it already (it then holds it once more);
            # null, without taking it, for a role that may not unmark what it relayed: such
            # a relay would hold the lead while failing, and the owner's own would stand by
            key = f"charter-relay:{self.schema}"
            row = conn.execute(
                "SELECT CASE WHEN has_table_privilege(%s, 'DELETE') "
                "THEN pg_try_advisory_lock(hashtext(%s)) END",
                (self._t("charter_pending"), key),
            ).fetchone()
        except psycopg.Error:
            self._leads.pop(holder, None)
            if conn is not None:
                conn.close()
            raise
        if row is None or row[0] is None:
            self._leads.pop(holder, None)
            conn.close()
            raise self._refused(
                "this process may not relay its outbox (its role may not unmark what it "
                "relayed, in charter_pending)"
            )
        held = bool(row[0])
        self._leads[holder] = (conn, now, held)
        return held

    def release(self, holder: str) -> None:
        conn, _, _ = self._leads.pop(holder, None) or (None, 0.0, False)
        if conn is not None:
            conn.close()  # the session ends: the server frees its lock
