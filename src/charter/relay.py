"""Outbox → bus. At least once: the position moves only after the bus has the
events, and the bus drops an event id it already holds."""

from __future__ import annotations

from charter.buses import Bus
from charter.signals import Signals
from charter.stores import Store


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
        self._position: int | None = None

    @property
    def wake_key(self) -> str:
        return f"outbox:{self.context}"

    def step(self) -> int:
        """Move one batch; returns how many events moved (0: nothing to do)."""
        if self._position is None:
            self._position = self.store.relay_position()
        rows = self.store.outbox(self._position, self.batch)
        if not rows:
            return 0
        self.bus.publish(rows)
        self._position = rows[-1].seq
        self.store.set_relay_position(self._position)
        if self.signals is not None:
            for entity in {row.entity for row in rows}:
                self.signals.notify(f"bus:{entity}")
        return len(rows)

    def rewind(self, position: int = 0) -> None:
        """Publish again from `position`: heals a bus that lost acknowledged events (G7)."""
        self._position = position
