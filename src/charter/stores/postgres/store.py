"""PostgresStore: the Store on PostgreSQL (the package's docstring says how it works).
The class is built in layers, each a module: core (the pool, names), schema, then the
relay side and the copy side beside each other; here, what it keeps, the owner side
(a transaction: writes.py; reads of the owner's records), and closing."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg_pool import ConnectionPool

from charter.model import Charter, Entity
from charter.records import Row
from charter.stores.common import OUTBOX_INSERT, LatencyMinutes
from charter.stores.postgres.copies import _Copies
from charter.stores.postgres.core import PREPARED, split_url
from charter.stores.postgres.drift import _Drift
from charter.stores.postgres.fences import _Fences
from charter.stores.postgres.listen import Listener
from charter.stores.postgres.reconcile import _Buckets
from charter.stores.postgres.relay import _Relay
from charter.stores.postgres.writes import Statement, Writes


class PostgresStore(_Copies, _Relay, _Buckets, _Drift, _Fences):
    """One context's tables in one PostgreSQL schema (by default named after the context)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conninfo, self._schema_option, self._pool_size = split_url(url)
        self.schema = self._schema_option or "public"
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self._relayed: list[int] = []  # published, not yet unmarked (see pending)
        self._marked = 0.0  # when the oldest of them was published
        self._unmarked = 0  # since the pending table was last vacuumed
        self._vacuumed = time.monotonic()
        self._leads: dict[str, tuple[psycopg.Connection[Any], float, bool]] = {}
        self._sql: dict[str, str] = {}
        self._selects: dict[str, list[str]] = {}
        self._prepared: tuple[Charter, str] | None = None  # for refusal(): whose store
        self._user = ""  # the role this process logs in as (current_user)
        self._latency = LatencyMinutes()  # the copies' latency histograms
        self._listening: Listener | None = None  # made on the first wait_applied
        self._listen_lock = threading.Lock()

    # -- owner side -------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Writes]:
        with self.pool.connection() as conn:
            writes = Writes(self, conn)
            try:
                yield writes
            except BaseException:
                writes.rollback()
                raise
            writes.commit()

    def fetch(self, entity: Entity, entity_id: str) -> Row | None:
        with self.pool.connection() as conn:
            return self._fetch(conn, entity, entity_id, lock=False)

    def _fetch(
        self, conn: psycopg.Connection[Any], entity: Entity, entity_id: str, lock: bool
    ) -> Row | None:
        query = self._sql[f"select:{entity.name}"] + " WHERE id = %s"
        lock_it = " FOR UPDATE" if lock else ""
        row = conn.execute(query + lock_it, (entity_id,), prepare=PREPARED).fetchone()
        if row is None:
            return None
        return dict(zip(self._selects[entity.name], row, strict=True))

    def _outbox_insert(self, rows: Sequence[tuple[Any, ...]]) -> tuple[str, Sequence[Any]]:
        """The outbox rows of one transaction (common.outbox_values), as an INSERT …
        RETURNING seq."""
        head = f"INSERT INTO {self._t('charter_outbox')} {OUTBOX_INSERT} "
        if len(rows) == 1:  # one row: scalar parameters cost psycopg far less than arrays
            return head + "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq", rows[0]
        docs = [
            {
                "event_id": event_id,
                "entity": entity,
                "entity_id": entity_id,
                "version": version,
                "op": op,
                "changed": changed,
                "time": at,
                "body": body.decode(),  # orjson's own output: UTF-8, and back byte for byte
                "actor": actor,
                "private_changed": private,
            }
            for event_id, entity, entity_id, version, op, changed, at, body, actor, private in rows
        ]
        query = head + (
            "SELECT u.event_id, u.entity, u.entity_id, u.version, u.op, u.changed, u.time, "
            "convert_to(u.body, 'UTF8'), u.actor, u.private_changed "
            "FROM json_to_recordset(%s::json) AS u(event_id text, entity text, entity_id text, "
            "version integer, op text, changed text, time text, body text, actor text, "
            "private_changed text) RETURNING seq"
        )
        return query, (orjson.dumps(docs).decode(),)

    def _outbox_statement(
        self, items: Sequence[tuple[Any, ...]], before: Statement | None = None
    ) -> Statement:
        """The outbox rows of one transaction and their pending marks, in one statement;
        with `before`, an INSERT that goes with them (one statement is one transaction)."""
        insert, params = self._outbox_insert(items)
        pending = self._t("charter_pending")
        query = f"WITH o AS ({insert}) INSERT INTO {pending} SELECT seq FROM o"
        if before is None:
            return query, params
        first, first_params = before
        query = f"WITH e AS ({first}), {query.removeprefix('WITH ')}"
        return query, [*(first_params or ()), *params]

    def rows(self, entity: Entity, where: Row | None = None) -> Iterator[Row]:
        yield from self._stream(
            self._sql[f"select:{entity.name}"], self._selects[entity.name], where
        )

    # -- closing ----------------------------------------------------------------

    def close(self) -> None:
        for holder in list(self._leads):
            self.release(holder)
        with self._listen_lock:
            if self._listening is not None:
                self._listening.close()
                self._listening = None
        if self._relayed and self._pool is not None:
            with contextlib.suppress(psycopg.Error), self.pool.connection() as conn:
                self._flush_marks(conn)
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
