"""Outbox → bus. At least once: the position moves only after the bus has the
events, and the bus drops an event id it already holds.

The relay also answers fill requests for copies of what its context owns (charter.fills):
a projector that may not read the owner's store fills its copy from there.

What goes on the bus for an entity under contract visibility is one event per copy, with
only that copy's fields, on the copy's topic (charter.visibility)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Collection, Sequence

from charter import clock, fills
from charter.buses import Bus
from charter.fills import FillMark, FillRequest
from charter.ids import uuid7
from charter.model import CONTRACT, Copy, Entity
from charter.records import CARRIED_MARKER, OutboxRow
from charter.signals import Signals
from charter.stores import Store
from charter.visibility import Routes, left_behind, narrow, topic_of

LEAD_RETRY_S = 0.5  # how often a relay standing by asks for the lead

log = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        context: str,
        store: Store,
        bus: Bus,
        signals: Signals | None = None,
        batch: int = 1000,
        copies: Sequence[tuple[Copy, Entity]] = (),
        owned: Sequence[Entity] = (),
    ) -> None:
        """`copies`: the copies of what this context owns; `owned`: what it owns (its
        visibility decides what goes on the bus; an entity not named goes out whole)."""
        self.context, self.store, self.bus = context, store, bus
        self.signals, self.batch = signals, batch
        self._flight: tuple[list[OutboxRow], Callable[[], None]] | None = None
        self._copies = list(copies)  # copies of what this context owns
        self.routes = Routes(owned, [copy for copy, _ in self._copies])
        self._moved = {e.name: e for e in owned if e.moves}  # ownership moved (G10)
        self._owned = list(owned)
        self._carried = False  # whether a change of visibility was looked for (carry_over)
        self._checked = 0.0  # when fill requests were last looked for
        self.holder = f"{context}:{uuid7()}"  # who this relay is, for the outbox's lead
        self._asked = -LEAD_RETRY_S  # when it last asked for the lead without getting it

    @property
    def wake_key(self) -> str:
        return f"outbox:{self.context}"

    def step(self) -> int:
        """Move one batch; returns how many events moved (0: nothing to do).

        Under load the next batch is read while this one is on its way to the bus; it is
        sent once this one has landed (and been marked), so the bus gets them in order."""
        if not self._leads():
            return 0
        flight, self._flight = self._flight, None
        filled = 0
        if not self._carried:  # first thing once it leads: nothing is in flight yet
            filled = self.carry_over()
            self._carried = True
        if flight is None and clock.monotonic() - self._checked >= fills.CHECK_EVERY_S:
            filled = self.answer_fill_requests()
        if flight is None:
            rows = self.store.pending(self.batch)
            if not rows:
                return filled
            flight = (rows, self._send(rows))
        full = len(flight[0]) >= self.batch
        ahead = self.store.pending(self.batch, flight[0]) if full else []
        moved = self._land(flight)
        if ahead:
            self._flight = (ahead, self._send(ahead))
        return filled + moved

    def _send(self, rows: Sequence[OutboxRow]) -> Callable[[], None]:
        """Start publishing what `rows` become on the bus (Routes)."""
        return self.bus.publish_begin(self.routes.outgoing(rows))

    def __del__(self) -> None:
        """A relay dropped without finish() does not keep the lead for its whole process."""
        with contextlib.suppress(Exception):
            self.store.release(self.holder)

    def _leads(self) -> bool:
        """Whether this relay leads its owner's outbox (Store.lead); a relay that does not
        stands by and asks again every LEAD_RETRY_S."""
        now = clock.monotonic()
        if now - self._asked < LEAD_RETRY_S:
            return False
        if self.store.lead(self.holder):
            return True
        self._asked = now
        return False

    def finish(self) -> None:
        """Wait for the batch on its way, if any, and give up the lead (when stopping)."""
        flight, self._flight = self._flight, None
        try:
            if flight:
                self._land(flight)
        finally:
            self.store.release(self.holder)

    def _land(self, flight: tuple[list[OutboxRow], Callable[[], None]]) -> int:
        rows, published = flight
        published()  # raises if the bus did not take them all: they stay pending
        self.store.mark_relayed(rows)
        if self.signals is not None:
            for entity in {row.entity for row in rows}:
                self.signals.notify(f"bus:{entity}")
        return len(rows)

    def answer_fill_requests(self) -> int:
        """Publish a fill for each copy whose newest request has none yet; returns how many
        records were published."""
        self._checked = clock.monotonic()
        published = 0
        for copy, entity in self._copies:
            request = fills.request_for(self.bus, entity.name, copy.name)
            if request is None:
                continue
            mark = fills.mark_for(self.bus, entity.name, copy.name)
            if mark is None or mark.request != request.request:
                published += self.fill(copy, entity, request)
        return published

    def fill(self, copy: Copy, entity: Entity, request: FillRequest) -> int:
        """Publish the owner's current state for `copy`, and where it is; returns how many
        records. The range starts where the copy registered when it asked, so events
        committed meanwhile, and another relay's answer to the same request, are in it too."""
        suffix = fills.fill_suffix(request.request)
        topic = topic_of(entity, copy)  # under contract visibility, only the copy's fields
        # (the head is 0 when compaction left nothing: then the range starts where it went)
        newest = max(self.bus.head(topic), self.bus.compacted(topic))
        start = min(request.since, newest)
        count, after = 0, ""
        while rows := self.store.current(entity, after, self.batch):
            if entity.visibility == CONTRACT:
                rows = [narrow(r, copy) for r in rows]
            self.bus.publish([dataclasses.replace(r, event_id=r.event_id + suffix) for r in rows])
            count, after = count + len(rows), rows[-1].entity_id
        end = self.bus.head(topic)
        mark = FillMark(request.request, request.fields, start, end, count)
        self.bus.put_note(fills.MARK, entity.name, copy.name, mark.encode())
        if self.signals is not None:
            self.signals.notify(f"bus:{entity.name}")
        return count

    def _still_mine(self, row: OutboxRow) -> bool:
        """Whether this context still owns the record of `row`: a record whose ownership
        moved away (charter transfer) is the new owner's to publish, and a copy parks an
        older epoch's event (G10)."""
        entity = self._moved.get(row.entity)
        return entity is None or entity.holder(row.entity_id)[0] == self.context

    def carry_over(self) -> int:
        """For each owned entity whose visibility changed since its last events went on the
        bus (charter.visibility.left_behind), publish each record's newest event again, on
        its new topics (`rewind`), so that no copy misses what went to the old ones. Returns
        how many events were sent again."""
        copies = {e.name: [c for c, of in self._copies if of.name == e.name] for e in self._owned}
        moved = [e for e in self._owned if left_behind(self.bus.head, e, copies[e.name])]
        if not moved:
            return 0
        for entity in moved:
            log.warning(
                "%s is now under %s visibility and its last events went to the topics of the "
                "other: publishing each record's newest event again on its new topics, so "
                "that its copies %s miss nothing",
                entity.name,
                entity.visibility,
                ", ".join(c.name for c in copies[entity.name]),
            )
        return self.rewind(entities={e.name for e in moved}, marker=CARRIED_MARKER)

    def rewind(
        self, after: int = 0, entities: Collection[str] | None = None, marker: str = ""
    ) -> int:
        """Publish again the newest event of every record changed after `after`: heals a
        bus that lost acknowledged events (G7). The bus drops the ids it still has; copies
        skip what they applied. Only the newest, and only where it was relayed already (a
        record with a newer event pending gets that one through the outbox, in order), so
        that no older version of a record goes on the bus after its delete: a copy that
        started after the delete would take it for a record it never saw (charter.sim
        found this). Run it while the owner's writers are still; returns how many events
        were sent again. `entities`: only theirs; `marker`: added to each event id."""
        newest: dict[tuple[str, str], OutboxRow] = {}
        while rows := self.store.outbox(after, self.batch):
            chosen = rows if entities is None else [r for r in rows if r.entity in entities]
            newest.update(((r.entity, r.entity_id), r) for r in chosen)
            after = rows[-1].seq
        waiting: list[OutboxRow] = []
        while more := self.store.pending(self.batch, waiting):
            waiting += more
        pending = {r.seq for r in waiting}
        again = sorted(
            (r for r in newest.values() if r.seq not in pending and self._still_mine(r)),
            key=lambda r: r.seq,
        )
        if marker:
            again = [dataclasses.replace(r, event_id=r.event_id + marker) for r in again]
        for start in range(0, len(again), self.batch):
            self.bus.publish(self.routes.outgoing(again[start : start + self.batch]))
        if self.signals is not None:
            for entity in {r.entity for r in again}:
                self.signals.notify(f"bus:{entity}")
        return len(again)
