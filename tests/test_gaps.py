"""What compaction keeps, whatever the bus says, on every backend (issue 8, defect 9):
every event a copy declared in the charter has not applied. A copy whose position the bus
lost keeps everything of its entity; a copy whose next events are gone all the same (its
position said more than its store had) shows GAP, never OK, and is filled again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from click.testing import CliRunner

import charter
from charter.buses.memory import MemoryBus
from charter.buses.nats import POSITION, NatsBus, note_subject
from charter.buses.sqlite import SQLiteBus
from charter.cli import main
from charter.runner import Runner, declared_copies
from charter.status import GAP, OK, copy_status
from charter.system import System
from tests.backends import Backend
from tests.conftest import assert_converged
from tests.test_fills import asks_for_a_fill, project, projector_charter, relay

COPY = "order_customers"


def create(system: System, *names: str) -> list[str]:
    with system.context("customers").transaction() as tx:
        return [tx.create("Customer", email=f"{n}@x", name=n, password_hash="h").id for n in names]


def forget_position(system: System, copy: str) -> None:
    """The bus no longer knows where `copy` is: what deleting its durable consumer did."""
    bus, entity = system.bus, system.charter.copies[copy].of
    if isinstance(bus, SQLiteBus):
        conn = sqlite3.connect(bus.url.removeprefix("sqlite:///"))
        with conn:
            conn.execute("DELETE FROM consumers WHERE consumer = ? AND entity = ?", (copy, entity))
        conn.close()
    elif isinstance(bus, MemoryBus):
        with bus._log.lock:
            bus._log.consumers.pop((copy, entity), None)
    else:
        assert isinstance(bus, NatsBus)
        subject = note_subject(bus._prefix, POSITION, entity, copy)
        bus._call(bus._api(f"STREAM.PURGE.{bus.stream}", {"filter": subject}), 10)


def compact(system: System) -> int:
    return system.bus.compact(0.0, declared_copies(system.charter))


def test_a_copy_whose_position_the_bus_lost_keeps_what_it_has_not_applied(
    shop_file: Path,
) -> None:
    with charter.load(shop_file) as shop:
        create(shop, "a", "b", "c")
        Runner(shop).drain()
    with charter.load(shop_file) as shop:
        forget_position(shop, COPY)
        create(shop, "d", "e")
        Runner(shop, ["customers", "shipping"]).drain()  # orders is down meanwhile
        compact(shop)
        late = copy_status(shop, shop.charter.copies[COPY])
        assert late.lag_events == 2, late  # not forgotten, so not "OK, lag 0"
    with charter.load(shop_file) as shop:
        Runner(shop, ["orders"]).drain()
        assert_converged(shop)
        assert all(s.state == OK and s.synced for s in charter.status(shop))


def lose_events_of(shop_file: Path) -> list[str]:
    """order_customers applies three customers, then misses two new ones and an update,
    which compaction forgets: its position on the bus says it applied them (as when its
    store was restored from a backup). Returns the ids."""
    with charter.load(shop_file) as shop:
        ids = create(shop, "a", "b", "c")
        Runner(shop).drain()
    with charter.load(shop_file) as shop:
        ids += create(shop, "d", "e")
        with shop.context("customers").transaction() as tx:
            tx.update("Customer", ids[0], name="a2")
        Runner(shop, ["customers", "shipping"]).drain()
        shop.bus.ack(COPY, "Customer", shop.bus.head("Customer"))  # more than it has
        assert compact(shop) > 0
    return ids


def test_a_copy_whose_next_events_were_compacted_shows_gap_and_is_filled_again(
    shop_file: Path,
) -> None:
    lose_events_of(shop_file)
    with charter.load(shop_file) as shop:
        gapped = copy_status(shop, shop.charter.copies[COPY])
        assert gapped.state == GAP and gapped.lag_events >= 1 and not gapped.synced
        assert copy_status(shop, shop.charter.copies["shipping_customers"]).state == OK
        strict = CliRunner().invoke(main, ["status", "--strict", "-f", str(shop_file)])
        assert strict.exit_code == 3 and "GAP" in strict.output, strict.output
    with charter.load(shop_file) as shop:
        Runner(shop, ["orders"]).drain()  # sees the gap and fills the copy again
        assert_converged(shop)
        assert all(s.state == OK and s.synced for s in charter.status(shop))
        create(shop, "f")  # and goes on from there
        Runner(shop).drain()
        assert_converged(shop)


def test_a_gap_is_filled_again_through_the_bus_when_the_owner_is_out_of_reach(
    shop_file: Path, backend: Backend
) -> None:
    lose_events_of(shop_file)
    projector = projector_charter(shop_file, backend)
    asks_for_a_fill(projector, contexts=("orders",))
    with charter.load(shop_file) as shop:
        relay(shop)  # the owner's relay answers
    project(projector)
    with charter.load(shop_file) as shop:
        assert_converged(shop)
        assert all(s.state == OK and s.synced for s in charter.status(shop))


def test_compaction_keeps_everything_for_a_declared_copy_that_never_ran(
    shop_file: Path,
) -> None:
    with charter.load(shop_file) as shop:
        create(shop, "a", "b")
        Runner(shop, ["customers", "shipping"]).drain()
        assert compact(shop) == 0  # order_customers never ran: no position, so all stays
        assert shop.bus.backlog("any", "Customer", 0).events == 2
        Runner(shop, ["orders"]).drain()
        head = shop.bus.head("Customer")
        assert compact(shop) == 2
        assert shop.bus.compacted("Customer") == head


def test_a_running_projector_sees_its_next_events_were_compacted(shop: System) -> None:
    orders = Runner(shop, ["orders"], relays=False)  # keeps its position in memory
    create(shop, "a")
    Runner(shop, ["customers"]).drain()
    orders.drain()
    create(shop, "b", "c")
    Runner(shop, ["customers", "shipping"]).drain()
    shop.bus.ack(COPY, "Customer", shop.bus.head("Customer"))  # more than it has
    assert compact(shop) > 0
    create(shop, "d")  # the next event it reads is after the gap
    Runner(shop, ["customers", "shipping"]).drain()
    orders.drain()  # does not just apply "d" and go on
    assert_converged(shop)
    assert all(s.state == OK and s.synced for s in charter.status(shop))
