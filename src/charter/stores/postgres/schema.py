"""A context's store in its own PostgreSQL schema (psycopg 3 with a connection pool).

Same semantics as the SQLite store. PostgreSQL does more of the work itself:
`unique` is a unique index, `no_overlap` an `EXCLUDE USING gist` constraint, and
the single writer rests on roles and grants (`charter apply`); a guard trigger
also refuses, with the owner's name, any write that does not come through
charter. The relay reads a pending table rather than a position, because a
sequence number becomes visible at commit, not at insert: a position would skip
a row that commits late."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from charter import roles, urls
from charter.errors import BackendError, SchemaChangeError
from charter.events import Event
from charter.lanes import Lane
from charter.model import Charter, Copy, Entity, Field, NoOverlap
from charter.records import (
    Backlog,
    Checkpoint,
    LaneCheckpoint,
    OutboxRow,
    Parked,
    Row,
    latest_lanes,
)
from charter.stores.common import (
    HISTORY_COLUMNS,
    OUTBOX_ADDED_COLUMNS,
    OUTBOX_COLUMNS,
    OUTBOX_COLUMNS_OF_O,
    OUTBOX_INSERT,
    check_extension,
    copy_guard_message,
    counted,
    entity_guard_message,
    extension_problems,
    outbox_row,
    overlap_refused,
    unstorable,
    where_clause,
)
from charter.stores.postgres.writes import OLD, Statement, Writes, pipelined, rollback
from charter.values import now_text

# (a hashed subplan: `<> ALL(array)` compares each row with every element, 4x slower here)
_NOT_PASSED = "p.seq NOT IN (SELECT unnest(%s::bigint[]))"
log = logging.getLogger("charter.stores.postgres")

NEVER_BY_ITSELF = 2**31  # psycopg's prepare_threshold: prepare only with prepare=True …
PREPARED = True  # … which the simple statements run most often pass (no joins to misplan)
WAIT_FOR_CONNECTION_S = 5.0  # then UnavailableError (the runner tries again, backing off)
ASK_AGAIN_S = 0.25  # while waiting for a connection: each ask may start a new one at once
RECONNECT_FOR_S = 1.0  # the pool's own tries after a lost connection, before it gives up
# The pool logs every failed connection attempt; charter reports the failure itself, once
# (charter.reports): without a handler of the application's, these would reach stderr.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())
UNMARK_AT = 1000  # relayed events unmarked together (see PostgresStore.pending)
UNMARK_AFTER_S = 0.05
VACUUM_EVERY = 20_000  # relayed events between two vacuums of the pending table, or
VACUUM_AFTER_S = 2.0  # seconds (when anything was relayed): a few ms on a small table

_COLUMN_TYPE = {
    "integer": "bigint",
    "number": "double precision",
    "boolean": "boolean",
    "uuid": "uuid",
    "timestamp": "timestamptz",
    "date": "date",
}

_META = """
CREATE TABLE IF NOT EXISTS {s}.charter_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.charter_schema (
    kind text NOT NULL, name text NOT NULL, field text NOT NULL, type text NOT NULL,
    PRIMARY KEY (kind, name, field)
);
CREATE TABLE IF NOT EXISTS {s}.charter_outbox (
    seq bigserial PRIMARY KEY, event_id text NOT NULL, entity text NOT NULL,
    entity_id text NOT NULL, version integer NOT NULL, op text NOT NULL,
    changed text NOT NULL, time text NOT NULL, body bytea NOT NULL,
    actor text, private_changed text
);
CREATE INDEX IF NOT EXISTS charter_outbox_entity_id ON {s}.charter_outbox (entity_id);
CREATE TABLE IF NOT EXISTS {s}.charter_pending (seq bigint PRIMARY KEY);
CREATE TABLE IF NOT EXISTS {s}.charter_checkpoint (
    copy text PRIMARY KEY, position bigint NOT NULL, applied_at text, fields text NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.charter_lane (
    copy text NOT NULL, lanes integer NOT NULL, lane integer NOT NULL,
    position bigint NOT NULL, applied_at text, PRIMARY KEY (copy, lanes, lane)
);
CREATE TABLE IF NOT EXISTS {s}.charter_tombstone (
    copy text NOT NULL, id text NOT NULL, version integer NOT NULL, PRIMARY KEY (copy, id)
);
CREATE TABLE IF NOT EXISTS {s}.charter_parked (
    copy text NOT NULL, entity_id text NOT NULL, version integer, event_id text,
    position bigint NOT NULL, reason text NOT NULL, body bytea, parked_at text NOT NULL
);
CREATE OR REPLACE FUNCTION {s}.charter_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('charter.guard', true) IS DISTINCT FROM 'open' THEN
        RAISE EXCEPTION USING MESSAGE = TG_ARGV[0], ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END $$;
"""


def _fingerprint(charter: Charter, context: str) -> str:
    """Everything about a context that shapes its tables, triggers and messages (charter's
    own tables included, so a new version of them is created in an existing schema)."""
    teams = {name: ctx.team for name, ctx in charter.contexts.items()}
    shape = (
        [(e, teams[e.owner]) for e in charter.owned_by(context)],
        [
            (c, charter.entities[c.of], teams[charter.entities[c.of].owner])
            for c in charter.copies_in(context)
        ],
    )
    return hashlib.sha256((_META + repr(shape)).encode()).hexdigest()


def _column_type(field: Field) -> str:
    return _COLUMN_TYPE.get(field.type, "text")


def _canonical(field_name: str, kind: str) -> str:
    """A select expression that returns the canonical (wire) form of a column."""
    column = f'"{field_name}"'
    if kind == "timestamp":
        return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    if kind == "date":
        return f"to_char({column}, 'YYYY-MM-DD')"
    if kind == "uuid":
        return f"{column}::text"
    return column


def split_url(url: str) -> tuple[str, str | None, int]:
    """postgresql://…?schema=x&pool=16 → (libpq URL, schema, pool size)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", None)
    pool = int(query.pop("pool", "10"))
    return urlunsplit(parts._replace(query=urlencode(query))), schema, pool


class PostgresStore:
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

    @property
    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                # A server that refuses us (no such role, a wrong password) says so here, at
                # once, rather than after the pool's 30 s of trying again.
                psycopg.connect(self._conninfo, connect_timeout=10).close()
                self._pool = _Pool(
                    self._conninfo,
                    min_size=1,
                    max_size=self._pool_size,
                    # Prepared only where asked (PREPARED): a generic plan made while a
                    # table was small (a hash join over a seq scan) stays cached, and grew
                    # a 100-row UPDATE … FROM json_to_recordset from 0.2 to 15 ms at 100,000
                    # rows. The statements that join are planned each time.
                    kwargs={"autocommit": True, "prepare_threshold": NEVER_BY_ITSELF},
                    configure=_open_guard,
                    open=True,
                    name=f"charter-{self.schema}",
                    timeout=WAIT_FOR_CONNECTION_S,
                    reconnect_timeout=RECONNECT_FOR_S,
                )
            return self._pool

    def _t(self, table: str) -> str:
        return f'"{self.schema}"."{table}"'

    # -- schema ---------------------------------------------------------------

    def prepare(self, charter: Charter, context: str) -> None:
        self.schema = self._schema_option or context
        owned = charter.owned_by(context)
        copies = charter.copies_in(context)
        fingerprint = _fingerprint(charter, context)
        self._prepared = (charter, context)
        for attempt in range(1, 6):
            found = self._fingerprint()
            if found == fingerprint:
                break  # no DDL: a context's own roles may not, and need not, run any
            try:
                self._create(charter, context, fingerprint)
                break
            except pg_errors.InsufficientPrivilege as exc:
                raise self._unprepared(exc, found) from exc
            except (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected):
                if attempt == 5:  # live writers kept the tables busy: say so, don't hang
                    raise
                time.sleep(0.1 * attempt)
        for entity in owned:
            self._compile_entity(entity)
        for copy in copies:
            self._compile_copy(copy, charter.entities[copy.of])

    def check(self, charter: Charter, context: str) -> list[SchemaChangeError]:
        self.schema = self._schema_option or context
        shapes = [
            ("entity", e.name, e.table, list(e.fields.values())) for e in charter.owned_by(context)
        ]
        for copy in charter.copies_in(context):
            entity = charter.entities[copy.of]
            fields = [entity.fields[name] for name in copy.fields]
            shapes.append(("copy", copy.name, copy.table, [*fields, Field("synced_at", "text")]))
        found = []
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")  # changes nothing
            exists = conn.execute("SELECT to_regclass(%s)", (self._t("charter_schema"),)).fetchone()
            if not exists or exists[0] is None:
                return []
            for kind, name, table, fields in shapes:
                present = {
                    row[0]
                    for row in conn.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s",
                        (self.schema, table),
                    )
                }
                if not present:
                    continue
                recorded: dict[str, str] = dict(
                    conn.execute(
                        f"SELECT field, type FROM {self._t('charter_schema')} "
                        "WHERE kind = %s AND name = %s",
                        (kind, name),
                    ).fetchall()
                )
                count = conn.execute(f"SELECT count(*) FROM {self._t(table)}").fetchone()
                rows = int(count[0]) if count else 0
                found += extension_problems(kind, name, table, fields, recorded, present, rows)
        return found

    def _fingerprint(self) -> str | None:
        """What the schema was last prepared for (None: nothing yet). Every role of the
        context may read it; a role of another context is refused here (see refusal)."""
        with self.pool.connection() as conn:
            user = conn.execute("SELECT current_user").fetchone()
            self._user = str(user[0]) if user else ""
            try:
                row = conn.execute(
                    f"SELECT value FROM {self._t('charter_meta')} WHERE key = 'fingerprint'"
                ).fetchone()
            except pg_errors.UndefinedTable:
                return None
        return str(row[0]) if row else None

    def refusal(self) -> str:
        """What this process's role may do, for the message of a refusal (charter.boundary)."""
        if self._prepared is None or not self._user:
            return ""
        charter, context = self._prepared
        return roles.explain(charter, context, self._user)

    def _unprepared(self, exc: psycopg.Error, found: str | None) -> BackendError:
        """The tables are not ready for this charter, and this role may not make them."""
        state = "not prepared at all" if found is None else "prepared for another version"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return self._refused(
            f"its tables in schema '{self.schema}' are not prepared for this charter "
            f"({state}), and this process may not create or change them (PostgreSQL at "
            f"{urls.server(self.url)}: {text})",
            "Run `charter apply` with the admin's credentials after every change of the "
            "charter, then start this process again",
        )

    def _refused(self, problem: str, advice: str = "") -> BackendError:
        """What this process's role may not do here, what the role is for, what to try."""
        context = self._prepared[1] if self._prepared else ""
        what = f"the store of context '{context}'"
        text = f"{what} ({urls.redact(self.url)}): {problem}: {self.refusal()}"
        return BackendError(
            text + (f". {advice}" if advice else ""), what=what, server=urls.server(self.url)
        )

    def _create(self, charter: Charter, context: str, fingerprint: str) -> None:
        owned = charter.owned_by(context)
        copies = charter.copies_in(context)
        team = charter.contexts[context].team
        with self.pool.connection() as conn, conn.transaction():
            key = zlib.crc32(f"charter:{self.schema}".encode())
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            conn.execute("SET LOCAL lock_timeout = '2s'")  # never wait behind writers for long
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            if any(e.constraints for e in owned):
                conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
            conn.execute(_META.format(s=f'"{self.schema}"'))
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = 'charter_outbox'",
                    (self.schema,),
                )
            }
            for column in OUTBOX_ADDED_COLUMNS:  # a store made before they were
                if column not in present:
                    conn.execute(
                        f"ALTER TABLE {self._t('charter_outbox')} ADD COLUMN {column} text"
                    )
            for entity in owned:
                self._prepare_entity(conn, entity, team)
            for copy in copies:
                entity = charter.entities[copy.of]
                owner = charter.contexts[entity.owner]
                self._prepare_copy(conn, copy, entity, owner.name, owner.team)
            conn.execute(
                f"INSERT INTO {self._t('charter_meta')} VALUES ('fingerprint', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (fingerprint,),
            )

    def _extend(
        self,
        conn: psycopg.Connection[Any],
        kind: str,
        name: str,
        table: str,
        fields: list[Field],
    ) -> None:
        """Create the table, or add the new columns; refuse a type change."""
        recorded = dict(
            conn.execute(
                f"SELECT field, type FROM {self._t('charter_schema')} "
                "WHERE kind = %s AND name = %s",
                (kind, name),
            ).fetchall()
        )
        present = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (self.schema, table),
            )
        }
        if not present:
            columns = "".join(f', "{f.name}" {_column_type(f)}' for f in fields)
            conn.execute(
                f"CREATE TABLE {self._t(table)} "
                f"(id text PRIMARY KEY, version integer NOT NULL{columns})"
            )
        else:
            count = conn.execute(f"SELECT count(*) FROM {self._t(table)}").fetchone()
            rows = int(count[0]) if count else 0
            for field in fields:
                old = recorded.get(field.name)
                if not check_extension(kind, name, table, field, old, rows, field.name in present):
                    continue
                default = ""
                if kind == "entity" and field.default is not None:
                    default = " DEFAULT " + sql.Literal(field.default).as_string(conn)
                column = f'"{field.name}" {_column_type(field)}{default}'
                conn.execute(f"ALTER TABLE {self._t(table)} ADD COLUMN {column}")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self._t('charter_schema')} VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (kind, name, field) DO UPDATE SET type = excluded.type",
                [(kind, name, f.name, f.type) for f in fields],
            )

    def _guard(self, conn: psycopg.Connection[Any], table: str, message: str) -> None:
        trigger = f"{table}_charter_guard"
        conn.execute(f'DROP TRIGGER IF EXISTS "{trigger}" ON {self._t(table)}')
        conn.execute(
            f'CREATE TRIGGER "{trigger}" BEFORE INSERT OR UPDATE OR DELETE ON {self._t(table)} '
            f"FOR EACH STATEMENT EXECUTE FUNCTION {self._t('charter_guard')}("
            + sql.Literal(message).as_string(conn)
            + ")"
        )

    def _prepare_entity(self, conn: psycopg.Connection[Any], entity: Entity, team: str) -> None:
        table = entity.table
        fields = list(entity.fields.values())
        self._extend(conn, "entity", entity.name, table, fields)
        for field in fields:
            if field.unique:
                conn.execute(
                    f'CREATE UNIQUE INDEX IF NOT EXISTS "{table}_{field.name}_unique" '
                    f'ON {self._t(table)} ("{field.name}")'
                )
        enforced = dict(
            conn.execute(
                f"SELECT field, type FROM {self._t('charter_schema')} "
                "WHERE kind = 'no_overlap' AND name = %s",
                (entity.name,),
            ).fetchall()
        )
        for number, rule in enumerate(entity.constraints, 1):
            self._no_overlap(conn, entity, number, rule, enforced.get(str(number)))
        self._guard(
            conn,
            table,
            entity_guard_message(entity, team),
        )

    def _no_overlap(
        self,
        conn: psycopg.Connection[Any],
        entity: Entity,
        number: int,
        rule: NoOverlap,
        enforced: str | None,
    ) -> None:
        """The rule's EXCLUDE constraint, made again when the rule changed (one made before
        rules were recorded is taken as the rule when it has no `unless`)."""
        table, name = entity.table, f"{entity.table}_no_overlap_{number}"
        exists = conn.execute(
            "SELECT 1 FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE n.nspname = %s AND c.conname = %s",
            (self.schema, name),
        ).fetchone()
        same = enforced == rule.describe() or (enforced is None and rule.unless is None)
        if not exists or not same:
            if exists:
                conn.execute(f'ALTER TABLE {self._t(table)} DROP CONSTRAINT "{name}"')
            per = "".join(f'"{p}" WITH =, ' for p in rule.per)
            where = ""
            if rule.unless is not None:
                where = f" WHERE {counted(rule, '', lambda v: sql.Literal(v).as_string(conn))}"
            try:
                with conn.transaction():  # a savepoint: the refusal below is ours to word
                    # Deferrable, so checked at the end of each statement, not row by row:
                    # the owner's queued updates of one entity go as one statement, whose
                    # rows (cancel one, book another in its slot) come in no set order.
                    conn.execute(
                        f'ALTER TABLE {self._t(table)} ADD CONSTRAINT "{name}" EXCLUDE USING '
                        f'gist ({per}tstzrange("{rule.start}", "{rule.end}") WITH &&){where} '
                        "DEFERRABLE INITIALLY IMMEDIATE"
                    )
            except pg_errors.ExclusionViolation as exc:
                key = (exc.diag.message_detail or "").split(" conflicts with ")
                raise overlap_refused(entity, rule, (key[0], key[-1])) from None
        conn.execute(
            f"INSERT INTO {self._t('charter_schema')} VALUES ('no_overlap', %s, %s, %s) "
            "ON CONFLICT (kind, name, field) DO UPDATE SET type = excluded.type",
            (entity.name, str(number), rule.describe()),
        )

    def _prepare_copy(
        self, conn: psycopg.Connection[Any], copy: Copy, entity: Entity, owner: str, team: str
    ) -> None:
        fields = [entity.fields[name] for name in copy.fields]
        self._extend(conn, "copy", copy.name, copy.table, [*fields, Field("synced_at", "text")])
        self._guard(
            conn,
            copy.table,
            copy_guard_message(copy, entity, owner, team),
        )

    def _compile_entity(self, entity: Entity) -> None:
        names = ["id", "version", *entity.fields]
        cols = ", ".join(f'"{n}"' for n in names)
        marks = ", ".join("%s" for _ in names)
        table = self._t(entity.table)
        selects = ["id", "version"] + [_canonical(f.name, f.type) for f in entity.fields.values()]
        self._sql[f"insert:{entity.name}"] = f"INSERT INTO {table} ({cols}) VALUES ({marks})"
        self._sql[f"select:{entity.name}"] = f"SELECT {', '.join(selects)} FROM {table}"
        self._selects[entity.name] = names
        # The owner's queued changes, many rows a statement (see postgres_writes), the rows
        # passed as one JSON document: orjson writes it far faster than psycopg adapts arrays.
        record = _record(names, ["text", "integer", *map(_column_type, entity.fields.values())])
        self._sql[f"insert-many:{entity.name}"] = (
            f"INSERT INTO {table} ({cols}) SELECT * FROM json_to_recordset(%s::json) AS u({record})"
        )
        sets = ", ".join(f'"{n}" = u."{n}"' for n in names[1:])
        self._sql[f"update-many:{entity.name}"] = (
            f"UPDATE {table} AS t SET {sets} FROM json_to_recordset(%s::json) "
            f'AS u({record}, "{OLD}" integer) WHERE t.id = u.id AND t.version = u."{OLD}"'
        )
        self._sql[f"delete-many:{entity.name}"] = (
            f"DELETE FROM {table} AS t USING json_to_recordset(%s::json) "
            f'AS d(id text, "{OLD}" integer) WHERE t.id = d.id AND t.version = d."{OLD}"'
        )

    def _compile_copy(self, copy: Copy, entity: Entity) -> None:
        names = ["id", "version", *copy.fields, "synced_at"]
        cols = ", ".join(f'"{n}"' for n in names)
        record = _record(
            names[:-1],
            ["text", "integer", *(_column_type(entity.fields[f]) for f in copy.fields)],
        )
        picks = ", ".join(f'u."{n}"' for n in names[:-1])
        updates = ", ".join(f'"{n}" = excluded."{n}"' for n in names[1:])
        table = self._t(copy.table)
        tombstone = self._t("charter_tombstone")
        # Newer versions only, never a record already deleted (its tombstone), many a statement.
        upsert = (
            f"INSERT INTO {table} ({cols}) SELECT {picks}, %s "
            f"FROM json_to_recordset(%s::json) AS u({record}) "
            f"WHERE NOT EXISTS (SELECT 1 FROM {tombstone} AS t "
            "WHERE t.copy = %s AND t.id = u.id AND t.version >= u.version) "
            f"ON CONFLICT (id) DO UPDATE SET {updates} "
        )
        self._sql[f"apply:{copy.name}"] = upsert + f"WHERE excluded.version > {table}.version"
        self._sql[f"refresh:{copy.name}"] = upsert + f"WHERE excluded.version >= {table}.version"
        # (a fragment of a WITH list: see _apply_parts)
        self._sql[f"delete:{copy.name}"] = (
            "d AS (SELECT * FROM json_to_recordset(%s::json) AS d(id text, version integer)), "
            f"gone AS (DELETE FROM {table} AS c USING d "
            "WHERE c.id = d.id AND c.version < d.version), "
            f"t AS (INSERT INTO {tombstone} (copy, id, version) SELECT %s, d.id, d.version "
            f"FROM d ON CONFLICT (copy, id) DO UPDATE SET version = greatest({tombstone}.version, "
            "excluded.version))"
        )
        selects = (
            ["id", "version"]
            + [_canonical(f, entity.fields[f].type) for f in copy.fields]
            + ["synced_at"]
        )
        self._sql[f"select-copy:{copy.name}"] = f"SELECT {', '.join(selects)} FROM {table}"
        self._selects[f"copy:{copy.name}"] = names

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

    def _stream(self, select: str, names: list[str], where: Row | None) -> Iterator[Row]:
        query, params = where_clause(select, where, names, "IS NOT DISTINCT FROM %s")
        with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(name="charter_rows") as cursor,
        ):
            cursor.itersize = 2000
            cursor.execute(query + " ORDER BY id", params)
            for row in cursor:
                yield dict(zip(names, row, strict=True))

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
    ) -> list[Parked]:
        with self.pool.connection() as conn:
            try:
                self._apply_batch(conn, copy, items, parked, position, lane)
                return []
            except psycopg.Error:
                if conn.closed or not items:
                    raise
            # Something in the batch the table refuses: find it, park it, apply the rest.
            return self._apply_one_by_one(conn, copy, items, parked, position, lane)

    def _apply_batch(
        self,
        conn: psycopg.Connection[Any],
        copy: Copy,
        items: Sequence[tuple[int, Event]],
        parked: Sequence[Parked],
        position: int,
        lane: Lane | None,
    ) -> None:
        """The whole batch in one transaction and one round trip. What another process
        running this copy applied already changes nothing: a copy takes only newer versions,
        never a deleted record again, parks only what is past its checkpoint, and its
        checkpoint only moves forward."""
        now = now_text()
        parts = self._apply_parts(copy, items, now)
        if parked:
            park, params = self._park_statement(copy, parked, now, lane)
            parts.append((f"p AS ({park})", [*(params or ())]))
        conn.execute(*self._with(parts, self._checkpoint_statement(copy, position, now, lane)))

    def _apply_one_by_one(
        self,
        conn: psycopg.Connection[Any],
        copy: Copy,
        items: Sequence[tuple[int, Event]],
        parked: Sequence[Parked],
        position: int,
        lane: Lane | None,
    ) -> list[Parked]:
        """Event by event, each under a savepoint; what fails is parked."""
        now = now_text()
        start, params = self._start(copy, lane, lock=True)
        try:
            _, locked = pipelined(conn, [("BEGIN", None), (f"SELECT {start}", params)])
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
            statements += [self._checkpoint_statement(copy, position, now, lane), ("COMMIT", None)]
            pipelined(conn, statements)
            return failed
        except BaseException:
            rollback(conn)
            raise

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
        return count

    def copy_rows(self, copy: Copy, where: Row | None = None) -> Iterator[Row]:
        yield from self._stream(
            self._sql[f"select-copy:{copy.name}"], self._selects[f"copy:{copy.name}"], where
        )

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
        return stay

    def drop_parked(self, copy: Copy, positions: Sequence[int]) -> list[Parked]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"DELETE FROM {self._t('charter_parked')} "
                "WHERE copy = %s AND position = ANY(%s::bigint[]) RETURNING *",
                (copy.name, list(positions)),
            ).fetchall()
        return sorted(map(_parked, rows), key=lambda p: p.position)

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

    def close(self) -> None:
        for holder in list(self._leads):
            self.release(holder)
        if self._relayed and self._pool is not None:
            with contextlib.suppress(psycopg.Error), self.pool.connection() as conn:
                self._flush_marks(conn)
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


LEAD_CHECK_S = 1.0  # how long a relay trusts that it still leads before asking again

# SQLSTATE classes of failures that pass (deadlock, serialization, lock or statement
# timeout, resources, connection): an event that meets one is not parked as unstorable.
_TRANSIENT = frozenset({"08", "40", "53", "55", "57"})


def _text(value: str) -> str:
    """`value` as PostgreSQL text can hold it (no NUL character), to park what holds one."""
    return value.replace("\x00", "\\0") if "\x00" in value else value


def _parked(row: Sequence[Any]) -> Parked:
    return Parked(row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6] or b""), row[7])


class _Pool(ConnectionPool):
    """A pool that finds a server back within a fraction of a second. Its own tries to
    replace lost connections back off (1, 2, 4, 8 s apart: after an 8 s outage the first
    commit came 5-7 s after the server was back); a client asking anew lets it try a new
    connection at once, so waiting clients ask every ASK_AGAIN_S, and the pool's own tries
    give up after RECONNECT_FOR_S."""

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            try:
                return super().getconn(max(0.001, min(ASK_AGAIN_S, left)))
            except PoolTimeout:
                if time.monotonic() >= deadline:
                    raise PoolTimeout(f"couldn't get a connection after {wait:.1f} s") from None


def _record(names: Sequence[str], types: Sequence[str]) -> str:
    """The column list of a json_to_recordset: each JSON key, typed as its column."""
    return ", ".join(f'"{name}" {kind}' for name, kind in zip(names, types, strict=True))


def _open_guard(conn: psycopg.Connection[Any]) -> None:
    """charter's own connections may write the guarded tables; nobody else's may."""
    conn.execute("SELECT set_config('charter.guard', 'open', false)")
