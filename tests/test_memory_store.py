"""The memory store (memory://) as a benchmark found it: a create must not read every
record to check a unique field, nor a copy's get every record of the copy, nor the relay
and projectors the whole outbox and bus log on every read, or a 100,000-change run on the
memory backend takes hours."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.runner import Runner
from charter.stores import memory
from charter.system import System
from tests.backends import MemoryBackend
from tests.conftest import SHOP


class CountingRows(dict[str, Any]):
    """A table that counts the records read by whole-table reads."""

    read = 0

    def items(self) -> Any:
        CountingRows.read += len(self)
        return super().items()

    def keys(self) -> Any:  # what dict(table) reads
        CountingRows.read += len(self)
        return super().keys()

    def values(self) -> Any:
        CountingRows.read += len(self)
        return super().values()

    def __iter__(self) -> Iterator[str]:
        CountingRows.read += len(self)
        return super().__iter__()


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    backend = MemoryBackend()
    urls = backend.urls(tmp_path)
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(**urls))
    with charter.load(path) as opened:
        yield opened
    backend.cleanup(urls)


def test_a_create_checks_a_unique_field_without_reading_every_record(system: System) -> None:
    ctx = system.context("customers")
    with ctx.transaction() as tx:
        for i in range(2000):
            tx.create("Customer", email=f"c{i}@x", name=f"N{i}", password_hash="h")
    data = memory._OPEN[memory._key(system.charter.contexts["customers"].store)]
    data.entities["Customer"] = CountingRows(data.entities["Customer"])
    CountingRows.read = 0
    for i in range(100):
        with ctx.transaction() as tx:
            tx.create("Customer", email=f"late{i}@x", name=f"L{i}", password_hash="h")
    assert CountingRows.read <= 2 * 2100  # an index built once; was 100 x 2,000 and more
    unique = pytest.raises(charter.ConstraintError, match="email must be unique")
    with unique, ctx.transaction() as tx:
        tx.create("Customer", email="c7@x", name="again", password_hash="h")
    with ctx.transaction() as tx:  # a value given up earlier in the same transaction is free
        first = tx.create("Customer", email="swap@x", name="S", password_hash="h")
        tx.update("Customer", first.id, email="swapped@x")
        tx.create("Customer", email="swap@x", name="T", password_hash="h")
        with pytest.raises(charter.ConstraintError, match="email must be unique"), tx.savepoint():
            tx.create("Customer", email="swapped@x", name="U", password_hash="h")
    assert {r["email"] for r in ctx.filter("Customer", name="T")} == {"swap@x"}


def test_a_copy_reads_one_record_without_reading_every_record(system: System) -> None:
    ctx = system.context("customers")
    with ctx.transaction() as tx:
        ids = [
            tx.create("Customer", email=f"c{i}@x", name=f"N{i}", password_hash="h").id
            for i in range(2000)
        ]
    Runner(system).drain()
    copy = system.context("orders").copy("order_customers")
    data = memory._OPEN[memory._key(system.charter.contexts["orders"].store)]
    data.copies["order_customers"] = CountingRows(data.copies["order_customers"])
    CountingRows.read = 0
    for entity_id in ids[:100]:
        found = copy.get(entity_id)
        assert found is not None and found.id == entity_id
    assert copy.get("no-such-id") is None
    assert CountingRows.read == 0  # was 100 x 2,000
    assert len(copy.filter(name="N7")) == 1


class ScannedList(list[Any]):
    """A log that counts how often it is read from its start."""

    scans = 0

    def __iter__(self) -> Iterator[Any]:
        ScannedList.scans += 1
        return super().__iter__()


def test_relay_and_projectors_read_from_where_they_are(system: System) -> None:
    ctx = system.context("customers")
    for batch in range(10):
        with ctx.transaction() as tx:
            for i in range(200):
                tx.create("Customer", email=f"c{batch}-{i}@x", name="N", password_hash="h")
    runner = Runner(system)
    runner.drain()
    store = memory._OPEN[memory._key(system.charter.contexts["customers"].store)]
    log = system.bus._log  # type: ignore[attr-defined]
    store.outbox = ScannedList(store.outbox)
    log.entities = {name: ScannedList(events) for name, events in log.entities.items()}
    ScannedList.scans = 0
    with ctx.transaction() as tx:
        tx.create("Customer", email="late@x", name="L", password_hash="h")
    moved = sum(worker.step() for worker in runner.workers)  # relay first, then the copies
    assert moved == 3  # relayed once, applied by each of two copies
    assert ScannedList.scans == 0  # each read scanned all 2,000 events before (compaction,
    # once a minute, still does)
    copy = system.context("orders").copy("order_customers")
    assert copy.get(ctx.filter("Customer", email="late@x")[0].id) is not None
