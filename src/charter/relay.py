"""Outbox → bus. At least once: the position moves only after the bus has the
events, and the bus drops an event id it already holds."""

from __future__ import annotations

from collections.abc import Callable

from charter.buses import Bus
from charter.signals import Signals
from charter.stores import Store
from charter.stores.base import OutboxRow


class Relay:
    def __init__(
        self,
        context: str,
        store: Store,
        bus: Bus,
        signals: Signals | None = None,
        batch: int = 1000,
    ) -> None:
        self.context, self.store, self.bus = context, store, bus
        self.signals, self.batch = signals, batch
        self._flight: tuple[list[OutboxRow], Callable[[], None]] | None = None

    @property
    def wake_key(self) -> str:
        return f"outbox:{self.context}"

    def step(self) -> int:
        """Move one batch; returns how many events moved (0: nothing to do).

        Under load the next batch is read while this one is on its way to the bus; it is
        sent once this one has landed (and been marked), so the bus gets them in order."""
        flight, self._flight = self._flight, None
        if flight is None:
            rows = self.store.pending(self.batch)
            if not rows:
                return 0
            flight = (rows, self.bus.publish_begin(rows))
        full = len(flight[0]) >= self.batch
        ahead = self.store.pending(self.batch, flight[0]) if full else []
        moved = self._land(flight)
        if ahead:
            self._flight = (ahead, self.bus.publish_begin(ahead))
        return moved

    def finish(self) -> None:
        """Wait for the batch on its way, if any (when stopping)."""
        flight, self._flight = self._flight, None
        if flight:
            self._land(flight)

    def _land(self, flight: tuple[list[OutboxRow], Callable[[], None]]) -> int:
        rows, published = flight
        published()  # raises if the bus did not take them all: they stay pending
        self.store.mark_relayed(rows)
        if self.signals is not None:
            for entity in {row.entity for row in rows}:
                self.signals.notify(f"bus:{entity}")
        return len(rows)

    def rewind(self, after: int = 0) -> None:
        """Publish again everything after `after`: heals a bus that lost acknowledged
        events (G7). The bus drops the ids it still has; copies skip what they applied."""
        self.store.rewind(after)
