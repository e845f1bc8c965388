"""Commands in the simulated world (G9): senders ask owners, sometimes again under the same
key (a retry, perhaps after the bus forgot the answer), and owners' command workers take
them, crashing anywhere the world decides.

What a key changed is credited to the model once, when the owner's store has recorded the
key with an answer that is no refusal; so a command applied twice shows as an event its
owner did not commit (the checker's outbox check, G2), and a key that answers differently
the second time it is asked shows here. A command sent on purpose to be refused must be
refused; a context that may not send a command must be refused before anything is sent;
and after quiet, no command may still wait on the bus.

Its choices come from a generator of its own (salted by the seed), so that a seed without
commands runs exactly as it did before they existed."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from charter import commands
from charter.buses.memory import MemoryBus
from charter.commands import CommandWorker, Request
from charter.errors import Error, NotFoundError, ValidationError
from charter.ids import uuid7
from charter.model import Charter, Command
from charter.owner import Transaction
from charter.sim import workload
from charter.sim.checker import Change, Checker, Model
from charter.sim.world import Crash, World
from charter.stores.memory import MemoryStore
from charter.system import System

SHARE = 0.25  # of a commanding world's steps, those that send or handle a command


@dataclass
class _Sent:
    command: Command
    sender: str
    entity_id: str | None
    fields: dict[str, Any]
    answer: Callable[[float], bytes | None]  # the bus's wait for the key's answer


class Commands:
    """The senders and the owners' command workers of one simulated run."""

    def __init__(self, world: World, model: Model, checker: Checker, seed: int) -> None:
        self.world, self.model, self.checker = world, model, checker
        self.rng = random.Random(f"commands:{seed}")
        self.sent: dict[str, _Sent] = {}
        self.answers: dict[str, bytes] = {}  # each key's first answer seen
        self.credited: set[str] = set()  # keys whose change the model holds
        self.workers: dict[str, CommandWorker | None] = {}
        self._made: dict[str, Change | None] = {}  # key → its handler's change, this step
        self.charter: Charter | None = None
        self.system: System | None = None

    def open(self, charter: Charter, system: System) -> None:
        """Every process starts again (the world's start, or a deployment)."""
        self.charter, self.system = charter, system
        owners = {c.owner for c in charter.commands.values()}
        self.workers = dict.fromkeys(sorted(owners))

    def act(self) -> bool:
        """Perhaps send or handle a command at this step; False when it did neither."""
        if not self.workers or self.rng.random() >= SHARE:
            return False
        if self.rng.random() < 0.6:
            self._send()
        else:
            self._step(self.rng.choice(list(self.workers)))
        return True

    # -- senders ------------------------------------------------------------------------

    def _send(self) -> None:
        assert self.charter is not None and self.system is not None
        rng, charter = self.rng, self.charter
        if self.sent and rng.random() < 0.3:  # a retry: the same key, the same request
            key = rng.choice(sorted(self.sent))
            sent = self.sent[key]
            spec, sender, entity_id, fields = sent.command, sent.sender, sent.entity_id, sent.fields
        else:
            spec = charter.commands[rng.choice(sorted(charter.commands))]
            key, sender = f"key-{len(self.sent) + 1}", rng.choice(spec.senders)
            live = self.model.live(spec.entity)
            entity_id = rng.choice(live) if live and rng.random() < 0.9 else uuid7()
            fields = self._fields(spec)
            if rng.random() < 0.05:
                self._not_a_sender(spec, entity_id, fields)
        _, key, body = commands.request(charter, sender, spec.name, key, entity_id, fields)
        try:
            answer = self.system.bus.send_command(sender, spec.owner, spec.name, key, body)
        except Crash as crash:
            self.world.note(f"{sender} crashed sending {spec.name} {key} at {crash}")
            return
        self.sent[key] = _Sent(spec, sender, entity_id, fields, answer)
        self.world.note(f"{sender} sent {spec.name} {key} for {str(entity_id)[-6:]}")

    def _fields(self, spec: Command) -> dict[str, Any]:
        assert self.charter is not None
        entity = self.charter.entities[spec.entity]
        changed = workload.changes(self.rng, entity)
        fields = {n: v for n, v in changed.items() if n in spec.fields}
        for name, field in spec.fields.items():
            if name not in fields and name in entity.fields and field.required:
                fields[name] = workload.value(self.rng, field, "")
        if "refuse" in spec.fields:
            fields["refuse"] = self.rng.random() < 0.15
        return fields

    def _not_a_sender(self, spec: Command, entity_id: str, fields: dict[str, Any]) -> None:
        """G9: a context the charter does not name among the senders is refused at once."""
        assert self.charter is not None
        others = [c for c in self.charter.contexts if c not in spec.senders]
        if not others:
            return
        intruder = self.rng.choice(others)
        try:
            commands.request(self.charter, intruder, spec.name, None, entity_id, fields)
        except ValidationError:
            return
        self.checker.fail(f"{intruder} may not send {spec.name}, and its request was accepted")

    # -- owners -------------------------------------------------------------------------

    def _worker(self, owner: str) -> CommandWorker:
        assert self.charter is not None and self.system is not None
        worker = self.workers.get(owner)
        if worker is None:
            handlers = {
                name: partial(self._handle, spec)
                for name, spec in self.charter.commands.items()
                if spec.owner == owner
            }
            system = self.system
            transaction = system.context(owner).transaction
            store = partial(system.store, owner)
            worker = CommandWorker(owner, self.charter, system.bus, store, transaction, handlers)
            worker.wait = 0.0
            self.workers[owner] = worker
        return worker

    def _handle(self, spec: Command, tx: Transaction, cmd: Request) -> Any:
        """The owner's handler: refuses when asked to, else changes the record's fields."""
        self._made[cmd.key] = None
        if cmd.fields.get("refuse"):
            raise ValidationError(f"{spec.name} {cmd.key}: refused on purpose")
        if cmd.id is None:
            return None
        assert self.charter is not None
        entity = self.charter.entities[spec.entity]
        before = tx.get(entity.name, cmd.id)
        if before is None:
            raise NotFoundError(f"{entity.name} {cmd.id} does not exist")
        changes = {n: v for n, v in cmd.fields.items() if n in entity.fields}
        record = tx.update(entity.name, cmd.id, **changes)
        if record.version != before.version:
            self._made[cmd.key] = (entity.name, cmd.id, record.version, "updated")
        return record

    def _step(self, owner: str) -> int:
        worker = self._worker(owner)
        self._made = {}
        try:
            handled = worker.step()
        except Crash as crash:
            self.workers[owner] = None
            self.world.note(f"commands of {owner} crashed at {crash}")
            handled = 0
        except Error as exc:
            self.world.note(f"commands of {owner}: {exc}")
            handled = 0
        self._credit(owner)
        self._hear()
        if handled:
            self.world.note(f"commands of {owner} handled {handled}")
        return handled

    def _credit(self, owner: str) -> None:
        """What this step's handlers changed, for the keys the owner's store now holds with
        an answer that is no refusal: committed with the key, so credited once."""
        assert self.system is not None
        store = self.system.store(owner)
        assert isinstance(store, MemoryStore)
        recorded = store.recorded_commands()
        for key, change in self._made.items():
            done = recorded.get(key)
            if done is None or key in self.credited or _refused(done.result):
                continue
            self.credited.add(key)
            if change is not None:
                self.model.committed(owner, [change])
                entity, entity_id, version, op = change
                what = f"{op} {entity} {entity_id[-6:]} v{version}"
                self.world.note(f"{owner} committed {what} for {key}")
        self._made = {}

    def _hear(self) -> None:
        """Each key answers the same each time it is asked (while the bus keeps its answer);
        a request made to be refused is refused."""
        for key, sent in self.sent.items():
            answer = sent.answer(0)
            if answer is None:
                continue
            first = self.answers.setdefault(key, answer)
            if answer != first:
                self.checker.fail(f"{sent.command.name} {key} answered {first!r}, then {answer!r}")
            if sent.fields.get("refuse") and not _refused(answer):
                self.checker.fail(f"{sent.command.name} {key} was to be refused: {answer!r}")

    # -- quiet --------------------------------------------------------------------------

    def settle_step(self) -> int:
        """A quiet round: every owner's command worker steps once."""
        return sum(self._step(owner) for owner in list(self.workers))

    def waiting(self) -> bool:
        """Commands still on the bus for an owner (handed out to one that crashed, say)."""
        assert self.system is not None
        bus = self.system.bus
        assert isinstance(bus, MemoryBus)
        return bool(self.workers) and bus.waiting_commands() > 0

    def final(self) -> None:
        if self.waiting():
            self.checker.fail("commands still wait on the bus after quiet")


def _refused(answer: bytes) -> bool:
    try:
        return "refused" in orjson.loads(answer)
    except orjson.JSONDecodeError:
        return False
