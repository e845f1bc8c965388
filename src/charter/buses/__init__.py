"""One module per transport, each behind the protocol in `base`."""

from __future__ import annotations

from charter.buses.base import Bus, Delivery


def open_bus(url: str) -> Bus:
    """The bus for a URL from the charter."""
    if url.startswith("sqlite:///"):
        from charter.buses.sqlite import SQLiteBus

        return SQLiteBus(url)
    raise ValueError(f"no bus for '{url}' yet (supported: sqlite:///…)")


__all__ = ["Bus", "Delivery", "open_bus"]
