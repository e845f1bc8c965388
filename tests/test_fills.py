"""A copy whose projector may not read the owner's store is filled through the bus
(charter.fills), on every backend: the projector asks, the owner's relay answers, the copy
fills from the answer and goes on from there; a new field is filled the same way, and a fill
that compaction took away is asked for again."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import charter
from charter import fills
from charter.errors import BackfillError
from charter.fills import FillMark
from charter.relay import Relay
from charter.runner import Runner
from charter.system import System
from tests.backends import Backend
from tests.conftest import assert_converged, edit
from tests.workers import write_customers

COPIES = ("orders", "shipping")


def projector_charter(shop_file: Path, backend: Backend) -> Path:
    """The same charter as the copies' projector sees it: customers' store out of reach."""
    system = charter.load(shop_file)
    owner_url = system.charter.contexts["customers"].store
    system.close()
    path = shop_file.with_name("projector.yaml")
    text = shop_file.read_text().replace(owner_url, backend.out_of_reach(owner_url))
    path.write_text(text)
    return path


def relay(system: System) -> int:
    return Runner(system, ["customers"], projectors=False).drain()


def project(path: Path) -> None:
    with charter.load(path) as system:
        Runner(system, COPIES, relays=False).drain()


def asks_for_a_fill(
    path: Path, match: str = "asked for one on the bus", contexts: tuple[str, ...] = COPIES
) -> None:
    """Each copy's projector, on its own (a drain stops at the first error)."""
    with charter.load(path) as system:
        for context in contexts:
            with pytest.raises(BackfillError, match=match):
                Runner(system, [context], relays=False).drain()


def test_a_projector_that_cannot_read_the_owner_fills_its_copy_through_the_bus(
    shop: System, shop_file: Path, backend: Backend
) -> None:
    write_customers(shop, seed=31, transactions=120, per=(1, 4), keep=30)
    relay(shop)
    projector = projector_charter(shop_file, backend)
    asks_for_a_fill(projector)
    asks_for_a_fill(projector)  # asked once: still waiting for the same answer
    head = shop.bus.head("Customer")
    relay(shop)  # the owner answers: every live record, once per request
    published = shop.bus.head("Customer") - head
    assert published > 0
    relay(shop)
    assert shop.bus.head("Customer") - head == published, "a request is answered once"
    write_customers(shop, seed=32, transactions=60, per=(1, 4), keep=30)  # meanwhile
    relay(shop)
    project(projector)
    assert_converged(shop)
    write_customers(shop, seed=33, transactions=60, per=(1, 4), keep=30)  # and after
    relay(shop)
    project(projector)
    assert_converged(shop)
    assert all(state.synced and state.parked == 0 for state in charter.status(shop))


def test_a_new_field_is_filled_through_the_bus_too(shop_file: Path, backend: Backend) -> None:
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=41, transactions=80, per=(1, 4), keep=30)
        Runner(shop).drain()
    edit(shop_file, "fields: [name, email]", "fields: [name, email, address]")
    projector = projector_charter(shop_file, backend)
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=42, transactions=40, per=(1, 4), keep=30)
        relay(shop)
        asks_for_a_fill(projector, contexts=("orders",))  # only its copy has a new field
        with pytest.raises(BackfillError):
            project(projector)  # shipping's copy goes on meanwhile
        shipping = shop.context("shipping").copy("shipping_customers")
        assert len(shipping) == len(list(shop.context("customers").filter("Customer")))
        relay(shop)
        project(projector)
        assert_converged(shop)
        row = shop.context("orders").copy("order_customers")
        assert any(r.address for r in row), "the new field is filled in"


def test_a_fill_the_bus_no_longer_holds_whole_is_asked_for_again(
    shop_file: Path, backend: Backend
) -> None:
    """Asking registers the copy on the bus, so compaction keeps the fill (retention 0s
    here); a fill the bus lost part of anyway (its mark says more records than came) is
    asked for again, and the new answer fills the copy."""
    edit(shop_file, "retention: 1h", "retention: 0s")
    projector = projector_charter(shop_file, backend)
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=51, transactions=80, per=(1, 4), keep=30)
        relay(shop)
        asks_for_a_fill(projector)
        relay(shop)  # answers; its drain compacts what every registered copy applied
        mark = FillMark.decode(shop.bus.note(fills.MARK, "Customer", "order_customers") or b"")
        lost = dataclasses.replace(mark, count=mark.count + 1)
        shop.bus.put_note(fills.MARK, "Customer", "order_customers", lost.encode())
        asks_for_a_fill(projector, "asked for a new one", ("orders",))
        relay(shop)  # answers the new request
        project(projector)
        assert_converged(shop)


# -- two relays, duplicates, status and bad notes (found in review) --------------------


class _HookedStore:
    """The owner's store, with a hook run by the relay's fill as it reads each page."""

    def __init__(self, store: Any, hook: Callable[[str], None]) -> None:
        self._store, self._hook = store, hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def current(self, entity: Any, after: str = "", limit: int = 1000) -> Any:
        self._hook(after)
        return self._store.current(entity, after, limit)


def _answering_relay(system: System, hook: Callable[[str], None], batch: int = 1000) -> Relay:
    """The relay of customers that answers order_customers' fill requests, with a hook."""
    spec = system.charter
    only = [(spec.copies["order_customers"], spec.entities["Customer"])]
    store = _HookedStore(system.store("customers"), hook)
    return Relay("customers", store, system.bus, None, batch, only)  # type: ignore[arg-type]


def _order_copy_ids(system: System) -> set[str]:
    copy = system.charter.copies["order_customers"]
    return {row["id"] for row in system.store("orders").copy_rows(copy)}


def _create(system: System, *names: str) -> list[str]:
    ids = []
    for name in names:
        with system.context("customers").transaction() as tx:
            record = tx.create("Customer", email=f"{name}@x.org", name=name, password_hash="h")
            ids.append(record.id)
    return ids


def test_a_fill_holding_two_versions_of_a_record_fills_the_copy(
    shop_file: Path, backend: Backend
) -> None:
    """Another relay (another `charter run`) relays an update while the fill is being
    published: the fill's range holds two versions of that record, and the copy takes the
    newer (PostgreSQL refused the whole fill, every time, for good)."""
    projector = projector_charter(shop_file, backend)
    with charter.load(shop_file) as shop, charter.load(shop_file) as other:
        ids = _create(shop, "a", "b", "c")
        relay(shop)
        asks_for_a_fill(projector, contexts=("orders",))
        plain = Relay("customers", other.store("customers"), other.bus)

        def update_and_relay_elsewhere(after: str) -> None:
            if after == "":  # the fill has read nothing yet
                with shop.context("customers").transaction() as tx:
                    tx.update("Customer", ids[0], name="changed")
                while plain.step():
                    pass

        _answering_relay(shop, update_and_relay_elsewhere).answer_fill_requests()
        with charter.load(projector) as system:
            Runner(system, ["orders"], relays=False).drain()
        assert _order_copy_ids(shop) == set(ids)
        record = shop.context("orders").copy("order_customers").get(ids[0])
        assert record is not None and record.name == "changed"


def test_two_relays_answering_one_request_leave_no_record_out(
    shop_file: Path, backend: Backend
) -> None:
    """Relay A publishes `a`; relay B, which saw no mark yet, answers the same request too
    and writes the later mark; `b` changes in between. The copy must still get `a`, which
    only A's answer carried (B's repeat of it was dropped as a duplicate)."""
    projector = projector_charter(shop_file, backend)
    with charter.load(shop_file) as shop, charter.load(shop_file) as other:
        a, b = _create(shop, "a", "b")
        relay(shop)
        asks_for_a_fill(projector, contexts=("orders",))
        b_started, b_may_go = threading.Event(), threading.Event()

        def b_waits(after: str) -> None:
            if after == "":
                b_started.set()
                assert b_may_go.wait(30)

        relay_b = _answering_relay(other, b_waits)
        thread = threading.Thread(target=relay_b.answer_fill_requests)
        pages: list[str] = []

        def a_lets_b_in(after: str) -> None:
            pages.append(after)
            if len(pages) == 2:  # A has published `a` and is about to read `b`
                thread.start()
                assert b_started.wait(30)

        _answering_relay(shop, a_lets_b_in, batch=1).answer_fill_requests()
        with shop.context("customers").transaction() as tx:
            tx.update("Customer", b, name="b2")
        b_may_go.set()
        thread.join(30)
        relay(shop)
        with charter.load(projector) as system:
            Runner(system, ["orders"], relays=False).drain()
        assert _order_copy_ids(shop) == {a, b}


def test_a_fill_for_one_copy_does_not_make_the_others_look_late(
    shop_file: Path, backend: Backend
) -> None:
    """A fill's events keep their records' commit times; the lag of a copy that had applied
    everything is the fill's age, not the age of the oldest record."""
    edit(shop_file, "window: 1m", "window: 3s")  # shipping_customers
    projector = projector_charter(shop_file, backend)
    with charter.load(shop_file) as shop:
        _create(shop, "a", "b", "c")
        time.sleep(3.5)  # the records are now older than shipping's window
        relay(shop)
        Runner(shop, ["shipping"], relays=False).drain()
        asks_for_a_fill(projector, contexts=("orders",))
        relay(shop)  # answers the fill; nothing new was committed
        shipping = {s.copy: s for s in charter.status(shop)}["shipping_customers"]
        assert shipping.lag_events > 0 and shipping.state == "OK", shipping
        assert shipping.lag_s < 3.0


def test_an_unreadable_request_holds_up_no_other_copy(shop_file: Path, backend: Backend) -> None:
    projector = projector_charter(shop_file, backend)
    with charter.load(shop_file) as shop:
        _create(shop, "a")
        relay(shop)
        asks_for_a_fill(projector, contexts=("shipping",))
        shop.bus.put_note(fills.REQUEST, "Customer", "order_customers", b'{"request": "x"}')
        relay(shop)
        assert fills.mark_for(shop.bus, "Customer", "shipping_customers") is not None
        asks_for_a_fill(projector, contexts=("orders",))  # asks anew over the unreadable one
        relay(shop)
        project(projector)
        assert_converged(shop)
