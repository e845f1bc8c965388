"""The running system as an application sees it: a loaded charter, each
context's store, the bus. The front door of the Python API."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from charter import commands, model, values
from charter.buses import Bus, open_bus
from charter.errors import (
    CommandTimeoutError,
    ConflictError,
    ConstraintError,
    Error,
    ValidationError,
)
from charter.model import Charter, Copy, _hint
from charter.owner import Record, Transaction, owned_entity, record_from_row, restated
from charter.signals import Signals
from charter.stores import Store, open_store

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

    @classmethod
    def load(cls, path: str | Path = "charter.yaml") -> System:
        return cls(model.load(path))

    def context(self, name: str) -> ContextHandle:
        if name not in self.charter.contexts:
            hint = _hint(name, tuple(self.charter.contexts))
            raise ValidationError(
                f"no context '{name}' in the charter" + (f"; {hint}" if hint else "")
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
            message = f"{exc}; the transaction was rolled back and nothing was committed"
            raise restated(exc, message) from None
        if events:
            self.system.signals.notify(f"outbox:{self.name}")

    def get(self, entity: str, entity_id: str) -> Record | None:
        """Read one record this context owns."""
        spec = owned_entity(self.system.charter, self.name, entity)
        row = self.system.store(self.name).fetch(spec, entity_id)
        return record_from_row(spec, row) if row else None

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
    """A read-only copy: get, filter, iterate. Rows carry their version and synced_at."""

    def __init__(self, system: System, copy: Copy) -> None:
        self.spec = copy
        self._entity = system.charter.entities[copy.of]
        self._store = system.store(copy.context)

    def get(self, entity_id: str) -> Record | None:
        for row in self._store.copy_rows(self.spec, {"id": entity_id}):
            return record_from_row(self._entity, row, self.spec.fields)
        return None

    def filter(self, **fields: Any) -> list[Record]:
        unknown = set(fields) - set(self.spec.fields)
        if unknown:
            raise ValidationError(
                f"copy '{self.spec.name}' has no field {', '.join(sorted(unknown))}; "
                f"it keeps {', '.join(self.spec.fields)}"
            )
        return [
            record_from_row(self._entity, row, self.spec.fields)
            for row in self._store.copy_rows(self.spec, fields)
        ]

    def __iter__(self) -> Iterator[Record]:
        for row in self._store.copy_rows(self.spec):
            yield record_from_row(self._entity, row, self.spec.fields)

    def __len__(self) -> int:
        return sum(1 for _ in self._store.copy_rows(self.spec))
