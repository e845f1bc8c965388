"""The store + bus combinations the conformance suite runs on. A new database or
broker adds one Backend here; every test that takes `shop_file` then runs on it."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

CONTEXTS = ("customers", "orders", "shipping", "calendar")
POSTGRES = os.environ.get("CHARTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
NATS = os.environ.get("CHARTER_TEST_NATS", "nats://127.0.0.1:4222")


class Backend:
    """Where a test system keeps its stores and its bus."""

    name = "abstract"
    raw_error: type[Exception] = Exception
    processes = True  # its stores and bus can be shared by several processes

    def urls(self, folder: Path) -> dict[str, str]:
        """The charter name, each context's store URL and the bus URL, fresh for `folder`."""
        raise NotImplementedError

    def raw_execute(self, store_url: str, sql: str) -> None:
        """Run SQL on a store the way a careless script would: a plain connection, no charter."""
        raise NotImplementedError

    def cleanup(self, urls: dict[str, str]) -> None:
        """Remove what urls() made outside the test's folder."""

    def out_of_reach(self, store_url: str) -> str:
        """A URL of the same kind of store that this process cannot open (as a projector
        holding only its own context's credentials cannot open the owner's)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class SQLiteBackend(Backend):
    name = "sqlite"
    raw_error = sqlite3.DatabaseError

    def urls(self, folder: Path) -> dict[str, str]:
        urls = {ctx: f"sqlite:///{folder}/{ctx}.db" for ctx in CONTEXTS}
        urls["bus"] = f"sqlite:///{folder}/bus.db"
        urls["name"] = "shop"
        return urls

    def out_of_reach(self, store_url: str) -> str:
        return "sqlite:////dev/null/charter/store.db"  # no folder can be made there

    def raw_execute(self, store_url: str, sql: str) -> None:
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()


class PostgresBackend(Backend):
    """Each context in its own schema of one database; the bus as `bus_kind` says."""

    raw_error = psycopg.Error

    def __init__(self, bus_kind: str) -> None:
        self.bus_kind = bus_kind
        self.name = f"postgres+{bus_kind}"

    def urls(self, folder: Path) -> dict[str, str]:
        prefix = "t" + uuid.uuid4().hex[:10]
        urls = {ctx: f"{POSTGRES}?schema={prefix}_{ctx}" for ctx in CONTEXTS}
        urls["bus"] = f"sqlite:///{folder}/bus.db" if self.bus_kind == "sqlite" else NATS
        urls["name"] = f"shop_{prefix}"
        urls["prefix"] = prefix
        return urls

    def out_of_reach(self, store_url: str) -> str:
        parts = urlsplit(store_url)  # a role that does not exist
        return urlunsplit(parts._replace(netloc=f"charter_nobody@{parts.hostname}:{parts.port}"))

    def raw_execute(self, store_url: str, sql: str) -> None:
        base, _, schema = store_url.partition("?schema=")
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute(sql)  # type: ignore[arg-type]

    def cleanup(self, urls: dict[str, str]) -> None:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            for ctx in CONTEXTS:
                conn.execute(f'DROP SCHEMA IF EXISTS "{urls["prefix"]}_{ctx}" CASCADE')
        if self.bus_kind == "nats":
            from charter.buses.nats import NatsBus

            NatsBus.delete_stream(NATS, urls["name"])


class MemoryBackend(Backend):
    """The reference store and bus (memory://): shared by the threads of one process."""

    name = "memory"
    processes = False

    def urls(self, folder: Path) -> dict[str, str]:
        prefix = "t" + uuid.uuid4().hex[:10]
        urls = {ctx: f"memory://{prefix}/{ctx}" for ctx in CONTEXTS}
        urls["bus"] = f"memory://{prefix}/bus"
        urls["name"] = "shop"
        return urls

    def out_of_reach(self, store_url: str) -> str:
        import pytest

        pytest.skip("memory: no credentials to lack (charter.sim fills through its bus)")

    def cleanup(self, urls: dict[str, str]) -> None:
        from charter.buses import memory as memory_bus
        from charter.stores import memory as memory_store

        for ctx in CONTEXTS:
            memory_store.forget(urls[ctx])
        memory_bus.forget(urls["bus"])


BACKENDS: list[Backend] = [SQLiteBackend(), PostgresBackend("nats"), MemoryBackend()]
