"""Commands to owners (G9): a context that needs a change to a record it does not own asks
the owner, which alone decides and writes.

The charter declares each command on its entity (`commands: {ChangeEmail: {senders: […],
fields: […]}}`). A sender's `ctx.send("ChangeEmail", id=…, email=…, key=…)` checks the
arguments against the charter, puts the request on the bus (Bus.send_command) and waits for
the answer. The owner registers a handler (`@ctx.handles("ChangeEmail")`); its command
worker (`CommandWorker`, run by the Runner) takes the request from the bus and runs the
handler in one owner transaction, in which it also records the idempotency key with the
answer (charter_command): the change and the key commit together or not at all. A key
already recorded answers with what it answered the first time, so a retry or a second
delivery never applies twice. A refusal (ValidationError, ConflictError, …) is recorded
too, in a transaction of its own, unless another delivery recorded the key first: a key's
outcome is final, a refusal included (to try again after one, use a new key). A store or
bus failing is no outcome: the request stays on the bus and is handed out again.

On the wire, a request is JSON: ``{"command", "key", "sender", "id", "fields"}`` (fields in
canonical form, only those given); an answer ``{"ok": result}`` or ``{"refused":
"<ErrorType>", "message": …}``. A handler's result is JSON, or a Record, which travels as
its public fields and is a Record again at the sender.

A saga step (later) is a command with a compensation: it sends with a key of its own, so
resuming a saga after a crash sends each step again safely."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import orjson

from charter import errors, values
from charter.buses.base import Bus
from charter.errors import (
    BackendError,
    ConstraintError,
    Error,
    OwnershipError,
    ValidationError,
)
from charter.ids import uuid7
from charter.model import Charter, Command, Field, _hint
from charter.owner import Record, Transaction, record_from_row
from charter.records import CommandDelivery, RecordedCommand
from charter.stores.base import Store

DEFAULT_TIMEOUT_S = 10.0  # how long ctx.send waits for the owner's answer, unless told
WAIT_S = 0.05  # how long a command worker's step waits on the bus for a command

# The refusals a sender gets back as the same type (any other charter error: Error).
REFUSALS: dict[str, type[Error]] = {
    kind.__name__: kind
    for kind in (
        errors.ValidationError,
        errors.ConflictError,
        errors.ConstraintError,
        errors.NotFoundError,
        errors.OwnershipError,
        errors.SchemaChangeError,
        Error,
    )
}


class Request(Mapping[str, Any]):
    """A command as its handler sees it: its name, idempotency key, sender, the record's
    `id` (None when the command names none) and its fields, by name or as attributes."""

    __slots__ = ("fields", "id", "key", "name", "sender")

    def __init__(
        self, name: str, key: str, sender: str, id: str | None, fields: dict[str, Any]
    ) -> None:
        self.name, self.key, self.sender, self.id, self.fields = name, key, sender, id, fields

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(f"command {self.name} has no field '{name}'") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __repr__(self) -> str:
        fields = "".join(f", {k}={v!r}" for k, v in self.fields.items())
        return f"{self.name}(id={self.id!r}, key={self.key!r}, sender={self.sender!r}{fields})"


Handler = Callable[[Transaction, Request], Any]


def wake_key(owner: str) -> str:
    """The signal that wakes the command worker of `owner` in this process."""
    return f"commands:{owner}"


def declared(charter: Charter, name: str) -> Command:
    """The command `name`; a ValidationError with a hint when the charter has none."""
    spec = charter.commands.get(name)
    if spec is None:
        hint = _hint(name, tuple(charter.commands))
        known = ", ".join(charter.commands) or "none"
        raise ValidationError(
            f"no command '{name}' in the charter; " + (hint or f"its commands: {known}")
        )
    return spec


def handled_by(charter: Charter, context: str, name: str) -> Command:
    """The command `name`, which `context` must own the entity of to handle it."""
    spec = declared(charter, name)
    if spec.owner != context:
        owner = charter.contexts[spec.owner]
        raise OwnershipError(spec.entity, owner.name, owner.team, context, handling=name)
    return spec


# -- the sender's side --------------------------------------------------------------------


def request(
    charter: Charter,
    sender: str,
    name: str,
    key: str | None,
    entity_id: str | None,
    fields: Mapping[str, Any],
) -> tuple[Command, str, bytes]:
    """Check a command as `sender` sends it; (its declaration, its key, the request)."""
    spec = declared(charter, name)
    if sender not in spec.senders:
        own = (
            f", or, as {spec.entity}'s owner, change it in a transaction of its own"
            if sender == spec.owner
            else ""
        )
        raise ValidationError(
            f"context '{sender}' may not send {name} to '{spec.owner}' (its senders: "
            f"{', '.join(spec.senders)}); add '{sender}' to its senders in the charter{own}"
        )
    key = uuid7() if key is None else key
    if not isinstance(key, str) or not key.strip():
        raise ValidationError(f"a command's key must be a non-empty string, got {key!r}")
    if entity_id is not None and not isinstance(entity_id, str):
        raise ValidationError(f"{name}: id must be a record id (a string), got {entity_id!r}")
    unknown = set(fields) - set(spec.fields)
    if unknown:
        raise ValidationError(
            f"command {name} has no field {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(['id', *spec.fields])}"
        )
    given = {n: f.default for n, f in spec.fields.items() if f.default is not None}
    given.update(fields)
    for field in spec.fields.values():
        if field.required and given.get(field.name) is None:
            raise ValidationError(f"command {name}: {field.name} is required")
    canonical = {n: _encode(name, spec.fields[n], v) for n, v in given.items()}
    body = {"command": name, "key": key, "sender": sender, "id": entity_id, "fields": canonical}
    return spec, key, orjson.dumps(body)


def _encode(command: str, field: Field, value: Any) -> Any:
    if value is None:
        return None
    return values.ENCODERS[field.type](command, field, value)


def outcome(charter: Charter, spec: Command, key: str, answer: bytes) -> Any:
    """What the owner answered: its result, or its refusal raised as the same type."""
    try:
        doc = orjson.loads(answer)
        refused = doc.get("refused")
    except (orjson.JSONDecodeError, AttributeError):
        message = f"{spec.name} (key {key!r}): the answer of '{spec.owner}' is unreadable"
        raise Error(message) from None
    if refused is not None:
        kind = REFUSALS.get(str(refused), Error)
        error = kind.__new__(kind)
        Exception.__init__(error, str(doc.get("message", "")))
        error.add_note(f"refused by '{spec.owner}' for command {spec.name} (key {key!r})")
        raise error
    return _result(charter, doc.get("ok"))


def _result(charter: Charter, value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"record"}:
        doc = value["record"]
        entity = charter.entities.get(str(doc.get("entity")))
        if entity is not None:
            row = {"id": doc["id"], "version": doc["version"], **doc["values"]}
            return record_from_row(entity, row, entity.public_names)
    return value


# -- the owner's side ---------------------------------------------------------------------


def _ok(charter: Charter, result: Any) -> bytes:
    """The answer for a handler's result; a Record travels as its public fields."""
    if isinstance(result, Record):
        entity = charter.entities[result.entity]
        public = {
            n: values.encode(entity, entity.fields[n], result.get(n))
            for n in entity.public_names
            if n in result
        }
        result = {
            "record": {
                "entity": entity.name,
                "id": result.id,
                "version": result.version,
                "values": public,
            }
        }
    try:
        return orjson.dumps({"ok": result})
    except TypeError as exc:
        message = f"the handler's result cannot be sent back ({exc}): return JSON or a Record"
        raise Error(message) from None


def refusal(exc: Exception) -> bytes:
    """The answer for a refusal: a charter error by its type, anything else as Error."""
    if isinstance(exc, Error):
        kind = next(k for k in type(exc).__mro__ if k.__name__ in REFUSALS)
        message = str(exc).removesuffix(errors.ROLLED_BACK)  # the same on every store
        return orjson.dumps({"refused": kind.__name__, "message": message})
    return orjson.dumps(
        {"refused": "Error", "message": f"the handler failed: {type(exc).__name__}: {exc}"}
    )


def _decode(charter: Charter, body: bytes) -> tuple[Command, Request]:
    """A request from the bus, checked against this charter (the sender's may differ)."""
    try:
        doc = orjson.loads(body)
        name, key, sender = str(doc["command"]), str(doc["key"]), str(doc["sender"])
        entity_id, raw = doc.get("id"), doc.get("fields") or {}
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise ValidationError("not a command: " + repr(body[:200])) from None
    spec = declared(charter, name)
    if sender not in spec.senders:  # the memory and SQLite buses do not ask who sends
        raise ValidationError(f"context '{sender}' may not send {name} to '{spec.owner}'")
    unknown = set(raw) - set(spec.fields)
    if unknown:
        raise ValidationError(f"command {name} has no field {', '.join(sorted(unknown))}")
    fields = {n: values.decode(spec.fields[n], v) for n, v in raw.items()}
    return spec, Request(name, key, sender, entity_id, fields)


class CommandWorker:
    """Takes the commands for one owner context from the bus and handles each once per
    key, in an owner transaction of its store (the Runner runs one per context that has
    handlers). `transaction(actor)` is the context's own (ContextHandle.transaction)."""

    def __init__(
        self,
        context: str,
        charter: Charter,
        bus: Bus,
        store: Callable[[], Store],
        transaction: Callable[[str | None], AbstractContextManager[Transaction]],
        handlers: Mapping[str, Handler],
        batch: int = 100,
        wait: float = WAIT_S,
        concurrency: int = 1,
    ) -> None:
        self.context, self.charter, self.bus = context, charter, bus
        self._store, self._transaction = store, transaction
        self.handlers = dict(handlers)
        self.batch, self.wait = batch, wait
        # Up to this many commands handled at once, each in its own owner transaction;
        # commands naming one record are still handled one after another, in order.
        self.concurrency = max(1, concurrency)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def wake_key(self) -> str:
        return wake_key(self.context)

    def step(self) -> int:
        taken = self.bus.take_commands(self.context, self.batch, self.wait)
        if self.concurrency > 1 and len(taken) > 1:
            return self._step_at_once(taken)
        answers: list[tuple[CommandDelivery, bytes]] = []
        try:
            for part in self._parts(taken):
                answers.extend(self._handle_part(part))
        finally:  # what was handled is answered, also when the store fails on the next
            if answers:
                self.bus.answer_commands(self.context, answers)
        return len(taken)

    def _parts(self, taken: list[CommandDelivery]) -> Iterator[list[_Asked]]:
        """The deliveries in order, cut where the actor (sender and command) changes: each
        part is handled in one owner transaction, whose events name that actor."""
        part: list[_Asked] = []
        for command in taken:
            asked = self._asked(command)
            if part and (
                isinstance(asked, bytes)
                or isinstance(part[-1][1], bytes)
                or _actor(asked) != _actor(part[-1][1])
            ):
                yield part
                part = []
            part.append((command, asked))
        if part:
            yield part

    def _asked(self, command: CommandDelivery) -> tuple[Command, Request, Handler] | bytes:
        """What the delivery asks and the handler for it, or the refusal to answer (not
        recorded: not a command this worker can handle)."""
        try:
            spec, asked = _decode(self.charter, command.body)
            if spec.owner != self.context:
                raise ValidationError(f"{spec.name} is for '{spec.owner}', not '{self.context}'")
            handler = self.handlers.get(spec.name)
            if handler is None:
                raise Error(f"'{self.context}' has no handler for {spec.name} running")
        except Error as exc:
            return refusal(exc)
        return spec, asked, handler

    def _handle_part(self, part: list[_Asked]) -> list[tuple[CommandDelivery, bytes]]:
        """Several commands of one actor in one owner transaction, each in a savepoint with
        its key (a refusal undoes its own changes and is recorded in their place): one
        commit for them all. When that transaction cannot commit (another process
        recorded one of the keys meanwhile), each is handled on its own."""
        if len(part) == 1 or isinstance(part[0][1], bytes):
            return [(command, self.handle(command)) for command, _ in part]
        items = [(command, asked) for command, asked in part if not isinstance(asked, bytes)]
        try:
            return self._together(items)
        except BackendError:
            raise
        except Exception:
            return [(command, self.handle(command)) for command, _ in items]

    def _together(
        self, items: list[tuple[CommandDelivery, tuple[Command, Request, Handler]]]
    ) -> list[tuple[CommandDelivery, bytes]]:
        answers: list[tuple[CommandDelivery, bytes]] = []
        with self._transaction(_actor(items[0][1])) as tx:
            for command, (spec, asked, handler) in items:
                done = tx._recorded_command(asked.key)
                if done is not None:  # a retry, a second delivery (also in this part)
                    answers.append((command, _again(done, spec.name)))
                    continue
                try:
                    with tx.savepoint():
                        answer = _ok(self.charter, handler(tx, asked))
                        recorded = RecordedCommand(asked.key, spec.name, answer, values.now_text())
                        tx._record_command(recorded)
                except BackendError:
                    raise
                except Exception as exc:
                    answer = refusal(exc)
                    tx._record_command(
                        RecordedCommand(asked.key, spec.name, answer, values.now_text())
                    )
                answers.append((command, answer))
        return answers

    def _step_at_once(self, taken: list[CommandDelivery]) -> int:
        """The deliveries dealt into `concurrency` shares, one record's always to the same
        share and in order, each share handled as step() handles a batch (one owner
        transaction per run of one actor) in the worker's threads; every one handled is
        answered, then the first store failure raised."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, f"charter:commands:{self.context}")
        shares: list[list[CommandDelivery]] = [[] for _ in range(self.concurrency)]
        for number, command in enumerate(taken):
            record = _record_of(command.body)
            share = number if record is None else zlib.crc32(record.encode())
            shares[share % self.concurrency].append(command)

        def handle_share(share: list[CommandDelivery]) -> tuple[list[Answered], Exception | None]:
            answers: list[Answered] = []
            try:
                for part in self._parts(share):
                    answers.extend(self._handle_part(part))
            except Exception as exc:  # what it handled before is answered all the same
                return answers, exc
            return answers, None

        answers: list[Answered] = []
        failed: list[Exception] = []
        for future in [self._pool.submit(handle_share, share) for share in shares if share]:
            done, exc = future.result()
            answers.extend(done)
            if exc is not None:
                failed.append(exc)
        if answers:
            self.bus.answer_commands(self.context, answers)
        if failed:
            raise failed[0]
        return len(taken)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def handle(self, command: CommandDelivery) -> bytes:
        """The answer to one delivery. Raises (and so leaves the command on the bus, to be
        handed out again) only when the store fails."""
        checked = self._asked(command)
        if isinstance(checked, bytes):  # not a command it can handle: said, not recorded
            return checked
        spec, asked, handler = checked
        try:
            with self._transaction(_actor(checked)) as tx:
                done = tx._recorded_command(asked.key)
                if done is not None:  # a retry, or a second delivery: not again
                    return _again(done, spec.name)
                answer = _ok(self.charter, handler(tx, asked))
                tx._record_command(RecordedCommand(asked.key, spec.name, answer, values.now_text()))
            return answer
        except BackendError:
            raise
        except Exception as exc:
            return self._refused(asked.key, spec.name, exc)

    def _refused(self, key: str, name: str, exc: Exception) -> bytes:
        """Record a refusal as the key's outcome, unless another delivery recorded one first
        (the same key handled at once elsewhere): then that one is the answer."""
        answer = refusal(exc)
        for _ in range(3):
            try:
                with self._store().transaction() as writes:
                    done = writes.command(key)
                    if done is not None:
                        return _again(done, name)
                    writes.record_command(RecordedCommand(key, name, answer, values.now_text()))
                return answer
            except ConstraintError:
                continue  # recorded meanwhile: read it
        return answer


_Asked = tuple[CommandDelivery, "tuple[Command, Request, Handler] | bytes"]
Answered = tuple[CommandDelivery, bytes]  # a delivery and the answer to send for it


def _actor(asked: tuple[Command, Request, Handler] | bytes) -> str:
    """Who a command's changes are by, in the owner's history: its sender and its name."""
    assert not isinstance(asked, bytes)
    return f"{asked[1].sender}/{asked[0].name}"


def _record_of(body: bytes) -> str | None:
    """The record a request names (its `id`), to keep one record's commands in order
    (None: it names none, or cannot be read, and its handling says so)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = doc.get("id") if isinstance(doc, dict) else None
    return found if isinstance(found, str) else None


def _again(done: RecordedCommand, name: str) -> bytes:
    """The answer for a key handled before: its outcome then; a refusal when the key was
    used for another command."""
    if done.name != name:
        return refusal(
            ValidationError(f"key {done.key!r} was used for {done.name} already: use a new key")
        )
    return done.result
