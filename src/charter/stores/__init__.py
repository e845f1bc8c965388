"""One module per database, each behind the protocol in `base`."""

from __future__ import annotations

from charter.boundary import driver, guard
from charter.stores.base import Store


def open_store(url: str, context: str = "") -> Store:
    """The store for a URL from the charter (of `context`, named in its errors). Its
    methods raise charter errors only (charter.boundary); the URL was checked by the
    charter's loader (charter.urls)."""
    what = f"the store of context '{context}'" if context else "the store"
    if url.startswith("sqlite:///"):
        from charter.stores.sqlite import SQLiteStore

        return guard(SQLiteStore(url), what, url, Store)
    if url.startswith(("postgresql://", "postgres://")):
        with driver(what, url):
            from charter.stores.postgres import PostgresStore

        return guard(PostgresStore(url), what, url, Store)
    if url.startswith("memory://"):
        from charter.stores.memory import MemoryStore

        return guard(MemoryStore(url), what, url, Store)
    raise ValueError(f"no store for '{url}' (supported: sqlite:///…, postgresql://…, memory://…)")


__all__ = ["Store", "open_store"]
