"""One simulated run: owners writing, relays, projectors (some in lanes, some filled
through the bus), compaction, a schema change, crashes and bus faults, all chosen by one
seed on one simulated clock; then quiet, and the checker's verdict."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from charter import clock, values
from charter.buses.memory import Faults, MemoryBus
from charter.buses.memory import forget as forget_bus
from charter.errors import ConflictError, ConstraintError, Error, OwnershipError
from charter.ids import uuid7
from charter.lanes import Lane
from charter.model import CONTRACT, Charter, Copy
from charter.projector import Projector
from charter.relay import Relay
from charter.runner import declared_copies
from charter.sim import workload
from charter.sim.charters import (
    widened,
    with_commands,
    with_copy,
    with_sagas,
    with_transfers,
    with_visibility,
)
from charter.sim.checker import Checker, Model
from charter.sim.commanding import Commands
from charter.sim.digesting import Digests
from charter.sim.sagas import Sagas
from charter.sim.transfers import Transfers
from charter.sim.world import Crash, World
from charter.stores.memory import MemoryStore
from charter.stores.memory import forget as forget_store
from charter.system import System
from charter.visibility import topic_of

STEPS = 120  # actions before the world goes quiet
SETTLE_ROUNDS = 400  # rounds of every worker, at most, for the world to settle


class _GiveUp(Exception):
    """The simulated caller rolls its transaction back on purpose."""


@dataclass(frozen=True)
class Config:
    """What one seed's world looks like, drawn from the seed."""

    relays: int  # relay workers per owner (two race for one outbox)
    batch: int  # events per relay step (small: batches stay in flight across steps)
    lanes: dict[str, int]  # copy → lanes it runs in (1: none)
    blind: frozenset[str]  # copies whose projector may not read the owner's store
    faults: Faults
    crash_chance: float
    lose_at: int  # the step at which the bus forgets its newest events (-1: never)
    change_at: int  # the step of the schema change (-1: none)
    retention_s: float

    @classmethod
    def draw(cls, rng: random.Random, charter: Charter, seed: int) -> Config:
        copies = list(charter.copies)
        faulty = rng.random() < 0.7
        return cls(
            relays=rng.choice((1, 1, 2)),
            batch=rng.choice((2, 5, 50)),
            lanes={c: rng.choice((1, 1, 2, 3)) for c in copies},
            blind=frozenset(c for c in copies if rng.random() < 0.3),
            faults=Faults(
                seed,
                refuse_publish=0.05 * faulty * rng.random(),
                lose_reply=0.05 * faulty * rng.random(),
                duplicate=0.2 * faulty * rng.random(),
                reorder=0.2 * faulty * rng.random(),
                delay=0.3 * faulty * rng.random(),
            ),
            crash_chance=rng.choice((0.0, 0.002, 0.01, 0.03)),
            lose_at=rng.randrange(STEPS) if rng.random() < 0.15 else -1,
            change_at=rng.randrange(STEPS) if rng.random() < 0.3 else -1,
            retention_s=rng.choice((0.0, 0.05, 0.5, 3600.0)),
        )


@dataclass
class Outcome:
    seed: int
    violations: list[str]
    history: list[str]
    operations: int
    config: Config | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class _Workers:
    """The running workers; a crashed one is None until it is started again."""

    relays: dict[tuple[str, int], Relay | None] = field(default_factory=dict)
    projectors: dict[tuple[str, int], Projector | None] = field(default_factory=dict)


class Simulation:
    def __init__(self, charter: Charter, seed: int, steps: int = STEPS) -> None:
        charter = with_sagas(with_commands(with_visibility(charter, seed), seed), seed)
        self.charter, self.seed, self.steps = charter, seed, steps
        self.world = World(seed)
        self.config = Config.draw(self.world.rng, charter, seed)
        self.model = Model()
        self.checker = Checker(self.world, self.model)
        self.workers = _Workers()
        self.commands = Commands(self.world, self.model, self.checker, seed)
        self.digests = Digests(self.world, self.checker, seed)
        self.sagas = Sagas(self.world, self.model, self.checker, seed)
        move = with_transfers(charter, seed, self.config.blind)
        self.transfers = Transfers(self.world, self.model, self.checker, seed, move, self._deploy)
        self.operations = 0
        self.quiet = False  # the world settles: no more faults or crashes
        self.system: System | None = None

    # -- the world ----------------------------------------------------------------

    def run(self) -> Outcome:
        _forget(self.charter)
        try:
            with clock.installed(self.world.source()):
                self._open(self.charter)
                for step in range(self.steps):
                    self.world.step = step
                    self.world.advance(self.world.rng.uniform(0.5, 30))
                    if step == self.config.change_at:
                        self._change_schema()
                    if step == self.config.lose_at:
                        self._lose()
                    self._act()
                    self.digests.step(self.charter, self.system)
                    if self.checker.violations:
                        break
                else:
                    self._settle()
        except Exception as exc:  # charter raised what it should not have: a finding too
            self.checker.fail(f"unexpected {type(exc).__name__}: {exc}")
        finally:
            if self.system is not None:
                self.system.close()
            _forget(self.charter)
        return Outcome(
            self.seed, self.checker.violations, self.world.history, self.operations, self.config
        )

    def _open(self, charter: Charter) -> None:
        """Start (or, after a schema change, restart) every process of the system."""
        for relay in self.workers.relays.values():
            if relay is not None:
                relay.store.release(relay.holder)
        self.charter = charter
        self.system = System(charter)
        for name in charter.contexts:
            store = self.system.store(name)
            assert isinstance(store, MemoryStore), f"{name}: the simulation runs in memory"
            store.fault = self.world.fault
            self.checker.watch_store(name, store)
        bus = self.system.bus
        assert isinstance(bus, MemoryBus), "the simulation runs on a memory bus"
        bus.misbehave(self.config.faults)
        bus.fault = self.world.fault
        self.checker.start(charter, self.system)
        self.world.crash_chance = self.config.crash_chance
        self.workers = _Workers()
        for name in charter.contexts:
            if charter.owned_by(name):
                for n in range(self.config.relays):
                    self.workers.relays[(name, n)] = None
        for copy in charter.copies.values():
            for n in range(self.config.lanes.get(copy.name, 1)):
                self.workers.projectors[(copy.name, n)] = None
        self.commands.open(self.sagas.others(charter), self.system)
        self.sagas.open(charter, self.system)
        self.transfers.open(charter, self.system)

    def _relay(self, context: str) -> Relay:
        assert self.system is not None
        charter = self.charter
        fills = [
            (copy, entity)
            for entity in charter.owned_by(context)
            for copy in charter.copies_of(entity.name)
        ]
        store, bus = self.system.store(context), self.system.bus
        owned = charter.owned_by(context)
        return Relay(context, store, bus, None, self.config.batch, fills, owned)

    def _projector(self, copy: Copy, number: int) -> Projector:
        assert self.system is not None
        entity = self.charter.entities[copy.of]
        lanes = self.config.lanes.get(copy.name, 1)
        lane = Lane(number + 1, lanes) if lanes > 1 else None
        owner_store: Callable[[], Any] = partial(self.system.store, entity.owner)
        owner_stores: Callable[[str], Any] = self.system.store  # after a move: each holder's
        if copy.name in self.config.blind:
            owner_store, owner_stores = _out_of_reach, lambda _: _out_of_reach()
        store = self.system.store(copy.context)
        return Projector(
            copy, entity, store, owner_store, self.system.bus, 20, lane, owner_stores=owner_stores
        )

    # -- what happens at each step ----------------------------------------------------

    def _act(self) -> None:
        if self.commands.act() or self.sagas.act() or self.transfers.act():
            self.operations += 1
            return
        roll = self.world.rng.random()
        if roll < 0.35:
            self._write()
        elif roll < 0.55:
            self._step_relay()
        elif roll < 0.85:
            self._step_projector()
        elif roll < 0.90:
            self._compact()
        elif roll < 0.94:
            self._poison()
        else:
            self._check_status()

    def _write(self) -> None:
        assert self.system is not None
        rng, charter = self.world.rng, self.charter
        entity = rng.choice(list(self.sagas.others(charter).entities.values()))
        context = entity.owner
        if rng.random() < 0.04:  # someone else tries: always refused (G1)
            others = [c for c in charter.contexts if c != entity.owner]
            if others:
                context = rng.choice(others)
        handle = self.system.context(context)
        done: list[tuple[str, str, int, str]] = []
        live = self.model.live(entity.name)
        give_up = rng.random() < 0.1
        self.operations += 1
        try:
            with handle.transaction() as tx:
                for _ in range(1 + rng.randrange(3)):
                    kind = rng.random()
                    if live and kind < 0.25:
                        entity_id = rng.choice(live)
                        version = self._version(entity.name, entity_id, done)
                        if version is None:
                            continue
                        tx.delete(entity.name, entity_id)
                        done.append((entity.name, entity_id, version + 1, "deleted"))
                    elif live and kind < 0.6:
                        entity_id = rng.choice(live)
                        version = self._version(entity.name, entity_id, done)
                        if version is None:
                            continue
                        record = tx.update(entity.name, entity_id, **workload.changes(rng, entity))
                        if record.version != version:
                            done.append((entity.name, entity_id, record.version, "updated"))
                    elif rng.random() < 0.3:  # a part that may fail alone
                        try:
                            with tx.savepoint():
                                record = tx.create(entity.name, **workload.new_record(rng, entity))
                        except ConstraintError as refused:
                            self.world.note(f"{context} savepoint refused: {_short(refused)}")
                            continue
                        done.append((entity.name, record.id, 1, "created"))
                    else:
                        record = tx.create(entity.name, **workload.new_record(rng, entity))
                        done.append((entity.name, record.id, 1, "created"))
                if give_up:
                    raise _GiveUp
        except OwnershipError:
            self.world.note(f"{context} may not write {entity.name}: refused")
            return
        except (ConstraintError, ConflictError) as refused:
            self.world.note(f"{context} tx refused: {_short(refused)}")
            return
        except _GiveUp:
            self.world.note(f"{context} tx of {len(done)} changes rolled back on purpose")
            return
        except Crash as crash:
            self.world.note(f"{context} writer crashed at {crash}; its tx rolled back")
            return
        if any(entity.holder(i)[0] != context for _, i, _, _ in done):  # (after a move: each)
            self.checker.fail(f"{context} wrote {entity.name}, which {entity.owner} owns")
        self.model.committed(context, done)
        summary = ", ".join(f"{op} {e} {i[-6:]} v{v}" for e, i, v, op in done)
        self.world.note(f"{context} committed {summary or 'nothing'}")

    def _version(
        self, entity: str, entity_id: str, done: list[tuple[str, str, int, str]]
    ) -> int | None:
        """The record's version as this transaction sees it (None: deleted in it)."""
        for e, i, version, op in reversed(done):
            if (e, i) == (entity, entity_id):
                return None if op == "deleted" else version
        return self.model.version(entity, entity_id)

    def _step_relay(self) -> None:
        key = self.world.rng.choice(list(self.workers.relays))
        relay = self.workers.relays[key] or self._relay(key[0])
        self.workers.relays[key] = relay
        self._step(f"relay {key[0]}#{key[1]}", relay, lambda: self._relay_died(key, relay))

    def _relay_died(self, key: tuple[str, int], relay: Relay) -> None:
        """Its process ended: the system frees what it held, the outbox's lead too."""
        self.workers.relays[key] = None
        relay.store.release(relay.holder)

    def _step_projector(self) -> None:
        key = self.world.rng.choice(list(self.workers.projectors))
        copy = self.charter.copies[key[0]]
        projector = self.workers.projectors[key] or self._projector(copy, key[1])
        self.workers.projectors[key] = projector
        name = f"projector {key[0]}" + (f" lane {projector.lane}" if projector.lane else "")
        self._step(name, projector, lambda: self.workers.projectors.update({key: None}))
        self.checker.after_apply(copy)

    def _step(self, name: str, worker: Relay | Projector, crashed: Callable[[], None]) -> int:
        self.operations += 1
        try:
            moved = worker.step()
        except Crash as crash:
            crashed()
            self.world.note(f"{name} crashed at {crash}")
            return 0
        except Error as exc:
            self.world.note(f"{name}: {_short(exc)}")
            return 0
        if moved:
            self.world.note(f"{name} moved {moved}")
        return moved

    def _compact(self) -> None:
        assert self.system is not None
        self.operations += 1
        try:
            gone = self.system.bus.compact(self.config.retention_s, declared_copies(self.charter))
        except Crash:
            return
        if gone:
            self.world.note(f"bus compacted {gone} events")

    def _poison(self) -> None:
        """An event no owner wrote, put on the bus by some other tool: it must be parked
        for its id, and hurt nothing else."""
        assert self.system is not None
        rng = self.world.rng
        entity = rng.choice(list(self.charter.entities.values()))
        live = self.model.live(entity.name)
        subject = rng.choice(live) if live and rng.random() < 0.5 else uuid7()
        event_id = uuid7()
        kind = rng.choice(("not json", "text", "wrong entity", "bad value", "wrong source"))
        doc: dict[str, Any] = {
            "specversion": "1.0",
            "id": event_id,
            "source": entity.owner,
            "type": f"{entity.name}.updated",
            "subject": subject,
            "time": values.now_text(),
            "entityversion": 1000 + rng.randrange(100),
            "data": workload.new_record(rng, entity),
        }
        doc["data"] = {k: v for k, v in doc["data"].items() if isinstance(v, str)}
        if kind == "wrong entity":
            doc["type"] = "Nothing.updated"
        elif kind == "bad value":
            doc["data"] = {name: [1, 2] for name in entity.fields}
        elif kind == "wrong source":  # well formed, from a context that does not own it
            others = [c for c in self.charter.contexts if c != entity.owner]
            doc["source"] = rng.choice(others) if others else "intruder"
            doc["type"] = f"{entity.name}.deleted"
        topic, copies = entity.name, self.charter.copies_of(entity.name)
        if entity.visibility == CONTRACT and copies:  # where a copy reads (charter.visibility)
            topic = topic_of(entity, rng.choice(copies))
        body: bytes | str = b"\xffnot json" if kind == "not json" else orjson.dumps(doc)
        if kind == "text":  # not bytes at all: what another language's client may write
            body = "{not an event"
        bus = self.system.bus
        assert isinstance(bus, MemoryBus)
        self.checker.poisoned(event_id, body)  # before: a publish may land and still fail
        try:
            bus.publish_raw(event_id, topic, subject, body)
        except (Crash, Error):
            return
        self.world.note(f"poison ({kind}) {event_id[-6:]} for {entity.name} {subject[-6:]}")

    def _check_status(self) -> None:
        copy = self.world.rng.choice(list(self.charter.copies.values()))
        with contextlib.suppress(Crash, Error):
            self.checker.status_tells_the_lag(copy)

    def _lose(self) -> None:
        """The bus crashes and forgets its newest events, acknowledged or not."""
        assert self.system is not None
        bus = self.system.bus
        assert isinstance(bus, MemoryBus)
        lost = bus.lose_newest(1 + self.world.rng.randrange(8))
        self.checker.lost_events()
        self.world.note(f"bus lost its newest {len(lost)} events")

    def _change_schema(self) -> None:
        """A new deployment: a copy keeps one more field, or a new copy starts (its first
        backfill while the others run); every process restarts."""
        assert self.system is not None
        rng, charter = self.world.rng, self.charter
        changed: Charter | None = None
        if rng.random() < 0.5:
            entity = rng.choice(list(charter.entities.values()))
            contexts = [c for c in charter.contexts if c != entity.owner]
            changed = with_copy(charter, entity.name, rng.choice(contexts), rng)
            what = f"a new copy {next(iter(set(changed.copies) - set(charter.copies)))}"
        else:
            for copy in charter.copies.values():
                more = [f for f in charter.entities[copy.of].public_names if f not in copy.fields]
                if more:
                    field_name = rng.choice(more)
                    changed = widened(charter, copy.name, field_name)
                    what = f"copy {copy.name} keeps {field_name} too"
                    break
        if changed is None:
            return
        self.system.close()
        self._open(changed)
        self.world.note(f"deployed: {what}")

    def _deploy(self, charter: Charter, what: str) -> None:
        """Every process restarts with `charter` (a transfer recorded, say)."""
        assert self.system is not None
        self.system.close()
        self._open(charter)
        if self.quiet:  # it stays quiet
            self.world.crash_chance = 0.0
            bus = self.system.bus
            assert isinstance(bus, MemoryBus)
            bus.misbehave(Faults())
        self.world.note(f"deployed: {what}")

    # -- quiet ------------------------------------------------------------------------

    def _settle(self) -> None:
        """No more faults or crashes; the operator heals a bus that lost events (rewinds
        the relays, G7); every worker runs until nothing moves and every copy is synced."""
        assert self.system is not None
        self.world.note("quiet: no more faults")
        self.quiet = True
        self.world.crash_chance = 0.0
        bus = self.system.bus
        assert isinstance(bus, MemoryBus)
        bus.misbehave(Faults())
        if self.checker.unhealed:
            for name in self.charter.contexts:
                if self.charter.owned_by(name):
                    self._relay(name).rewind(0)
            self.checker.healed()
            self.world.note("relays rewound: the owners publish everything again")
        for _ in range(SETTLE_ROUNDS):
            self.world.advance(300)
            moved = 0
            for key in list(self.workers.relays):
                relay = self.workers.relays[key] or self._relay(key[0])
                self.workers.relays[key] = relay
                moved += self._step(f"relay {key[0]}#{key[1]}", relay, lambda: None)
            for key in list(self.workers.projectors):
                copy = self.charter.copies[key[0]]
                projector = self.workers.projectors[key] or self._projector(copy, key[1])
                self.workers.projectors[key] = projector
                moved += self._step(f"projector {key[0]}", projector, lambda: None)
                self.checker.after_apply(copy)
            moved += self.commands.settle_step() + self.sagas.settle_step()
            moved += self.transfers.settle_step()
            quiet = not self.commands.waiting() and not self.sagas.waiting()
            quiet = quiet and not self.transfers.waiting()
            if moved == 0 and self.checker.synced() and quiet:
                break
        else:
            self.checker.fail(f"the copies did not settle in {SETTLE_ROUNDS} quiet rounds")
            return
        self.system.bus.compact(self.config.retention_s, declared_copies(self.charter))
        self.sagas.observe()  # what the saga world committed, for the outbox check
        self.checker.final()
        self.commands.final()
        self.digests.final(self.charter, self.system)
        self.sagas.final()
        self.transfers.final()


def _out_of_reach() -> Any:
    raise PermissionError("this projector may not read the owner's store")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _forget(charter: Charter) -> None:
    for context in charter.contexts.values():
        forget_store(context.store)
    forget_bus(charter.bus)


def run(charter: Charter, seed: int, steps: int = STEPS) -> Outcome:
    return Simulation(charter, seed, steps).run()
