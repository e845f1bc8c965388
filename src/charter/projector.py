"""Bus → copy. Applies an event only when its version is newer than the copy's,
in the same transaction as the checkpoint (G3, G4); parks what it cannot apply, or may
not (an event whose source is not the entity's owner: G1), for that id alone, and keeps
going (G8). With a lane, applies only the lane's share of the ids (charter.lanes).

A copy whose position is below what the bus has compacted (Bus.compacted) has lost events
it never applied: it is filled again from the owner's current state, as a new copy is, and
goes on from there. Records the owner deleted meanwhile stay in the copy (no event says
so any more) until reconciliation finds them.

Each applied event's propagation latency (the copy's commit time minus the owner's, both
from charter.clock) goes to the store with the batch, into the copy's latency histogram
(charter.latency), and to `on_applied` once the batch is committed."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence

import orjson

from charter import clock, fills, latency, tracing
from charter.buses import Bus
from charter.errors import BackfillError, EventError, ValidationError
from charter.events import MAX_VERSION, Event, decode
from charter.fills import FillMark
from charter.lanes import Lane
from charter.model import Copy, Entity, Field
from charter.records import (
    FILL_MARKER,
    REPAIR_MARKER,
    Checkpoint,
    Delivery,
    Mend,
    Parked,
    Row,
    repair_over,
)
from charter.stores import Store
from charter.values import ENCODERS
from charter.visibility import topic_of

_TEXT = frozenset({"string", "text"})
GAP_CHECK_S = 1.0  # how often an idle projector asks whether its next events were lost

log = logging.getLogger(__name__)


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
        owner_team: str = "",
        record_latency: bool = True,
        owner_stores: Callable[[str], Store] | None = None,
    ) -> None:
        """`owner_stores`: the store of a context by name, for a fill of an entity whose
        partitions have several owners since a move (charter transfer): each record read
        from the context that holds it; without it, all from `owner_store`."""
        if lane is not None:
            lane.check(bus.partitions)
        self.copy, self.entity, self.store = copy, entity, store
        self.owner_store, self.bus, self.batch, self.lane = owner_store, bus, batch, lane
        self.owner_stores = owner_stores
        self.owner_team = owner_team  # named when an event claims another source
        self.taken = 0  # events this worker applied or parked (its lane's share)
        self._position: int | None = None
        self._checked = 0.0  # when an idle step last asked about lost events
        self._fields = [entity.fields[name] for name in copy.fields]
        self.topic = topic_of(entity, copy)  # what it reads on the bus (charter.visibility)
        self.record_latency = record_latency  # into the copy's store (charter.latency)
        self.on_applied: Callable[[Sequence[float]], None] | None = None
        """Called after each committed batch with the latencies, in seconds, of the events
        it applied (charter.metrics observes them)."""

    @property
    def wake_key(self) -> str:
        return f"bus:{self.entity.name}"

    def step(self) -> int:
        """Apply one batch; returns how many deliveries were handled (0: nothing to do)."""
        if self._position is None:
            self._position = self._start()
        deliveries = self.bus.fetch(self.copy.name, self.topic, self._position, self.batch)
        if self._skipped(self._position, deliveries):
            self._position = self._start()  # sees the gap, and fills the copy again
            return 1
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
                parked.append(park(self.copy, delivery, str(exc)))
        last = deliveries[-1].position
        items = self._mend(deliveries, items)
        hook = self.on_applied
        timed = (
            _latencies(_timed(deliveries, items)) if items and (self.record_latency or hook) else []
        )
        with tracing.applying(self.copy.name, self.entity.name, items):
            self.store.apply(
                self.copy, items, parked, last, lane, timed if self.record_latency else ()
            )
        self.taken += len(items) + len(parked)
        self._position = last
        if hook is not None and timed:
            hook([seconds for _, seconds in timed])
        self.bus.ack(self.copy.name, self.topic, self._applied(last))
        return len(deliveries)

    def _mend(
        self, deliveries: list[Delivery], items: list[tuple[int, Event]]
    ) -> list[tuple[int, Event]]:
        """Apply the repairs among `items` (charter.reconcile.repair: an owner's state
        published again, which the copy takes at its own version too, or over a version the
        owner never reached); the other items are left to apply."""
        repairs = {d.position: d.event_id for d in deliveries if REPAIR_MARKER in d.event_id}
        if not repairs:
            return items
        mends = [
            Mend(
                e.entity_id,
                e.version,
                None if e.op == "deleted" else e.state,
                repair_over(repairs[at]),
            )
            for at, e in items
            if at in repairs
        ]
        self.store.mend(self.copy, mends)
        return [(at, e) for at, e in items if at not in repairs]

    def _skipped(self, position: int, deliveries: list[Delivery]) -> bool:
        """Whether events after `position` were compacted away: asked when the first
        delivery is not the next position (positions may be shared with other entities
        and notes, so usually nothing was lost), and every GAP_CHECK_S while idle."""
        if deliveries:
            if deliveries[0].position == position + 1:
                return False
        elif time.monotonic() - self._checked < GAP_CHECK_S:
            return False
        else:
            self._checked = time.monotonic()
        return position < self.bus.compacted(self.topic)

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
        lost = self.bus.compacted(self.topic)  # nothing at or below it is on the bus
        gap = checkpoint is not None and checkpoint.position < lost
        if checkpoint is None or checkpoint.fields != self.copy.fields or gap:
            # The fill stands for the whole copy, so it goes from where the whole copy is
            # (a lane may be ahead of the others); a second process filling at the same
            # time may leave the checkpoint lower than `position`, never higher. A new copy,
            # or one after a gap, goes from the head (or what was compacted, if the bus
            # holds nothing): what came before is in the owner's state it is filled from.
            whole = self.store.checkpoint(self.copy) if self.lane else checkpoint
            if gap:
                log.warning(
                    "copy %s: the bus no longer holds the %s events after %d, up to %d "
                    "(compacted before the copy applied them); filling it again",
                    self.copy.name,
                    self.entity.name,
                    checkpoint.position if checkpoint else 0,
                    lost,
                )
                whole = None
            position = whole.position if whole else max(self.bus.head(self.topic), lost)
            try:
                self.store.backfill(self.copy, self._snapshot(), position)
            except BackfillError as unreachable:  # then through the bus (charter.fills)
                mark = self._fill_mark(unreachable, position, lost)
                position = max(min(position, mark.start) if whole else mark.start, lost)
                self.store.backfill(self.copy, self._fill(mark), position)
            if gap:  # a fill only ever lowers the checkpoint; past the gap it goes up
                self.store.apply(self.copy, [], [], position)
            checkpoint = self.store.checkpoint(self.copy, self.lane) or Checkpoint(
                position, None, self.copy.fields
            )
        self.bus.ack(self.copy.name, self.topic, self._applied(checkpoint.position))
        return checkpoint.position

    def _snapshot(self) -> Iterator[tuple[str, int, Row]]:
        entity = self.entity
        try:
            if not entity.moves or self.owner_stores is None:
                for row in self.owner_store().rows(entity):
                    yield row["id"], row["version"], row
                return
            for owner in entity.owners:  # the old owner keeps what moved away: not those
                for row in self.owner_stores(owner).rows(entity):
                    if entity.holder(row["id"])[0] == owner:
                        yield row["id"], row["version"], row
        except Exception as exc:  # the owner's store is out of this process's reach
            raise BackfillError(str(exc)) from exc

    def _fill_mark(self, unreachable: BackfillError, position: int, lost: int) -> FillMark:
        """The owner's answer to this copy's fill request; asks (once) when there is none
        (or only one from before `lost`, what the bus compacted), and says what it waits
        for. Asking registers the copy on the bus at `position` (as far as it got, or the
        head), so that compaction keeps the fill until it is read."""
        entity, copy, owner = self.entity.name, self.copy.name, self.entity.owner
        request = fills.request_for(self.bus, entity, copy)
        if request is None or request.fields != self.copy.fields or request.since < lost:
            self.bus.ack(copy, self.topic, position)
            request = fills.ask(self.bus, entity, copy, self.copy.fields, position)
        mark = fills.mark_for(self.bus, entity, copy)
        if mark is None or mark.request != request.request:
            raise BackfillError(
                f"copy '{copy}' needs a first fill from the current {entity} records of "
                f"'{owner}', which this process cannot read ({_first_line(unreachable)}); it "
                f"asked for one on the bus, which the relay of '{owner}' answers within "
                "seconds when it runs (or run the copy's first drain once with credentials "
                f"that can read '{owner}')"
            ) from unreachable.__cause__
        return mark

    def _fill(self, mark: FillMark) -> Iterator[tuple[str, int, Row]]:
        """The records of a fill on the bus (and of the events between them, which only
        newer versions win over), read from the mark's start to its end. A fill the bus no
        longer holds whole fills nothing, and is asked for again; one it does not hand out
        now (a reconnect, say) is read again later."""
        seen, after = 0, mark.start
        while after < mark.end:
            deliveries = self.bus.fetch(self.copy.name, self.topic, after, self.batch)
            if not deliveries:
                if self.bus.head(self.topic) >= mark.end:
                    raise BackfillError(
                        f"copy '{self.copy.name}': the bus handed out its fill up to "
                        f"{after} of {mark.end} for now; reading it again"
                    )
                break  # the bus lost it: asked for again below
            for delivery in deliveries:
                if delivery.position > mark.end:
                    break
                seen += delivery.event_id.endswith(mark.suffix)
                try:
                    event = self._check(decode(delivery.body))
                except (EventError, ValidationError):
                    continue  # parked when it is read again after the fill
                if event.op != "deleted" and event.state is not None:
                    yield event.entity_id, event.version, event.state
            after = deliveries[-1].position
        if seen < mark.count:
            fills.ask(self.bus, self.entity.name, self.copy.name, self.copy.fields, mark.start)
            raise BackfillError(
                f"copy '{self.copy.name}': the bus holds {seen} of the {mark.count} records "
                f"of the fill '{self.entity.owner}' published (compacted meanwhile); "
                "asked for a new one."
            )

    def _check(self, event: Event) -> Event:
        return check(event, self.entity, self.owner_team, self._fields)


def _timed(
    deliveries: Sequence[Delivery], items: list[tuple[int, Event]]
) -> list[tuple[int, Event]]:
    """The items whose propagation is timed: not those published again long after their
    commit (a fill's, a carry-over's: their ids hold the fill's marker)."""
    again = {d.position for d in deliveries if FILL_MARKER in d.event_id}
    return [item for item in items if item[0] not in again] if again else items


def _latencies(items: Sequence[tuple[int, Event]]) -> list[tuple[int, float]]:
    """(position, seconds) of each event whose commit time can be read: now (the copy's
    commit, as near as the projector can tell) minus the owner's commit."""
    now = clock.time_ns()
    found: list[tuple[int, float]] = []
    seen, seconds = "", math.nan  # the events of one owner transaction share their time
    for position, event in items:
        if event.time != seen:
            seen, committed = event.time, latency.commit_ns(event.time)
            seconds = math.nan if committed is None else (now - committed) / 1e9
        if seconds == seconds:  # not NaN: the time could be read
            found.append((position, seconds))
    return found


def check(event: Event, entity: Entity, team: str, fields: list[Field]) -> Event:
    """`event` if a copy of `entity` with `fields` may apply it: about that entity, from its
    owner (G1, checked at the consumer too), with values that fit; else EventError."""
    where = f"event {event.id} (version {event.version})"
    if event.entity != entity.name:
        raise EventError(f"{where}: is about {event.entity}, this copy is of {entity.name}")
    owner, epoch = entity.holder(event.entity_id)
    if event.epoch > epoch:
        raise EventError(
            f"{where}: it is of epoch {event.epoch} (from '{event.owner}'), newer than this "
            f"charter knows for {entity.name} {event.entity_id} (epoch {epoch}, owner "
            f"'{owner}'): its ownership moved (charter transfer). Reload the charter (restart "
            "the projector), then `charter parked --retry`"
        )
    if event.epoch < epoch:
        raise EventError(
            f"{where}: it is of epoch {event.epoch}, but {entity.name} {event.entity_id} is "
            f"at epoch {epoch} (owner '{owner}' since the move): an event of an older epoch "
            "is not applied (G10: one writer per epoch)"
        )
    if event.owner != owner:
        raise EventError(
            f"{where}: its source is '{event.owner}', but {entity.name} "
            + (f"{event.entity_id} " if entity.moves else "")
            + f"is owned by '{owner}'"
            + (f" (team {team})" if team and owner == entity.owner else "")
            + (f" at epoch {epoch}" if entity.moves else "")
            + f", the only context whose {entity.name} events a copy applies. If '{owner}' "
            "did publish it, mend its source or the charter, then `charter parked --retry`"
        )
    if event.state is not None:
        for field in fields:
            value = event.state.get(field.name)
            if value is not None:
                try:
                    ENCODERS[field.type](entity.name, field, value)
                except ValidationError as exc:
                    raise EventError(f"{where}: {exc}") from None
    return event


def park(copy: Copy, delivery: Delivery, reason: str) -> Parked:
    """A delivery the copy cannot apply, named by what its body says, or when it cannot
    say, by what the bus knows (the event id, the record's id)."""
    entity_id, version, event_id = None, None, None
    try:
        doc = orjson.loads(delivery.body)
        entity_id, version, event_id = doc.get("subject"), doc.get("entityversion"), doc.get("id")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return Parked(
        copy.name,
        str(entity_id or delivery.subject or "?"),
        version if type(version) is int and 0 < version <= MAX_VERSION else 0,
        str(event_id or delivery.event_id or "?"),
        delivery.position,
        reason,
        delivery.body,
    )


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__
