"""Changing the charter of a system that already holds data, and keeping the bus bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

import charter
from charter.runner import declared_copies
from charter.system import System
from tests.conftest import assert_converged, edit


def fill(path: Path, count: int = 30) -> list[str]:
    with charter.load(path) as system:
        ids = []
        with system.context("customers").transaction() as tx:
            for i in range(count):
                ids.append(
                    tx.create("Customer", email=f"c{i}@x", name=f"C{i}", password_hash="h").id
                )
        charter.Runner(system).drain()
        return ids


def test_a_new_field_with_a_default_extends_a_table_with_rows(shop_file: Path) -> None:
    ids = fill(shop_file)
    edit(
        shop_file,
        "      name:    {type: string}\n",
        "      name:    {type: string}\n      tier:    {type: integer, default: 1}\n",
    )
    with charter.load(shop_file) as system:
        record = system.context("customers").get("Customer", ids[0])
        assert record is not None and record.tier == 1 and record.name == "C0"
        with system.context("customers").transaction() as tx:
            assert tx.update("Customer", ids[0], tier=3).version == 2


def test_a_new_entity_and_a_new_copy_are_backfilled_from_current_state(shop_file: Path) -> None:
    edit(shop_file, "retention: 1h", "retention: 0s")
    ids = fill(shop_file)
    with charter.load(shop_file) as system:  # the bus has forgotten every applied event
        assert system.bus.backlog("any", "Customer", 0).events == 0
        with system.context("customers").transaction() as tx:
            tx.update("Customer", ids[0], name="Renamed")
    with shop_file.open("a") as f:
        f.write(
            "  calendar_customers:\n    in: calendar\n    of: Customer\n"
            "    fields: [name, status]\n    window: 10s\n"
        )
    with charter.load(shop_file) as system:
        charter.Runner(system).drain()
        assert_converged(system)
        copy = system.context("calendar").copy("calendar_customers")
        assert len(copy) == 30
        assert copy.get(ids[0]).name == "Renamed"  # type: ignore[union-attr]
        assert copy.get(ids[0]).version == 2  # type: ignore[union-attr]


def test_a_new_field_in_an_existing_copy_is_filled_in(shop_file: Path) -> None:
    ids = fill(shop_file)
    with charter.load(shop_file) as system, system.context("customers").transaction() as tx:
        tx.update("Customer", ids[1], address="2 Road")
    edit(shop_file, "fields: [name, email]", "fields: [name, email, address]")
    with charter.load(shop_file) as system:
        charter.Runner(system).drain()
        assert_converged(system)
        row = system.context("orders").copy("order_customers").get(ids[1])
        assert row is not None and row.address == "2 Road" and row.version == 2


def test_changing_a_field_type_is_refused(shop_file: Path) -> None:
    fill(shop_file)
    edit(shop_file, "      name:    {type: string}", "      name:    {type: integer}")
    with charter.load(shop_file) as system, pytest.raises(charter.SchemaChangeError) as caught:
        system.store("customers")
    message = str(caught.value)
    assert "Customer.name changed type from string to integer" in message
    assert "30 rows" in message


def test_a_new_required_field_without_default_is_refused_when_rows_exist(shop_file: Path) -> None:
    fill(shop_file)
    edit(
        shop_file,
        "      name:    {type: string}\n",
        "      name:    {type: string}\n      phone:   {type: string}\n",
    )
    with charter.load(shop_file) as system, pytest.raises(charter.SchemaChangeError) as caught:
        system.store("customers")
    assert "phone is new and required" in str(caught.value)


def test_dropping_a_field_a_copy_uses_is_refused(shop_file: Path) -> None:
    fill(shop_file)
    edit(shop_file, "      email:   {type: string, unique: true}\n", "")
    with pytest.raises(charter.CharterError, match=r"unknown field Customer\.email"):
        charter.load(shop_file)


def test_the_bus_forgets_what_every_copy_applied_but_the_owner_keeps_history(
    shop_file: Path,
) -> None:
    edit(shop_file, "retention: 1h", "retention: 0s")
    ids = fill(shop_file, 20)
    with charter.load(shop_file) as system:
        assert system.bus.backlog("any", "Customer", 0).events == 0
        assert len(system.store("customers").outbox(0, 1000)) == 20
        assert [h.version for h in system.store("customers").history("Customer", ids[0])] == [1]


def test_the_bus_keeps_what_a_copy_has_not_applied(shop: System) -> None:
    runner = charter.Runner(shop, ["customers", "shipping"])  # orders' copy is not running
    with shop.context("customers").transaction() as tx:
        tx.create("Customer", email="a@x", name="A", password_hash="h")
    charter.Runner(shop, ["orders"]).drain()  # order_customers starts (backfill) before the rest
    with shop.context("customers").transaction() as tx:
        tx.create("Customer", email="b@x", name="B", password_hash="h")
    runner.drain()
    shop.bus.compact(0.0, declared_copies(shop.charter))
    assert shop.bus.backlog("any", "Customer", 0).events == 2  # order_customers has applied neither
    charter.Runner(shop, ["orders"]).drain()
    assert_converged(shop)
    shop.bus.compact(0.0, declared_copies(shop.charter))
    assert shop.bus.backlog("any", "Customer", 0).events == 0
