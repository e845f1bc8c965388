"""A context's schema on PostgreSQL: prepared (charter's tables, the entities' and
copies' tables with their constraints and guard triggers, created or extended), checked
against the charter, and the statements compiled for it; the words of a refusal by
the server."""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from charter import roles, urls
from charter.errors import BackendError, SchemaChangeError
from charter.model import Charter, Copy, Entity, Field, NoOverlap
from charter.stores.common import (
    OUTBOX_ADDED_COLUMNS,
    check_extension,
    copy_guard_message,
    counted,
    entity_guard_message,
    extension_problems,
    overlap_refused,
)
from charter.stores.postgres import commands
from charter.stores.postgres.core import _Core
from charter.stores.postgres.drift import TABLE as DRIFT_TABLE
from charter.stores.postgres.writes import OLD

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
CREATE TABLE IF NOT EXISTS {s}.charter_latency (
    copy text NOT NULL, minute bigint NOT NULL, bucket smallint NOT NULL,
    count bigint NOT NULL, PRIMARY KEY (copy, minute, bucket)
);
CREATE OR REPLACE FUNCTION {s}.charter_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('charter.guard', true) IS DISTINCT FROM 'open' THEN
        RAISE EXCEPTION USING MESSAGE = TG_ARGV[0], ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END $$;
"""
_META += commands.TABLE + DRIFT_TABLE


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


def _record(names: Sequence[str], types: Sequence[str]) -> str:
    """The column list of a json_to_recordset: each JSON key, typed as its column."""
    return ", ".join(f'"{name}" {kind}' for name, kind in zip(names, types, strict=True))


class _Schema(_Core):
    """Prepare, check, compile; refusals."""

    # -- schema ---------------------------------------------------------------

    def prepare(self, charter: Charter, context: str) -> None:
        self.schema = self._schema_option or context
        self._latency.prepared(charter)
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
        self._sql.update(commands.statements(self._t))

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
                present = self._columns(conn, table)
                if not present:
                    continue
                recorded = self._recorded(conn, kind, name)
                count = conn.execute(f"SELECT count(*) FROM {self._t(table)}").fetchone()
                rows = int(count[0]) if count else 0
                found += extension_problems(kind, name, table, fields, recorded, present, rows)
        return found

    def _columns(self, conn: psycopg.Connection[Any], table: str) -> set[str]:
        """The columns `table` has in this store's schema (none: it does not exist)."""
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (self.schema, table),
        )
        return {row[0] for row in rows}

    def _recorded(self, conn: psycopg.Connection[Any], kind: str, name: str) -> dict[str, str]:
        """What charter_schema says was made for (kind, name): field → type, or for a
        no_overlap rule, its number → its description."""
        rows = conn.execute(
            f"SELECT field, type FROM {self._t('charter_schema')} WHERE kind = %s AND name = %s",
            (kind, name),
        )
        return dict(rows.fetchall())

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
            present = self._columns(conn, "charter_outbox")
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
        recorded = self._recorded(conn, kind, name)
        present = self._columns(conn, table)
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
        enforced = self._recorded(conn, "no_overlap", entity.name)
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
        # The owner's queued changes, many rows a statement (see writes.py), the rows
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
