"""The shipped contract suites (charter.testing), run on every store and every bus."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg

from charter.buses.base import Bus
from charter.buses.memory import MemoryBus
from charter.buses.memory import forget as forget_bus
from charter.buses.nats import NatsBus
from charter.buses.sqlite import SQLiteBus
from charter.stores.base import Store
from charter.stores.memory import MemoryStore
from charter.stores.memory import forget as forget_store
from charter.stores.postgres import PostgresStore
from charter.stores.sqlite import SQLiteStore
from charter.testing import BusContract, StoreContract
from tests.backends import NATS, POSTGRES

_FOLDER = Path(tempfile.mkdtemp(prefix="charter-contracts-"))


class TestMemoryStore(StoreContract):
    def make_store(self, name: str) -> Store:
        return MemoryStore(f"memory://contracts/{name}")

    def drop_store(self, store: Store) -> None:
        forget_store(store.url)


class TestSQLiteStore(StoreContract):
    def make_store(self, name: str) -> Store:
        return SQLiteStore(f"sqlite:///{_FOLDER}/{name}.db")


class TestPostgresStore(StoreContract):
    def make_store(self, name: str) -> Store:
        return PostgresStore(f"{POSTGRES}?schema={name}")

    def drop_store(self, store: Store) -> None:
        schema = store.url.rsplit("=", 1)[1]
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class TestMemoryBus(BusContract):
    def make_bus(self, system: str) -> Bus:
        return MemoryBus(f"memory://contracts/{system}")

    def drop_bus(self, bus: Bus, system: str) -> None:
        forget_bus(bus.url)


class TestSQLiteBus(BusContract):
    def make_bus(self, system: str) -> Bus:
        return SQLiteBus(f"sqlite:///{_FOLDER}/{system}.db")


class TestNatsBus(BusContract):
    def make_bus(self, system: str) -> Bus:
        return NatsBus(NATS, system)

    def drop_bus(self, bus: Bus, system: str) -> None:
        NatsBus.delete_stream(NATS, system)
