"""One module per database, each behind the protocol in `base`."""

from __future__ import annotations

from charter.stores.base import Store


def open_store(url: str) -> Store:
    """The store for a URL from the charter."""
    if url.startswith("sqlite:///"):
        from charter.stores.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from charter.stores.postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("memory://"):
        from charter.stores.memory import MemoryStore

        return MemoryStore(url)
    raise ValueError(f"no store for '{url}' (supported: sqlite:///…, postgresql://…, memory://…)")


__all__ = ["Store", "open_store"]
