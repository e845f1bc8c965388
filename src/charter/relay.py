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

    @property
    def wake_key(self) -> str:
        return f"outbox:{self.context}"

    def step(self) -> int:
        """Move one batch; returns how many events moved (0: nothing to do)."""
        rows = self.store.pending(self.batch)
        if not rows:
            return 0
        self.bus.publish(rows)
        self.store.mark_relayed(rows)
        if self.signals is not None:
            for entity in {row.entity for row in rows}:
                self.signals.notify(f"bus:{entity}")
        return len(rows)

    def rewind(self, after: int = 0) -> None:
        """Publish again everything after `after`: heals a bus that lost acknowledged
        events (G7). The bus drops the ids it still has; copies skip what they applied."""
        self.store.rewind(after)
