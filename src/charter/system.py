"""The running system as an application sees it: a loaded charter, each
context's store, the bus. The front door of the Python API."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, overload

from charter import commands, errors, lag, model, tokens, values
from charter.buses import Bus, open_bus
from charter.errors import (
    CommandTimeoutError,
    ConflictError,
    ConstraintError,
    Error,
    StaleReadError,
    ValidationError,
)
from charter.model import Charter, Copy, _hint
from charter.owner import (
    FromRecord,
    Record,
    Transaction,
    convert,
    owned_entity,
    record_from_row,
    restated,
)
from charter.signals import Signals
from charter.stores import Store, open_store

M = TypeVar("M")
H = TypeVar("H", bound=commands.Handler)


class System:
    """A charter brought to life. Opens stores and the bus on first use; close() when done."""

    def __init__(self, charter: Charter) -> None:
        self.charter = charter
        self.signals = Signals()
        self._stores: dict[str, Store] = {}
        self._bus: Bus | None = None
        self._lock = threading.Lock()
        # context -> command -> handler (ContextHandle.handles); a Runner serves them
        self.handlers: dict[str, dict[str, commands.Handler]] = {}
        # context -> saga name -> charter.sagas.Saga (Saga.register); a Runner orchestrates them
        self.sagas: dict[str, dict[str, Any]] = {}

    @classmethod
    def load(cls, path: str | Path = "charter.yaml") -> System:
        return cls(model.load(path))

    def context(self, name: str) -> ContextHandle:
        if name not in self.charter.contexts:
            hint = _hint(name, tuple(self.charter.contexts))
            raise ValidationError(
                f"no context '{name}' in the charter; "
                + (hint or f"its contexts: {', '.join(self.charter.contexts)}")
            )
        return ContextHandle(self, name)

    def store(self, context: str) -> Store:
        with self._lock:
            store = self._stores.get(context)
            if store is None:
                store = open_store(self.charter.contexts[context].store, context)
                try:
                    store.prepare(self.charter, context)
                except BaseException:
                    store.close()  # its connections too: another try opens a new one
                    raise
                self._stores[context] = store
            return store

    @property
    def bus(self) -> Bus:
        with self._lock:
            if self._bus is None:
                self._bus = open_bus(self.charter.bus, self.charter.name, self.charter)
            return self._bus

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()
            if self._bus is not None:
                self._bus.close()
                self._bus = None

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: str | Path = "charter.yaml") -> System:
    """Load a charter file and return the system it describes."""
    return System.load(path)


class ContextHandle:
    """One context: write what it owns, read the copies it keeps."""

    def __init__(self, system: System, name: str) -> None:
        self.system, self.name = system, name
        self.spec = system.charter.contexts[name]

    @contextmanager
    def transaction(self, actor: str | None = None) -> Iterator[Transaction]:
        """One local transaction: the changes and their events commit together, or neither.
        `actor` (who makes the change) is kept in the owner's history and in each event.
        A refused change fails it all, even if caught: see Transaction.savepoint."""
        if actor is not None and (not isinstance(actor, str) or not actor.strip()):
            raise ValidationError(f"actor must be a non-empty string, got {actor!r}")
        store = self.system.store(self.name)
        committing = False
        try:
            with store.transaction() as writes:
                tx = Transaction(self.system.charter, self.name, writes, actor)
                yield tx
                tx._check_refusals()
                events = tx._commit_events()
                committing = True
        except (ConstraintError, ConflictError) as exc:
            if not committing:
                raise
            # a store that sends its changes at commit refuses them there (PostgreSQL)
            message = f"{exc}{errors.ROLLED_BACK}"
            raise restated(exc, message) from None
        tx._committed()
        if events:
            self.system.signals.notify(f"outbox:{self.name}")

    @overload
    def get(self, entity: str, entity_id: str) -> Record | None: ...
    @overload
    def get(self, entity: str, entity_id: str, as_: FromRecord[M]) -> M | None: ...
    def get(self, entity: str, entity_id: str, as_: FromRecord[Any] | None = None) -> Any:
        """Read one record this context owns (`as_`: as a type charter codegen wrote)."""
        spec = owned_entity(self.system.charter, self.name, entity)
        row = self.system.store(self.name).fetch(spec, entity_id)
        record = record_from_row(spec, row) if row else None
        return record if record is None or as_ is None else convert(record, as_)

    def filter(self, entity: str, **fields: Any) -> list[Record]:
        """Records this context owns whose fields equal the given values (e.g. email=…)."""
        spec = owned_entity(self.system.charter, self.name, entity)
        unknown = set(fields) - set(spec.fields)
        if unknown:
            raise ValidationError(
                f"{entity} has no field {', '.join(sorted(unknown))}; "
                f"its fields are {', '.join(spec.fields)}"
            )
        checked = values.check_changes(spec, fields)
        rows = self.system.store(self.name).rows(spec, checked)
        return [record_from_row(spec, row) for row in rows]

    def send(
        self,
        command: str,
        /,
        *,
        key: str | None = None,
        timeout: float = commands.DEFAULT_TIMEOUT_S,
        **fields: Any,
    ) -> Any:
        """Ask the owner to do `command` (charter.commands), e.g. send("ChangeEmail",
        id=…, email=…): its handler's result, or its refusal raised as the same error.
        Applied at most once per `key` (default: a new one); a CommandTimeoutError says it
        may still be applied, and sending it again with the same key is safe."""
        entity_id = fields.pop("id", None)
        charter = self.system.charter
        spec, key, body = commands.request(charter, self.name, command, key, entity_id, fields)
        try:
            answer = self.system.bus.send_command(self.name, spec.owner, command, key, body)
        except Error as exc:
            exc.add_note(f"{command} may have reached the bus: send it again with key={key!r}")
            raise
        self.system.signals.notify(commands.wake_key(spec.owner))
        got = answer(timeout)
        if got is None:
            raise CommandTimeoutError(command, spec.owner, key, timeout)
        return commands.outcome(charter, spec, key, got)

    def handles(self, command: str) -> Callable[[H], H]:
        """Register the handler of `command`, which this context must own the entity of:
        `@ctx.handles("ChangeEmail") def change_email(tx, cmd): …`. It runs in an owner
        transaction (`tx`), once per key, in a Runner of this system started after."""
        commands.handled_by(self.system.charter, self.name, command)

        def register(handler: H) -> H:
            self.system.handlers.setdefault(self.name, {})[command] = handler
            return handler

        return register

    def copy(self, name: str) -> CopyReader:
        copy = self.system.charter.copies.get(name)
        if copy is None or copy.context != self.name:
            mine = tuple(c.name for c in self.system.charter.copies_in(self.name))
            hint = _hint(name, mine)
            raise ValidationError(
                f"context '{self.name}' keeps no copy '{name}'"
                + (f"; {hint}" if hint else f" (it keeps: {', '.join(mine) or 'none'})")
            )
        return CopyReader(self.system, copy)


class CopyReader:
    """A read-only copy: get, filter, iterate. Rows carry their version and synced_at.
    `wait_for` reads your own writes: it waits until the copy holds a change."""

    def __init__(self, system: System, copy: Copy) -> None:
        self.spec = copy
        self._system = system
        self._entity = system.charter.entities[copy.of]
        self._store = system.store(copy.context)

    def wait_for(self, token: str | tokens.Token, timeout: float | None = None) -> Record | None:
        """Wait until this copy holds the change `token` names (a committed record's
        `.token`, or one of `tx.tokens`): that version of the record or a newer one, or its
        delete. Returns the record as the copy holds it then (None: deleted). After
        `timeout` seconds (default: the copy's window) raises StaleReadError, naming the
        copy, how far behind its owner it is and its window. Whichever process applies the
        change wakes the wait (on SQLite another process's apply is noticed by asking the
        file, cheaply: charter.stores.waiting)."""
        wanted = tokens.parse(token)
        if wanted.entity != self.spec.of:
            raise ValidationError(
                f"token {wanted} is for {wanted.entity}; copy '{self.spec.name}' is of "
                f"{self.spec.of}: wait on a copy of {wanted.entity}"
            )
        wait = self.spec.window_s if timeout is None else timeout
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
            raise ValidationError(f"timeout must be a number of seconds (0 or more), got {wait!r}")
        held = self._store.wait_applied(self.spec, wanted.id, wanted.version, float(wait))
        if held < wanted.version:
            raise self._stale(wanted, held, float(wait))
        return self.get(wanted.id)

    def _stale(self, wanted: tokens.Token, held: int, waited: float) -> StaleReadError:
        """What a wait that ran out of time says: the copy, what it holds, its lag (as
        `charter status` measures it) and its window."""
        copy, system = self.spec, self._system
        owner = system.charter.entities[copy.of].owner
        with system._lock:  # the owner's store only if this process has it open already
            owner_store = system._stores.get(owner)
        try:
            measured: lag.Lag | None = lag.measure(
                copy, system.charter.entities[copy.of], self._store, owner_store, system.bus
            )
        except Error as exc:
            measured, why = None, str(exc).splitlines()[0]
        has = f"it holds version {held}" if held else "it holds no version of it"
        if measured is None:
            behind = f"how far behind its owner it is could not be measured ({why})"
        else:
            behind = (
                f"it is {measured.events} event{'s' if measured.events != 1 else ''} and "
                f"{measured.seconds:.3g} s behind its owner '{owner}'"
                + ("" if owner_store is not None else " on the bus")
            )
        ask = "Is a projector running for it?"
        if measured is not None and measured.events == 0 and owner_store is None:
            # nothing waits on the bus: the change is still in its owner's outbox
            ask = f"Is the relay of '{owner}' running (`charter run --context {owner}`)?"
        return StaleReadError(
            f"copy '{copy.name}' (in {copy.context}) does not hold {wanted.entity} "
            f"{wanted.id} version {wanted.version} after {waited:.3g} s: {has}; {behind} "
            f"(its window: {copy.window_s:g} s). {ask} (`charter status`)",
            copy=copy.name,
            token=str(wanted),
            held=held,
            lag_events=measured.events if measured else None,
            lag_s=round(measured.seconds, 3) if measured else None,
            window_s=copy.window_s,
            waited_s=waited,
        )

    @overload
    def get(self, entity_id: str) -> Record | None: ...
    @overload
    def get(self, entity_id: str, as_: FromRecord[M]) -> M | None: ...
    def get(self, entity_id: str, as_: FromRecord[Any] | None = None) -> Any:
        """One row (`as_`: as the type charter codegen wrote for this copy)."""
        for row in self._store.copy_rows(self.spec, {"id": entity_id}):
            return self._as(record_from_row(self._entity, row, self.spec.fields), as_)
        return None

    @overload
    def filter(self, *, as_: FromRecord[M], **fields: Any) -> list[M]: ...
    @overload
    def filter(self, **fields: Any) -> list[Record]: ...
    def filter(self, *, as_: FromRecord[Any] | None = None, **fields: Any) -> list[Any]:
        unknown = set(fields) - set(self.spec.fields)
        if unknown:
            raise ValidationError(
                f"copy '{self.spec.name}' has no field {', '.join(sorted(unknown))}; "
                f"it keeps {', '.join(self.spec.fields)}"
            )
        return [
            self._as(record_from_row(self._entity, row, self.spec.fields), as_)
            for row in self._store.copy_rows(self.spec, fields)
        ]

    def __iter__(self) -> Iterator[Record]:
        for row in self._store.copy_rows(self.spec):
            yield record_from_row(self._entity, row, self.spec.fields)

    def iter(self, as_: FromRecord[M]) -> Iterator[M]:
        """Every row, as the type charter codegen wrote for this copy."""
        return (self._as(record, as_) for record in self)

    def _as(self, record: Record, as_: FromRecord[Any] | None) -> Any:
        return record if as_ is None else convert(record, as_, self.spec.name)

    def __len__(self) -> int:
        return sum(1 for _ in self._store.copy_rows(self.spec))
