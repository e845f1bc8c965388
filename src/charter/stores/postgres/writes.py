"""An owner transaction on PostgreSQL, sent in as few round trips as it can be.

The owner's changes are queued, not sent one by one. A transaction that only creates
becomes one statement at commit (the entity rows, the outbox rows and their pending marks
as one `WITH` list) on an autocommit connection: one round trip, a transaction of its own.
One that also updates or deletes reads each record it changes, `FOR UPDATE`, when it
changes it (the owner needs the current state to make the event); at commit, runs of the
same kind of change to the same entity become one statement each (rows passed as one JSON
document to `json_to_recordset`), and they go to the server in one pipeline.

What this changes for the caller: a `unique` or `no_overlap` violation is reported when
the transaction commits rather than by the `create` or `update` that caused it, as a
`ConstraintError` from the `with` block. The whole transaction is rolled back either way
(on PostgreSQL a failed statement aborts its transaction), so nothing else changes.

A savepoint sends what is queued before it and then `SAVEPOINT` (one round trip), and at
its exit what was queued inside it (and, if that is all inserts, `RELEASE` in the same
trip): a refusal inside it is raised from its exit, within the caller's `try`, after
`ROLLBACK TO SAVEPOINT`. A transaction that uses no savepoint keeps its one statement."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import psycopg
from psycopg import errors as pg_errors

from charter.errors import ConflictError, ConstraintError, FencedError
from charter.events import Event
from charter.model import Entity
from charter.records import RecordedCommand, Row
from charter.stores import fencing
from charter.stores.common import outbox_values
from charter.stores.postgres import commands

OLD = "charter.old_version"  # the version an owner's UPDATE or DELETE expects to find

Statement = tuple[str, Sequence[Any] | None]  # a query and its parameters
Cursor = psycopg.Cursor[Any]
IDLE = psycopg.pq.TransactionStatus.IDLE
_KEY = re.compile(r"Key \((?P<columns>.*)\)=\((?P<values>.*)\) (already exists|conflicts)")


class StoreSide(Protocol):
    """What the writes need of their store (charter.stores.postgres.PostgresStore), named
    here so that the writes do not import the store that imports them: the statements it
    made for the charter, a read of one record, and the outbox rows of a transaction."""

    _sql: dict[str, str]

    def _fetch(
        self, conn: psycopg.Connection[Any], entity: Entity, entity_id: str, lock: bool
    ) -> Row | None: ...

    def _outbox_statement(
        self, items: Sequence[tuple[Any, ...]], before: Statement | None = None
    ) -> Statement: ...


@dataclass(slots=True)
class _Run:
    """Consecutive changes of one kind to one entity: one statement at commit."""

    kind: str  # insert | update | delete
    entity: Entity
    rows: list[Row] = field(default_factory=list)
    old_versions: list[int] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


class Writes:
    """The store's half of one owner transaction: reads now, writes at commit."""

    __slots__ = (
        "_begun",
        "_commands",
        "_conn",
        "_outbox",
        "_runs",
        "_savepoints",
        "_store",
        "_written",
    )

    def __init__(self, store: StoreSide, conn: psycopg.Connection[Any]) -> None:
        self._store, self._conn = store, conn
        self._begun = False
        self._runs: list[_Run] = []
        self._written: dict[tuple[str, str], Row | None] = {}  # None: deleted here
        self._outbox: list[tuple[Any, ...]] = []
        self._commands: list[RecordedCommand] = []  # recorded at commit
        # savepoints open, innermost last: name, and what was written when it began
        self._savepoints: list[tuple[str, dict[tuple[str, str], Row | None]]] = []

    # -- what the owner calls ---------------------------------------------------------

    def fetch(self, entity: Entity, entity_id: str) -> Row | None:
        key = (entity.name, entity_id)
        if key in self._written:  # changed in this transaction: its state is here
            row = self._written[key]
            return dict(row) if row is not None else None
        if not self._begun:
            self._conn.execute("BEGIN")
            self._begun = True
        return self._store._fetch(self._conn, entity, entity_id, lock=True)

    def insert(self, entity: Entity, row: Row) -> None:
        self._queue("insert", entity, row, 0)

    def update(self, entity: Entity, entity_id: str, old_version: int, row: Row) -> bool:
        # The row was read FOR UPDATE (or written) in this transaction: nobody can change
        # it before the commit. The statement still checks the version, and says so if not.
        self._queue("update", entity, row, old_version)
        return True

    def delete(self, entity: Entity, entity_id: str, old_version: int) -> bool:
        self._queue("delete", entity, {"id": entity_id}, old_version)
        self._written[(entity.name, entity_id)] = None
        return True

    def append(
        self,
        events: Sequence[Event],
        bodies: Sequence[bytes],
        private: Sequence[tuple[str, ...]] = (),
    ) -> None:
        self._outbox.extend(outbox_values(events, bodies, private))

    def command(self, key: str) -> RecordedCommand | None:
        queued = next((c for c in self._commands if c.key == key), None)
        if queued is not None:
            return queued
        if not self._begun:
            self._conn.execute("BEGIN")
            self._begun = True
        row = self._conn.execute(self._store._sql[commands.SELECT], (key,)).fetchone()
        return commands.recorded(row)

    def record_command(self, command: RecordedCommand) -> None:
        if self.command(command.key) is not None:
            raise ConstraintError(f"command key {command.key!r} was handled already")
        self._commands.append(command)  # a second one committing first fails the commit

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        name = f"charter_{len(self._savepoints) + 1}"
        self._send((f"SAVEPOINT {name}", None))  # what came before is checked here
        self._savepoints.append((name, dict(self._written)))
        recorded = len(self._commands)
        try:
            yield
        except BaseException:
            del self._commands[recorded:]
            self._undo()
            raise
        else:
            self._send((f"RELEASE SAVEPOINT {name}", None))
        finally:
            self._savepoints.pop()

    def _send(self, last: Statement) -> None:
        """Send the queued changes and then `last`, in a transaction begun if it was not;
        an update or delete that found no row is a ConflictError. On any refusal, undo
        back to the innermost savepoint (or roll the whole transaction back)."""
        statements: list[Statement] = [] if self._begun else [("BEGIN", None)]
        skip = len(statements)
        statements += [self._statement(run) for run in self._runs]
        checked = any(run.kind != "insert" for run in self._runs)
        if not checked:  # nothing to look at before `last`: in the same trip
            statements.append(last)
        try:
            cursors = pipelined(self._conn, statements)[skip:]
            self._begun = True
            for run, cursor in zip(self._runs, cursors, strict=False):
                if run.kind != "insert" and cursor.rowcount != len(run.rows):
                    raise ConflictError(
                        f"{run.entity.name}: a record changed while this transaction "
                        "updated it; read it again and retry"
                    )
            if checked:
                self._conn.execute(*last)
        except (pg_errors.IntegrityError, pg_errors.DeadlockDetected) as exc:
            refusal = self._refusal(exc)
            self._undo()
            raise refusal from None
        except BaseException:
            self._undo()
            raise
        self._runs = []

    def _undo(self) -> None:
        """Back to where the innermost savepoint began; all of it if there is none."""
        self._runs = []
        if not self._savepoints:
            self._written = {}
            self.rollback()
            return
        name, written = self._savepoints[-1]
        self._written = dict(written)
        if not self._conn.closed:
            self._conn.execute(f"ROLLBACK TO SAVEPOINT {name}")

    def _queue(self, kind: str, entity: Entity, row: Row, old_version: int) -> None:
        run = self._runs[-1] if self._runs else None
        entity_id = row["id"]
        # An UPDATE … FROM with one id twice would change that row once: start a new run.
        if run is None or run.kind != kind or run.entity is not entity or entity_id in run.ids:
            run = _Run(kind, entity)
            self._runs.append(run)
        run.rows.append(row)
        run.old_versions.append(old_version)
        run.ids.add(entity_id)
        if kind != "delete":
            self._written[(entity.name, entity_id)] = row

    # -- commit and rollback ----------------------------------------------------------

    def commit(self) -> None:
        if not self._runs and not self._outbox and not self._commands:
            if self._begun:
                self._conn.execute("COMMIT")
            return
        if (
            not self._begun
            and not self._commands
            and len(self._runs) == 1
            and self._runs[0].kind == "insert"
        ):
            # The common case (only creates, nothing read): one statement, which on an
            # autocommit connection is a transaction of its own.
            statement = self._store._outbox_statement(self._outbox, self._statement(self._runs[0]))
            try:
                self._conn.execute(*statement, prepare=True)  # no join: safe to prepare
            except (pg_errors.IntegrityError, pg_errors.DeadlockDetected) as exc:
                raise self._refusal(exc) from None
            return
        statements: list[Statement] = [] if self._begun else [("BEGIN", None)]
        skip = len(statements)
        statements += [self._statement(run) for run in self._runs]
        if self._outbox:
            statements.append(self._store._outbox_statement(self._outbox))
        insert = self._store._sql.get(commands.INSERT, "")
        statements += [(insert, commands.params(c)) for c in self._commands]
        checked = any(run.kind != "insert" for run in self._runs)
        if not checked:  # nothing to look at before committing: commit in the same trip
            statements.append(("COMMIT", None))
        try:
            cursors = pipelined(self._conn, statements)[skip:]
        except (pg_errors.IntegrityError, pg_errors.DeadlockDetected) as exc:
            self.rollback()
            raise self._refusal(exc) from None
        except BaseException:
            self.rollback()
            raise
        if checked:
            for run, cursor in zip(self._runs, cursors, strict=False):
                if run.kind != "insert" and cursor.rowcount != len(run.rows):
                    self.rollback()
                    raise ConflictError(
                        f"{run.entity.name}: a record changed while this transaction "
                        "updated it; read it again and retry"
                    )
            self._conn.execute("COMMIT")
        self._begun = False

    def rollback(self) -> None:
        self._begun = False
        rollback(self._conn)

    def _statement(self, run: _Run) -> tuple[str, Sequence[Any]]:
        store = self._store
        name = run.entity.name
        if run.kind == "insert" and len(run.rows) == 1:  # scalars cost less than a document
            return store._sql[f"insert:{name}"], tuple(run.rows[0].values())
        rows: list[Row]
        if run.kind == "insert":
            rows = run.rows
        else:
            pairs = zip(run.rows, run.old_versions, strict=True)
            if run.kind == "update":
                rows = [{**row, OLD: old} for row, old in pairs]
            else:
                rows = [{"id": row["id"], OLD: old} for row, old in pairs]
        return store._sql[f"{run.kind}-many:{name}"], (orjson.dumps(rows).decode(),)

    def _refusal(
        self, exc: pg_errors.IntegrityError | pg_errors.DeadlockDetected
    ) -> ConstraintError | ConflictError | FencedError:
        """The caller's error for a refused statement: which rule, which value."""
        table = exc.diag.table_name or ""
        if table == commands.NAME:  # another transaction recorded the same key first
            keys = ", ".join(repr(c.key) for c in self._commands)
            return ConstraintError(f"command key {keys} was handled already")
        entity = next((r.entity for r in self._runs if r.entity.table == table), None)
        if entity is None:
            entity = next((r.entity for r in self._runs), None)
        if entity is None:
            return ConstraintError(f"{exc.diag.message_primary or exc}")
        return constraint_error(entity, exc)


def rollback(conn: psycopg.Connection[Any]) -> None:
    """End whatever transaction the connection is in (an autocommit one is in none)."""
    if not conn.closed and conn.info.transaction_status != IDLE:
        conn.execute("ROLLBACK")


def pipelined(conn: psycopg.Connection[Any], statements: Sequence[Statement]) -> list[Cursor]:
    """Send the statements in one round trip; the first error they met, if any, is raised
    (caught here rather than by the pipeline's exit, which would log it as a warning).

    None of them is prepared (charter's pools prepare only on request, see
    postgres.core.NEVER_BY_ITSELF): after an error in a pipeline, psycopg 3.3 can count as
    prepared a statement it prepared automatically but whose preparation the server
    skipped, and then fails on it ("prepared statement _pg3_N does not exist") for the life
    of the connection. 20 threads racing for unique e-mails met it (test_concurrency)."""
    first: psycopg.Error | None = None
    cursors: list[Cursor] = []
    try:
        with conn.pipeline():
            try:
                for query, params in statements:
                    cursors.append(conn.execute(query, params))
            except psycopg.Error as exc:
                first = exc
    except psycopg.Error as exc:
        first = first or exc
    if first is not None:
        raise first
    return cursors


def constraint_error(
    entity: Entity, exc: pg_errors.IntegrityError | pg_errors.DeadlockDetected
) -> ConstraintError | ConflictError | FencedError:
    if (exc.diag.message_primary or "").startswith(fencing.PREFIX):  # G10: a fence trigger
        return fencing.from_message(entity.name, exc.diag.message_primary or "")
    constraint = exc.diag.constraint_name or ""
    if isinstance(exc, pg_errors.DeadlockDetected):
        # Two transactions each waited on the other's overlapping row: one of them loses,
        # as it would have had they come one after the other.
        if "exclusion constraint" in (exc.diag.context or "") and entity.constraints:
            exc = pg_errors.ExclusionViolation()
            constraint = f"{entity.table}_no_overlap_1"
        else:
            return ConflictError(f"{entity.name}: a concurrent transaction won; retry")
    if isinstance(exc, pg_errors.ExclusionViolation):
        rule = entity.constraints[int(constraint.rsplit("_", 1)[-1]) - 1]
        return ConstraintError(
            f"{entity.name} no_overlap: another {entity.name} with the same "
            f"{', '.join(rule.per) or 'scope'} overlaps [{rule.start}, {rule.end})"
        )
    prefix, suffix = f"{entity.table}_", "_unique"
    if isinstance(exc, pg_errors.UniqueViolation) and constraint.endswith(suffix):
        name = constraint.removeprefix(prefix).removesuffix(suffix)
        key = _KEY.search(exc.diag.message_detail or "")
        value = key.group("values") if key else "?"
        return ConstraintError(
            f"{entity.name}.{name} must be unique: {value!r} is already used by "
            f"another {entity.name}"
        )
    return ConstraintError(f"{entity.name}: {exc.diag.message_primary or exc}")
