"""Transfers in the simulated world (G10): some partitions of an entity move to another
context (charter.transfer's phases, run by its Transfer, kept in memory instead of a state
file) while writers on the old owner and on the new one hammer the records that move. The
transfer crashes in its phases' store operations (the world's faults) and after each phase
it reached; the next try resumes it, or, before it promoted, now and then rolls it back.
Once it is recorded, every process restarts with the charter that records the move.

Checked along the way: the old owner accepts no write to a moving record once it is fenced;
the new owner none before it is promoted (a writer that loaded the new charter early is
refused by the `waiting` fence). After quiet: the transfer is done (or rolled back), no
record has two accepted writes at one version (across every owner's outbox), no accepted
write is lost (each record's holder has its last accepted version), and a copy parks only
events of an older epoch of the moved records (besides poison); the checker's convergence
check reads each record from its holder.

Its choices come from a generator of its own (salted by the seed), so that a seed without
a transfer runs exactly as it did before transfers were simulated."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from charter.errors import ConflictError, ConstraintError, Error, NotFoundError, OwnershipError
from charter.lanes import PARTITIONS, partition
from charter.model import Charter, Entity, Move
from charter.records import Parked
from charter.sim import workload
from charter.sim.checker import Checker, Model
from charter.sim.world import Crash, World
from charter.stores import fencing
from charter.stores.memory import MemoryStore
from charter.system import System
from charter.transfer import PHASES, ROLLED_BACK, Plan, Transfer, TransferError

SHARE = 0.3  # of a transferring world's steps (from the transfer's start), its own
ENDED = ("done", ROLLED_BACK)
PROMOTED_FROM = PHASES[PHASES.index("promoted") :]  # the new owner accepts them
RECORDED_FROM = PHASES[PHASES.index("recorded") :]  # every process knows the move


def recorded(charter: Charter, entity: str, move: Move) -> Charter:
    """The charter once `move` of `entity` is recorded (as charter.transfer records it in
    the charter file: one more move; the owner stays, some partitions go)."""
    spec = charter.entities[entity]
    entities = {**charter.entities, entity: dataclasses.replace(spec, moves=(*spec.moves, move))}
    return dataclasses.replace(charter, entities=entities)


class _InMemory(Transfer):
    """charter.transfer's Transfer, its plan kept in memory (the same object across tries,
    as its state file would be), the move recorded by the simulation (a redeployment)."""

    def __init__(self, made: Plan, old: System, new: System, after: Callable[[str], None]) -> None:
        self.plan, self.say, self.drain_s = made, lambda _: None, 0.0
        self.old_system, self.new_system, self.new = old, new, new.charter
        self.entity_old = old.charter.entities[made.entity]
        self.entity = new.charter.entities[made.entity]
        self._after = after

    def close(self) -> None:
        return None  # the simulation's systems

    def _keep(self) -> None:
        return None

    def _pause(self, seconds: float) -> None:
        return None  # the world's clock does not move while it waits: it tries again later

    def _record(self) -> None:
        return None

    def _reached(self, phase: str) -> None:
        super()._reached(phase)
        self._after(phase)


class Transfers:
    """The transfer of one seed, and the writers that hammer what it moves."""

    def __init__(
        self,
        world: World,
        model: Model,
        checker: Checker,
        seed: int,
        move: tuple[str, Move] | None,
        deploy: Callable[[Charter, str], None],
    ) -> None:
        self.world, self.model, self.checker = world, model, checker
        self.rng = random.Random(f"transfers:{seed}")
        self.move, self.deploy = move, deploy
        self.start_at = self.rng.randrange(60)
        self.crash_after = self.rng.choice((0.0, 0.1, 0.3))  # after each phase reached
        self.rollback_chance = self.rng.choice((0.0, 0.3))
        self.plan: Plan | None = None
        self.crashed = False
        self.deployed = False
        self.charter: Charter | None = None
        self.system: System | None = None
        checker.excuse(self._parked_old_epoch)

    @property
    def on(self) -> bool:
        return self.move is not None and self.charter is not None

    def open(self, charter: Charter, system: System) -> None:
        self.charter, self.system = charter, system

    # -- the world's steps -----------------------------------------------------------

    def act(self) -> bool:
        if not self.on or self.world.step < self.start_at or self.rng.random() >= SHARE:
            return False
        if self._unfinished() and self.rng.random() < 0.35:
            self._advance()
        else:
            self._hammer()
        return True

    def _unfinished(self) -> bool:
        return self.plan is None or self.plan.phase not in ENDED

    def _advance(self) -> bool:
        """One try of the transfer: it runs (or resumes) until done, a crash, or a drain
        still to come; after a crash before it promoted, now and then it rolls back."""
        assert self.move is not None and self.charter is not None and self.system is not None
        entity, move = self.move
        if self.plan is None:
            source = move.source
            self.plan = Plan(
                entity, source, move.to, list(move.parts or ()), move.epoch, "sim.yaml"
            )
            self.world.note(f"transfer planned: {self.plan.describe()}")
        plan, before = self.plan, self.plan.phase
        after = recorded(self.charter, entity, move) if not self.deployed else self.charter
        new = System(after)
        store = new.store(move.to)  # the only one the transfer writes through `after`
        assert isinstance(store, MemoryStore)
        store.fault = self.world.fault
        runner = _InMemory(plan, self.system, new, self._after_phase)
        back = self.crashed and plan.phase not in PROMOTED_FROM
        back = back and self.rng.random() < self.rollback_chance
        self.crashed = False
        try:
            if back:
                runner.rollback()
                self.world.note(f"transfer rolled back from {before or 'nothing'}")
            else:
                runner.run()
        except Crash as crash:
            self.crashed = True
            self.world.note(f"transfer crashed at {crash} (reached {plan.phase or 'nothing'})")
        except TransferError as waiting:
            self.world.note(f"transfer waits: {str(waiting)[:80]}")
        except Error as exc:
            self.world.note(f"transfer: {str(exc)[:120]}")
        finally:
            new.close()
        if plan.phase != before:
            self.world.note(f"transfer reached {plan.phase} (from {before or 'nothing'})")
        if plan.phase == ROLLED_BACK:
            self.plan = None  # planned again at a later try
        elif plan.phase in RECORDED_FROM and not self.deployed:
            self.deployed = True
            self.deploy(after, f"the move of {plan.describe()}")
        return plan.phase != before

    def _after_phase(self, phase: str) -> None:
        if self.crash_after and self.rng.random() < self.crash_after:
            raise Crash(f"after {phase}")

    def _hammer(self) -> None:
        """A write to a moving record, by its old owner, its new one (as every process runs
        now), or a new owner that loaded the new charter early (refused until promoted)."""
        assert self.move is not None and self.charter is not None and self.system is not None
        entity_name, move = self.move
        parts = set(move.parts or ())
        ids = [i for i in self.model.live(entity_name) if partition(i, PARTITIONS) in parts]
        if not ids:
            return
        entity_id = self.rng.choice(ids)
        source = self.plan.source if self.plan else self.charter.entities[entity_name].owner
        phase = self.plan.phase if self.plan else ""
        side = self.rng.choice(("old", "new", "early"))
        if side == "early" and (self.deployed or phase in PROMOTED_FROM):
            side = "new"
        context = source if side == "old" else move.to
        system = self.system
        if side == "early":
            system = System(recorded(self.charter, entity_name, move))
        entity = system.charter.entities[entity_name]
        changes = workload.changes(self.rng, entity)
        before = _held(system, context, entity, entity_id)
        try:
            with system.context(context).transaction() as tx:
                record = tx.update(entity_name, entity_id, **changes)
        except OwnershipError as refused:
            self.world.note(f"{side} owner {context} refused {entity_id[-6:]}: {_short(refused)}")
            return
        except (ConstraintError, ConflictError, NotFoundError) as refused:
            self.world.note(f"{side} owner {context} write {entity_id[-6:]}: {_short(refused)}")
            return
        except Crash as crash:
            self.world.note(f"{side} owner {context} crashed writing at {crash}")
            return
        finally:
            if side == "early":
                system.close()
        if record.version <= before:  # the values were so already: nothing written
            return
        self.model.committed(context, [(entity_name, entity_id, record.version, "updated")])
        self.world.note(f"{side} owner {context} wrote {entity_id[-6:]} v{record.version}")
        if side == "early":
            self.checker.fail(
                f"{context} wrote {entity_name} {entity_id} at phase {phase or 'none'}, before "
                "the transfer promoted it: two writers at once"
            )
        if side == "old" and phase in PROMOTED_FROM:  # (fenced, not promoted: still one)
            self.checker.fail(
                f"{context} wrote {entity_name} {entity_id} (v{record.version}) after the "
                f"transfer promoted {move.to} (phase {phase}): two writers, an old epoch's "
                "write accepted"
            )

    # -- quiet ------------------------------------------------------------------------

    def settle_step(self) -> int:
        """A quiet round: the transfer tries again until it is done (no crash after a
        phase any more)."""
        if not self.on or not self._unfinished():
            return 0
        self.crash_after = self.rollback_chance = 0.0
        return int(self._advance())

    def waiting(self) -> bool:
        return self.on and self._unfinished()

    def final(self) -> None:
        if not self.on:
            return
        assert self.move is not None and self.charter is not None and self.system is not None
        if self._unfinished():
            self.checker.fail(f"the transfer did not end after quiet: {self.plan}")
            return
        entity_name, move = self.move
        entity = self.charter.entities[entity_name]
        writers: dict[tuple[str, int], list[str]] = {}
        last: dict[str, tuple[int, str]] = {}
        for name in self.charter.contexts:
            for out in self.system.store(name).outbox(0, 10**9):
                if out.entity != entity_name:
                    continue
                writers.setdefault((out.entity_id, out.version), []).append(name)
                if out.version > last.get(out.entity_id, (0, ""))[0]:
                    last[out.entity_id] = (out.version, out.op)
        for (entity_id, version), who in sorted(writers.items()):
            if len(who) > 1:
                self.checker.fail(
                    f"{entity_name} {entity_id} has {len(who)} accepted writes at version "
                    f"{version}: by {', '.join(sorted(who))}"
                )
        holding: dict[str, dict[str, Any]] = {}
        for name in entity.owners:
            for found in self.system.store(name).rows(entity):
                if entity.holder(found["id"])[0] == name:
                    holding[found["id"]] = found
        for entity_id, (version, op) in sorted(last.items()):
            row = holding.get(entity_id)
            if op == "deleted" and row is not None:
                self.checker.fail(
                    f"{entity_name} {entity_id} was deleted, its holder has v{row['version']}"
                )
            elif op != "deleted" and (row is None or row["version"] != version):
                held = "nothing" if row is None else f"v{row['version']}"
                self.checker.fail(
                    f"{entity_name} {entity_id}: its last accepted write is v{version}, its "
                    f"holder {entity.holder(entity_id)[0]} has {held}: an accepted write lost"
                )
        if self.deployed:
            self._fenced(entity_name, move)

    def _fenced(self, entity_name: str, move: Move) -> None:
        """After the move: the old owner's store fenced for the moved partitions, the new
        owner's their owner, at the new epoch."""
        assert self.charter is not None and self.system is not None and self.plan is not None
        for context, state in ((self.plan.source, fencing.FENCED), (move.to, fencing.OWNER)):
            fences = {f.part: f for f in self.system.store(context).fences(entity_name)}
            for part in move.parts or ():
                fence = fences.get(part)
                if fence is None or (fence.state, fence.epoch) != (state, move.epoch):
                    self.checker.fail(
                        f"{context}'s fence for {entity_name} partition {part} is {fence}, "
                        f"not {state} at epoch {move.epoch}"
                    )

    def _parked_old_epoch(self, parked: Parked) -> bool:
        """A copy parks an event of an older epoch of a moved record: as it must."""
        if self.move is None or not self.deployed:
            return False
        move = self.move[1]
        return (
            partition(parked.entity_id, PARTITIONS) in set(move.parts or ())
            and "older epoch" in parked.reason
        )


def _held(system: System, context: str, entity: Entity, entity_id: str) -> int:
    """The version of the record in `context`'s own store (0: none), read by the checker
    (no crash drawn for it)."""
    store = system.store(context)
    assert isinstance(store, MemoryStore)
    fault, store.fault = store.fault, None
    try:
        row = store.fetch(entity, entity_id)
    except KeyError:  # its store has no table of the entity yet (before the transfer's)
        row = None
    finally:
        store.fault = fault
    return 0 if row is None else int(row["version"])


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__
