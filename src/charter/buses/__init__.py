"""One module per transport, each behind the protocol in `base`."""

from __future__ import annotations

from charter.buses.base import Bus, Delivery


def open_bus(url: str, system: str) -> Bus:
    """The bus for a URL from the charter of the system named `system`."""
    if url.startswith("sqlite:///"):
        from charter.buses.sqlite import SQLiteBus

        return SQLiteBus(url)
    if url.startswith("nats://"):
        from charter.buses.nats import NatsBus

        return NatsBus(url, system)
    if url.startswith("memory://"):
        from charter.buses.memory import MemoryBus

        return MemoryBus(url)
    raise ValueError(f"no bus for '{url}' (supported: sqlite:///…, nats://…, memory://…)")


__all__ = ["Bus", "Delivery", "open_bus"]
