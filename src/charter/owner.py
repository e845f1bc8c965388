"""Writes by the owner: ids, versions, validation, invariants, and the event of
every change written to the outbox in the same transaction (G1, G2)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from charter import tracing, values
from charter.errors import ConflictError, Error, NotFoundError, OwnershipError, ValidationError
from charter.events import Event
from charter.ids import uuid7
from charter.model import Charter, Entity, Field, _hint
from charter.records import RecordedCommand, Row
from charter.stores.base import OwnerWrites
from charter.tokens import token


class Record(Mapping[str, Any]):
    """One record as its reader sees it: id, version, its fields (and for a copy, synced_at)."""

    __slots__ = ("_values", "entity", "id", "synced_at", "version")

    def __init__(
        self,
        entity: str,
        id: str,
        version: int,
        values: dict[str, Any],
        synced_at: Any = None,
    ) -> None:
        self.entity, self.id, self.version = entity, id, version
        self._values, self.synced_at = values, synced_at

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self.entity} has no field '{name}'") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def token(self) -> str:
        """This version of this record, as a read-your-writes token (charter.tokens): hand
        it to a reader, who waits with `copy.wait_for(token)` until a copy holds it. It
        means something once the transaction that made the version has committed. (A field
        named `token` is read as `record["token"]`.)"""
        return token(self.entity, self.id, self.version)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{self.entity}(id={self.id!r}, version={self.version}, {fields})"


M = TypeVar("M", covariant=True)


class FromRecord(Protocol[M]):
    """What a reader may return instead of a Record: a class with `from_record`, as
    `charter codegen` writes (`reader.get(id, as_=OrderCustomers)`). Its `ENTITY` (and a
    copy's `COPY`) name what it describes, so a type is not used to read another's."""

    def from_record(self, record: Record, /) -> M: ...


def convert(record: Record, as_: FromRecord[M], copy: str | None = None) -> M:
    """`record` as the type `as_`, which must describe its entity (and copy)."""
    for kind, name in (("ENTITY", record.entity), ("COPY", copy)):
        described = getattr(as_, kind, name)
        if name is not None and described != name:
            what = f"copy '{copy}'" if kind == "COPY" else f"entity {record.entity}"
            raise ValidationError(
                f"{getattr(as_, '__name__', as_)!s} describes {kind.lower()} "
                f"{described!r}, not the {what} read here"
            )
    return as_.from_record(record)


def record_from_row(entity: Entity, row: Row, fields: tuple[str, ...] | None = None) -> Record:
    names = fields if fields is not None else tuple(entity.fields)
    decoded = {name: values.decode(entity.fields[name], row[name]) for name in names}
    synced = row.get("synced_at")
    return Record(
        entity.name,
        row["id"],
        row["version"],
        decoded,
        values.decode(_SYNCED, synced) if synced else None,
    )


def owned_entity(charter: Charter, context: str, name: str) -> Entity:
    """The entity `context` owns by that name; OwnershipError if another context owns it."""
    entity = charter.entities.get(name)
    if entity is None:
        hint = _hint(name, tuple(charter.entities))
        raise ValidationError(f"no entity '{name}' in the charter" + (f"; {hint}" if hint else ""))
    if context not in entity.owners:
        owner = charter.contexts[entity.owner]
        instead = tuple(n for n, c in entity.commands.items() if context in c.senders)
        raise OwnershipError(entity.name, owner.name, owner.team, context, instead)
    return entity


def held(charter: Charter, context: str, entity: Entity, entity_id: str) -> int:
    """The epoch at which `context` owns the record `entity_id`; OwnershipError naming the
    record's owner when, since a partition of the entity moved, another context owns it."""
    owner, epoch = entity.holder(entity_id)
    if owner != context:
        team = charter.contexts[owner].team
        raise OwnershipError(entity.name, owner, team, context)
    return epoch


def new_id(entity: Entity, context: str) -> str:
    """A fresh id, of a partition `context` owns (a partition of the entity moved)."""
    if not entity.moves or not entity.partitioned:
        return uuid7()
    for _ in range(10_000):
        made = uuid7()
        if entity.holder(made)[0] == context:
            return made
    raise OwnershipError(entity.name, entity.owner, "", context)  # owns none: unreachable


@dataclass(slots=True)
class _Change:
    entity: Entity
    entity_id: str
    version: int
    op: str
    changed: tuple[str, ...]
    state: dict[str, Any] | None
    private: tuple[str, ...] = ()  # private fields it set: names for the history, never sent
    epoch: int = 1  # the owner's epoch for the record (G10)


class Transaction:
    """What an owner may do inside one transaction of its own store.

    A change that is refused (it raises) fails the whole transaction, even when the caller
    catches the error and goes on: every store behaves the same, whether it refuses at once
    (SQLite) or when the changes reach the database (PostgreSQL queues them). To catch a
    refusal and go on, make the change inside `with tx.savepoint():`."""

    def __init__(
        self, charter: Charter, context: str, writes: OwnerWrites, actor: str | None = None
    ) -> None:
        self._charter, self._context, self._writes = charter, context, writes
        self._changes: list[_Change] = []
        self._refused: tuple[str, Exception] | None = None  # the first, and what it was
        self._actor = actor
        self._tokens: list[str] | None = None  # once committed
        self._made: list[str] = []  # the tokens of what _commit_events wrote

    @property
    def tokens(self) -> list[str]:
        """After the transaction committed: a read-your-writes token (charter.tokens) for
        each record it changed, at the version it left it (a delete's too), in the order
        they were first changed. Read it after the `with` block: before the commit it
        raises, since a token names a change that may still be rolled back."""
        if self._tokens is None:
            raise Error(
                "the transaction has not committed: its tokens are valid only after it "
                "commits (read tx.tokens after the `with` block)"
            )
        return list(self._tokens)

    def _owned(self, name: str) -> Entity:
        return owned_entity(self._charter, self._context, name)

    def create(self, entity_name: str, /, **fields: Any) -> Record:
        """A new record with a fresh time-ordered id, at version 1."""
        try:
            entity = self._owned(entity_name)
            row: dict[str, Any] = {"id": new_id(entity, self._context), "version": 1}
            row.update(values.check_new(entity, fields))
            _check_ranges(entity, row)
            self._writes.insert(entity, row)
        except Exception as exc:
            self._refuse(f"create {entity_name}", exc)
            raise
        public = _public(entity, row)
        private = tuple(n for n, f in entity.fields.items() if f.private and row[n] is not None)
        epoch = held(self._charter, self._context, entity, row["id"]) if entity.moves else 1
        self._changes.append(
            _Change(entity, row["id"], 1, "created", tuple(public), public, private, epoch)
        )
        return record_from_row(entity, row)

    def update(
        self,
        entity_name: str,
        entity_id: str,
        /,
        *,
        expected_version: int | None = None,
        **fields: Any,
    ) -> Record:
        """Change some fields. With expected_version, refuse if someone changed it first."""
        try:
            entity = self._owned(entity_name)
            epoch = held(self._charter, self._context, entity, entity_id) if entity.moves else 1
            changes = values.check_changes(entity, fields)
            current = self._current(entity, entity_id, expected_version)
            changed = [name for name, value in changes.items() if current[name] != value]
            if not changed:
                return record_from_row(entity, current)
            row = dict(current)
            row.update(changes)
            row["version"] = current["version"] + 1
            _check_ranges(entity, row)
            if not self._writes.update(entity, entity_id, current["version"], row):
                raise ConflictError(f"{entity.name} {entity_id} changed while being updated")
        except Exception as exc:
            self._refuse(f"update of {entity_name} {entity_id}", exc)
            raise
        public = _public(entity, row)
        visible = tuple(name for name in changed if name in public)
        # A change of private fields only still makes a version (and an event without their
        # names or values), so every copy's version follows the owner's.
        private = tuple(name for name in changed if name not in public)
        self._changes.append(
            _Change(entity, entity_id, row["version"], "updated", visible, public, private, epoch)
        )
        return record_from_row(entity, row)

    def delete(
        self, entity_name: str, entity_id: str, /, *, expected_version: int | None = None
    ) -> str:
        """Delete the record; returns the token of the version that deletes it (a copy has
        the delete once it no longer holds the record: `copy.wait_for(token)`)."""
        try:
            entity = self._owned(entity_name)
            epoch = held(self._charter, self._context, entity, entity_id) if entity.moves else 1
            current = self._current(entity, entity_id, expected_version)
            if not self._writes.delete(entity, entity_id, current["version"]):
                raise ConflictError(f"{entity.name} {entity_id} changed while being deleted")
        except Exception as exc:
            self._refuse(f"delete of {entity_name} {entity_id}", exc)
            raise
        self._changes.append(
            _Change(entity, entity_id, current["version"] + 1, "deleted", (), None, (), epoch)
        )
        return token(entity.name, entity_id, current["version"] + 1)

    def get(self, entity_name: str, entity_id: str) -> Record | None:
        entity = self._owned(entity_name)
        row = self._writes.fetch(entity, entity_id)
        return record_from_row(entity, row) if row else None

    def _recorded_command(self, key: str) -> RecordedCommand | None:
        """The command handled under `key` (charter.commands), if one was."""
        return self._writes.command(key)

    def _record_command(self, command: RecordedCommand) -> None:
        """Record a handled command in this transaction: it commits with the changes."""
        self._writes.record_command(command)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the transaction that can fail alone: when a change inside it is
        refused, its changes (rows and events) are undone, the refusal is raised from the
        block (at the latest from its exit, where a store that queues changes sends and
        checks them), and the transaction may go on and commit the rest. A refusal caught
        inside the block fails the savepoint at its exit, as it would the transaction."""
        mark, before = len(self._changes), self._refused
        point = self._writes.savepoint()
        try:
            point.__enter__()
        except Exception as exc:  # a change queued before it, refused as it was sent
            self._refuse("a change before the savepoint", exc)
            raise
        try:
            yield
            if self._refused is not before:
                raise self._rolled_back("savepoint", "nothing in it was kept")
        except BaseException as exc:
            del self._changes[mark:]
            self._refused = before
            point.__exit__(type(exc), exc, exc.__traceback__)
            raise
        try:
            point.__exit__(None, None, None)
        except BaseException:
            del self._changes[mark:]
            self._refused = before
            raise

    def _refuse(self, what: str, exc: Exception) -> None:
        if self._refused is None:
            self._refused = (what, exc)

    def _rolled_back(self, scope: str, outcome: str) -> Exception:
        """The error for a scope that cannot commit: a change in it was refused."""
        assert self._refused is not None
        what, exc = self._refused
        return restated(
            exc,
            f"the {scope} was rolled back and {outcome}: {what} was refused ({exc}). "
            "To catch a refusal and go on, make the change inside `with tx.savepoint():`",
        )

    def _check_refusals(self) -> None:
        """Raise, so nothing commits, if a change was refused and the caller went on."""
        if self._refused is not None:
            raise self._rolled_back("transaction", "nothing was committed")

    def _current(self, entity: Entity, entity_id: str, expected: int | None) -> Row:
        row = self._writes.fetch(entity, entity_id)
        if row is None:
            raise NotFoundError(f"no {entity.name} with id {entity_id}")
        if expected is not None and row["version"] != expected:
            raise ConflictError(
                f"{entity.name} {entity_id} is at version {row['version']}, "
                f"not the expected {expected}: someone changed it first; read it again"
            )
        return row

    def _commit_events(self) -> list[Event]:
        """The events of this transaction, stamped with one commit time, into the outbox."""
        if not self._changes:
            return []
        time = values.now_text()
        owner = self._context
        parent, state = tracing.current()  # the trace this change is part of, if any
        events = [
            Event(
                uuid7(),
                c.entity.name,
                c.entity_id,
                c.version,
                c.op,
                c.changed,
                c.state,
                owner,
                time,
                self._actor,
                parent,
                state,
                c.epoch,
            )
            for c in self._changes
        ]
        private = [c.private for c in self._changes]
        self._writes.append(events, [e.encode() for e in events], private if any(private) else ())
        newest = {(c.entity.name, c.entity_id): c.version for c in self._changes}
        self._made = [token(entity, entity_id, v) for (entity, entity_id), v in newest.items()]
        self._changes.clear()
        return events

    def _committed(self) -> None:
        """The store committed what _commit_events wrote: its tokens are valid now."""
        self._tokens, self._made = self._made, []


_SYNCED = Field("synced_at", "timestamp")


def restated(exc: Exception, message: str) -> Exception:
    """The same kind of error (so `except ConstraintError` catches it on every store), with
    a message that says more; a foreign error becomes a charter.Error."""
    kind = type(exc) if isinstance(exc, Error) else Error
    new = kind.__new__(kind)
    Exception.__init__(new, message)
    new.__dict__.update(getattr(exc, "__dict__", {}))
    new.__cause__ = exc
    return new


def _public(entity: Entity, row: Row) -> dict[str, Any]:
    return {name: row[name] for name in entity.public_names}


def _check_ranges(entity: Entity, row: Row) -> None:
    for rule in entity.constraints:
        start, end = row.get(rule.start), row.get(rule.end)
        if start is not None and end is not None and not start < end:
            raise ValidationError(
                f"{entity.name}: {rule.start} ({start}) must be before {rule.end} ({end})"
            )
