"""Known bugs, planted one at a time, to prove the checker has teeth: each must be caught
within a bounded number of seeds (tests/test_sim.py). `planted(name)` puts one in for the
duration of a block; nothing here is used outside those proofs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from charter.buses.memory import MemoryBus
from charter.events import Event
from charter.lanes import Lane
from charter.model import Copy
from charter.projector import Projector
from charter.records import Backlog
from charter.relay import Relay
from charter.sagas import moves as saga_moves
from charter.sagas import worker as saga_worker
from charter.stores import fencing
from charter.stores.memory import MemoryStore, _copy_row, _Writes


def _no_version_guard(store: MemoryStore, copy: Copy, event: Event, now: str) -> bool:
    rows = store._data.copies[copy.name]
    if event.op == "deleted":
        rows.pop(event.entity_id, None)
        store._data.tombstones[(copy.name, event.entity_id)] = event.version
    else:
        rows[event.entity_id] = _copy_row(copy, event.entity_id, event.version, event.state, now)
    return True


def _ack_before_commit(step: Callable[[Projector], int]) -> Callable[[Projector], int]:
    def step_acking_first(self: Projector) -> int:
        if self._position is not None:
            ahead = self.bus.fetch(self.copy.name, self.topic, self._position, self.batch)
            if ahead:
                self.bus.ack(self.copy.name, self.topic, ahead[-1].position)
        return step(self)

    return step_acking_first


def _mark_before_publish(self: Relay, flight: tuple[list[Any], Callable[[], None]]) -> int:
    rows, published = flight
    self.store.mark_relayed(rows)
    published()
    return len(rows)


def _greedy_lane(self: Lane, part: int) -> bool:
    return self.number == 1 or part % self.lanes == self.number - 1


def _blind_backlog(self: MemoryBus, consumer: str, entity: str, after: int) -> Backlog:
    return Backlog(0, None)


def _forgets_keys(self: _Writes, key: str) -> None:
    return None  # every delivery of a command looks like its first


def _stale_buckets(bucket_digest: Callable[..., Any]) -> Callable[..., Any]:
    def keeps_the_first_answer(self: MemoryStore, table: Any, fields: Any, *asked: Any) -> Any:
        kept = self.__dict__.setdefault("_stale_buckets", {})  # no write marks a bucket dirty
        key = (table.table, tuple(f.name for f in fields), repr(asked))
        if key not in kept:
            kept[key] = bucket_digest(self, table, fields, *asked)
        return kept[key]

    return keeps_the_first_answer


def _skips_compensations(plan: Callable[..., Any]) -> Callable[..., Any]:
    def plan_skipping(saga: Any, charter: Any, run: Any, now: float) -> Any:
        moved, send = plan(saga, charter, run, now)
        if send is not None and send.undo:  # as if its undo had been answered
            return moved.but(step=moved.step - 1), None
        return moved, send

    return plan_skipping


def _keyed_per_try(key: Callable[..., str]) -> Callable[..., str]:
    # the first try under a key of its own, every retry under another: a step whose first
    # try was handled is handled again
    return lambda run, index, undo: f"{key(run, index, undo)}:{min(run.attempts, 1)}"


def _fence_forgotten(fence: Callable[..., None]) -> Callable[..., None]:
    def fence_but_not_the_old_owner(self: MemoryStore, *args: Any) -> None:
        if args[-1] != fencing.FENCED:
            fence(self, *args)

    return fence_but_not_the_old_owner


def _promote_forgets(promote: Callable[..., None]) -> Callable[..., None]:
    def promote_the_fill_only(
        self: MemoryStore,
        entity: Any,
        parts: Any,
        epoch: int,
        holder: str,
        rows: Any,
        gone: Any = (),
        state: str = fencing.OWNER,
    ) -> None:
        if state == fencing.OWNER:  # what changed since the fill is not copied again
            rows, gone = [], ()
        promote(self, entity, parts, epoch, holder, rows, gone, state)

    return promote_the_fill_only


BUGS: dict[str, tuple[Any, str, Callable[[Any], Any]]] = {
    "no version guard": (MemoryStore, "_apply_event", lambda _: _no_version_guard),
    "ack before commit": (Projector, "step", _ack_before_commit),
    "relay marks before publish": (Relay, "_land", lambda _: _mark_before_publish),
    "a lane takes another lane's ids": (Lane, "holds", lambda _: _greedy_lane),
    "status ignores the bus": (MemoryBus, "backlog", lambda _: _blind_backlog),
    "a command's key forgotten": (_Writes, "command", lambda _: _forgets_keys),
    "a bucket left stale": (MemoryStore, "bucket_digest", _stale_buckets),
    "a compensation skipped": (saga_worker, "plan", _skips_compensations),
    "a saga step retried without its key": (saga_moves, "key", _keyed_per_try),
    "the old owner's fence forgotten": (MemoryStore, "fence", _fence_forgotten),
    "a transfer's promote forgets the writes since its fill": (
        MemoryStore,
        "promote",
        _promote_forgets,
    ),
}


@contextmanager
def planted(name: str) -> Iterator[None]:
    if name == "compaction ignores a lagging copy":
        MemoryBus.compact_ignores_consumers = True
        try:
            yield
        finally:
            MemoryBus.compact_ignores_consumers = False
        return
    owner, attribute, replacement = BUGS[name]
    original = owner.__dict__[attribute]
    setattr(owner, attribute, replacement(original))
    try:
        yield
    finally:
        setattr(owner, attribute, original)


NAMES = (*BUGS, "compaction ignores a lagging copy")
