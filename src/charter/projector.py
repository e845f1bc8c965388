"""Bus → copy. Applies an event only when its version is newer than the copy's,
in the same transaction as the checkpoint (G3, G4); parks what it cannot apply,
for that id alone, and keeps going (G8). With a lane, applies only the lane's share of
the ids (charter.lanes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import orjson

from charter.buses import Bus
from charter.errors import BackfillError, EventError, ValidationError
from charter.events import Event, decode
from charter.lanes import Lane
from charter.model import Copy, Entity
from charter.stores import Store
from charter.stores.base import Checkpoint, Parked, Row
from charter.values import ENCODERS

_TEXT = frozenset({"string", "text"})


class Projector:
    def __init__(
        self,
        copy: Copy,
        entity: Entity,
        store: Store,
        owner_store: Callable[[], Store],
        bus: Bus,
        batch: int = 1000,
        lane: Lane | None = None,
    ) -> None:
        if lane is not None:
            lane.check(bus.partitions)
        self.copy, self.entity, self.store = copy, entity, store
        self.owner_store, self.bus, self.batch, self.lane = owner_store, bus, batch, lane
        self.taken = 0  # events this worker applied or parked (its lane's share)
        self._position: int | None = None
        self._fields = [entity.fields[name] for name in copy.fields]

    @property
    def wake_key(self) -> str:
        return f"bus:{self.entity.name}"

    def step(self) -> int:
        """Apply one batch; returns how many deliveries were handled (0: nothing to do)."""
        if self._position is None:
            self._position = self._start()
        deliveries = self.bus.fetch(self.copy.name, self.entity.name, self._position, self.batch)
        if not deliveries:
            return 0
        items: list[tuple[int, Event]] = []
        parked: list[Parked] = []
        lane = self.lane
        for delivery in deliveries:
            if lane is not None and not lane.holds(delivery.partition):
                continue  # another lane's
            try:
                items.append((delivery.position, self._check(decode(delivery.body))))
            except (EventError, ValidationError) as exc:
                parked.append(self._park(delivery.position, delivery.body, str(exc)))
        last = deliveries[-1].position
        self.store.apply(self.copy, items, parked, last, lane)
        self.taken += len(items) + len(parked)
        self._position = last
        self.bus.ack(self.copy.name, self.entity.name, self._applied(last))
        return len(deliveries)

    def _applied(self, position: int) -> int:
        """What the copy as a whole has applied: `position`, or with lanes, where the
        slowest lane is."""
        if self.lane is None:
            return position
        whole = self.store.checkpoint(self.copy)
        return whole.position if whole else 0

    def _start(self) -> int:
        """Where to read from; a new copy, or one with new fields, is first filled from the
        owner's current state (not by replaying history)."""
        checkpoint = self.store.checkpoint(self.copy, self.lane)
        if checkpoint is None or checkpoint.fields != self.copy.fields:
            # The fill stands for the whole copy, so it goes from where the whole copy is
            # (a lane may be ahead of the others); a second process filling at the same
            # time may leave the checkpoint lower than `position`, never higher.
            whole = self.store.checkpoint(self.copy) if self.lane else checkpoint
            position = whole.position if whole else self.bus.head(self.entity.name)
            self.store.backfill(self.copy, self._snapshot(), position)
            checkpoint = self.store.checkpoint(self.copy, self.lane) or Checkpoint(
                position, None, self.copy.fields
            )
        self.bus.ack(self.copy.name, self.entity.name, self._applied(checkpoint.position))
        return checkpoint.position

    def _snapshot(self) -> Iterator[tuple[str, int, Row]]:
        try:
            for row in self.owner_store().rows(self.entity):
                yield row["id"], row["version"], row
        except Exception as exc:  # the owner's store is out of this process's reach
            owner = self.entity.owner
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackfillError(
                f"copy '{self.copy.name}' needs a first fill from the current "
                f"{self.entity.name} records of '{owner}', and this process cannot read "
                f"them ({cause}). Run its first drain once where the store of '{owner}' "
                f"is readable, e.g. `charter run --once --context {self.copy.context}` with a "
                "charter whose URLs carry an operator's credentials; from then on the "
                "projector needs only the bus."
            ) from exc

    def _check(self, event: Event) -> Event:
        where = f"event {event.id} (version {event.version})"
        if event.entity != self.entity.name:
            raise EventError(
                f"{where}: is about {event.entity}, this copy is of {self.entity.name}"
            )
        if event.state is not None:
            for field in self._fields:
                value = event.state.get(field.name)
                if value is not None:
                    try:
                        ENCODERS[field.type](self.entity.name, field, value)
                    except ValidationError as exc:
                        raise EventError(f"{where}: {exc}") from None
        return event

    def _park(self, position: int, body: bytes, reason: str) -> Parked:
        entity_id, version, event_id = "?", None, None
        try:
            doc = orjson.loads(body)
            entity_id = str(doc.get("subject") or "?")
            version = doc.get("entityversion")
            event_id = doc.get("id")
        except (orjson.JSONDecodeError, AttributeError):
            pass
        return Parked(
            self.copy.name,
            entity_id,
            version if isinstance(version, int) else 0,
            str(event_id or "?"),
            position,
            reason,
            body,
        )
