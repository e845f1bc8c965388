"""A copy whose projector may not read the owner's store is filled through the bus
(charter.fills), on every backend: the projector asks, the owner's relay answers, the copy
fills from the answer and goes on from there; a new field is filled the same way, and a fill
that compaction took away is asked for again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import charter
from charter import fills
from charter.errors import BackfillError
from charter.fills import FillMark
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
