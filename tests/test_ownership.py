"""G1 single writer, and what an owner promises about ids, versions and values."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

import orjson
import pytest

import charter
from charter.records import OutboxRow
from charter.system import System
from tests.conftest import Backend, assert_converged, edit


def new_customer(system: System, email: str = "ada@example.com") -> charter.Record:
    with system.context("customers").transaction() as tx:
        return tx.create("Customer", email=email, name="Ada", password_hash="secret")


def test_non_owner_cannot_create_update_or_delete(shop: System) -> None:
    ada = new_customer(shop)
    orders = shop.context("orders")
    attempts = [
        lambda tx: tx.create("Customer", email="x@example.com", name="X", password_hash="h"),
        lambda tx: tx.update("Customer", ada.id, name="Eve"),
        lambda tx: tx.delete("Customer", ada.id),
    ]
    for attempt in attempts:
        with pytest.raises(charter.OwnershipError) as caught, orders.transaction() as tx:
            attempt(tx)
        message = str(caught.value)
        assert "customers" in message and "customer-team" in message and "orders" in message
    assert shop.context("customers").get("Customer", ada.id).name == "Ada"  # type: ignore[union-attr]


def test_non_owner_cannot_read_owner_table_through_the_api(shop: System) -> None:
    ada = new_customer(shop)
    with pytest.raises(charter.OwnershipError):
        shop.context("orders").get("Customer", ada.id)


@pytest.mark.sql
@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO order_customers (id, version, name, email, synced_at) "
        "VALUES ('x', 1, 'Mallory', 'm@example.com', '')",
        "UPDATE order_customers SET name = 'Mallory'",
        "DELETE FROM order_customers",
    ],
)
def test_raw_write_to_a_copy_is_refused_by_the_database(
    shop: System, backend: Backend, sql: str
) -> None:
    new_customer(shop)
    charter.Runner(shop).drain()
    with pytest.raises(backend.raw_error) as caught:
        backend.raw_execute(shop.charter.contexts["orders"].store, sql)
    message = str(caught.value)
    assert "customers" in message and "customer-team" in message
    assert [r.name for r in shop.context("orders").copy("order_customers")] == ["Ada"]


@pytest.mark.sql
def test_raw_write_to_an_owner_table_is_refused_because_it_would_skip_the_outbox(
    shop: System, backend: Backend
) -> None:
    new_customer(shop)
    with pytest.raises(backend.raw_error) as caught:
        backend.raw_execute(
            shop.charter.contexts["customers"].store, "UPDATE customer SET name='Z'"
        )
    assert "customer-team" in str(caught.value)


def test_private_fields_never_leave_the_owner(shop: System) -> None:
    ada = new_customer(shop)
    with shop.context("customers").transaction() as tx:
        tx.update("Customer", ada.id, password_hash="rotated", name="Ada L")
    charter.Runner(shop).drain()
    for row in shop.store("customers").history("Customer", ada.id):
        event = orjson.loads(row.body)
        assert "password_hash" not in event["data"]
        assert "password_hash" not in event["changedfields"]
        assert b"secret" not in row.body and b"rotated" not in row.body
    copy = shop.context("orders").copy("order_customers").get(ada.id)
    assert copy is not None and "password_hash" not in copy
    with pytest.raises(AttributeError):
        _ = copy.password_hash


def test_copy_is_read_only_and_rows_carry_version_and_sync_time(shop: System) -> None:
    ada = new_customer(shop)
    with shop.context("customers").transaction() as tx:
        tx.update("Customer", ada.id, email="ada@lovelace.org")
    charter.Runner(shop).drain()
    reader = shop.context("orders").copy("order_customers")
    for name in ("create", "update", "delete", "transaction"):
        assert not hasattr(reader, name)
    row = reader.get(ada.id)
    assert row is not None
    assert row.version == 2 and row.email == "ada@lovelace.org"
    assert isinstance(row.synced_at, dt.datetime)
    assert [r.id for r in reader.filter(email="ada@lovelace.org")] == [ada.id]
    assert reader.filter(email="nobody@example.com") == []
    assert len(reader) == 1 and [r.id for r in reader] == [ada.id]
    with pytest.raises(charter.ValidationError):
        reader.filter(password_hash="x")


def test_versions_count_up_and_ids_are_time_ordered(shop: System) -> None:
    customers = shop.context("customers")
    ids = []
    for i in range(50):
        with customers.transaction() as tx:
            ids.append(tx.create("Customer", email=f"c{i}@x", name="C", password_hash="h").id)
    assert ids == sorted(ids) and len(set(ids)) == 50
    for version in (2, 3, 4):
        with customers.transaction() as tx:
            record = tx.update("Customer", ids[0], name=f"C{version}")
        assert record.version == version
    history = shop.store("customers").history("Customer", ids[0])
    assert [h.version for h in history] == [1, 2, 3, 4]
    assert [h.op for h in history] == ["created", "updated", "updated", "updated"]
    assert history[1].changed == ("name",)


def test_an_update_that_changes_nothing_makes_no_version(shop: System) -> None:
    ada = new_customer(shop)
    with shop.context("customers").transaction() as tx:
        same = tx.update("Customer", ada.id, name="Ada")
    assert same.version == 1
    assert len(shop.store("customers").history("Customer", ada.id)) == 1


def test_expected_version_that_no_longer_matches_is_a_conflict(shop: System) -> None:
    ada = new_customer(shop)
    customers = shop.context("customers")
    with customers.transaction() as tx:
        tx.update("Customer", ada.id, name="Ada B", expected_version=1)
    conflict = pytest.raises(charter.ConflictError, match="version 2, not the expected 1")
    with conflict, customers.transaction() as tx:
        tx.update("Customer", ada.id, name="Ada C", expected_version=1)
    with pytest.raises(charter.ConflictError), customers.transaction() as tx:
        tx.delete("Customer", ada.id, expected_version=1)
    with pytest.raises(charter.NotFoundError), customers.transaction() as tx:
        tx.update("Customer", "0190a0a0-0000-7000-8000-000000000000", name="nobody")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"email": 42, "name": "A", "password_hash": "h"}, "Customer.email: expected a string"),
        ({"name": "A", "password_hash": "h"}, "Customer.email is required"),
        ({"email": "a@x", "name": "A", "password_hash": "h", "status": "gone"}, "not one of"),
        ({"email": "a@x", "name": "A", "password_hash": "h", "nick": "a"}, "has no field nick"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(
    shop: System, fields: dict[str, object], message: str
) -> None:
    customers = shop.context("customers")
    with pytest.raises(charter.ValidationError, match=message), customers.transaction() as tx:
        tx.create("Customer", **fields)
    assert shop.store("customers").outbox(0, 10) == []


def test_timestamps_need_a_time_zone_and_ranges_must_be_ordered(shop: System) -> None:
    calendar = shop.context("calendar")
    user = "0190a0a0-0000-7000-8000-000000000001"
    naive = dt.datetime(2026, 1, 1, 9)
    with pytest.raises(charter.ValidationError, match="no time zone"), calendar.transaction() as tx:
        tx.create("Appointment", user_id=user, starts_at=naive, ends_at=naive)
    start = dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC)
    with (
        pytest.raises(charter.ValidationError, match="must be before"),
        calendar.transaction() as tx,
    ):
        tx.create("Appointment", user_id=user, starts_at=start, ends_at=start)


def test_unique_and_no_overlap_are_enforced_by_the_owner(shop: System) -> None:
    new_customer(shop, "ada@example.com")
    with pytest.raises(charter.ConstraintError, match="email must be unique"):
        new_customer(shop, "ada@example.com")
    calendar = shop.context("calendar")
    user = "0190a0a0-0000-7000-8000-000000000001"
    nine = dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC)
    hour = dt.timedelta(hours=1)
    with calendar.transaction() as tx:
        tx.create("Appointment", user_id=user, starts_at=nine, ends_at=nine + hour)
        tx.create("Appointment", user_id=user, starts_at=nine + hour, ends_at=nine + 2 * hour)
    with pytest.raises(charter.ConstraintError, match="no_overlap"), calendar.transaction() as tx:
        tx.create("Appointment", user_id=user, starts_at=nine + hour / 2, ends_at=nine + hour)
    other = "0190a0a0-0000-7000-8000-000000000002"
    with calendar.transaction() as tx:  # another user may have the same slot
        tx.create("Appointment", user_id=other, starts_at=nine, ends_at=nine + hour)


def test_refused_transactions_leave_the_store_usable(shop: System) -> None:
    """Many refusals in a row, each with changes queued behind the one refused, and the
    store still commits the same shapes of transaction (on PostgreSQL those changes go in
    one statement or one pipeline, which the refusal aborts half-way)."""
    customers = shop.context("customers")
    ada = new_customer(shop, "ada@example.com")

    def fresh(tx: charter.Transaction, n: str) -> str:
        return tx.create("Customer", name=n, email=f"{n}@example.com", password_hash="x").id

    for attempt in range(12):
        with (
            pytest.raises(charter.ConstraintError, match="email must be unique"),
            customers.transaction() as tx,
        ):
            created = fresh(tx, f"f{attempt}")
            tx.create("Customer", name="Copy", email="ada@example.com", password_hash="x")
            if attempt % 2:  # an update queued behind the refused create
                tx.update("Customer", created, name="renamed")
    for number in range(12):
        with customers.transaction() as tx:
            created = fresh(tx, f"g{number}")
            if number % 2:
                tx.update("Customer", created, name="renamed")
            tx.update("Customer", ada.id, name=f"Ada {number}")
    assert customers.get("Customer", ada.id)["name"] == "Ada 11"
    assert len(customers.filter("Customer")) == 13
    assert len(customers.filter("Customer", name="renamed")) == 6


def test_an_owner_finds_its_records_by_field(shop: System) -> None:
    ada = new_customer(shop, "ada@example.com")
    new_customer(shop, "bob@example.com")
    customers = shop.context("customers")
    assert [r.id for r in customers.filter("Customer", email="ada@example.com")] == [ada.id]
    assert len(customers.filter("Customer", status="active")) == 2
    assert customers.filter("Customer", email="nobody@example.com") == []
    with pytest.raises(charter.ValidationError):
        customers.filter("Customer", nick="a")
    with pytest.raises(charter.OwnershipError):
        shop.context("orders").filter("Customer", email="ada@example.com")


# -- a refused change fails the whole transaction; a savepoint lets the caller go on ------

ROLLED_BACK = "the transaction was rolled back and nothing was committed"


def customers_named(system: System) -> set[str]:
    return {r.name for r in system.context("customers").filter("Customer")}


def outbox_names(system: System) -> list[tuple[str, int, str]]:
    """(name, version, op) of every event in the customers' outbox, in commit order."""
    names = []
    for row in shop_outbox(system):
        state = orjson.loads(row.body)["data"] or {}
        names.append((state.get("name", "-"), row.version, row.op))
    return names


def shop_outbox(system: System) -> list[OutboxRow]:
    return system.store("customers").outbox(0, 1000)


def test_a_refusal_caught_inside_a_transaction_still_rolls_all_of_it_back(shop: System) -> None:
    """The caller catches the refused create and goes on; at the `with` exit the whole
    transaction fails, naming the refusal, and nothing of it is committed: no row, no
    event (on SQLite the refusal comes from the create, on PostgreSQL from the commit)."""
    ada = new_customer(shop, "ada@example.com")
    customers = shop.context("customers")
    refused = pytest.raises(charter.ConstraintError, match=ROLLED_BACK)
    with refused as caught, customers.transaction() as tx:
        tx.create("Customer", email="bob@example.com", name="Bob", password_hash="h")
        tx.update("Customer", ada.id, name="Ada L")
        with contextlib.suppress(charter.ConstraintError):  # "we go on without Eve"
            tx.create("Customer", email="ada@example.com", name="Eve", password_hash="h")
        tx.create("Customer", email="cy@example.com", name="Cy", password_hash="h")
    assert "email must be unique" in str(caught.value)
    assert customers_named(shop) == {"Ada"}
    assert outbox_names(shop) == [("Ada", 1, "created")]
    charter.Runner(shop).drain()
    assert [r.name for r in shop.context("orders").copy("order_customers")] == ["Ada"]


def test_a_refusal_caught_around_a_savepoint_of_a_change_made_before_it_fails_it_all(
    shop: System,
) -> None:
    """The refused create is outside the savepoint: on SQLite it raises at once, on
    PostgreSQL when entering the savepoint sends it. Either way it is not the savepoint's
    refusal, and the transaction cannot commit."""
    new_customer(shop, "ada@example.com")
    customers = shop.context("customers")
    refused = pytest.raises(charter.ConstraintError, match=ROLLED_BACK)
    with refused, customers.transaction() as tx:
        tx.create("Customer", email="bob@example.com", name="Bob", password_hash="h")
        with contextlib.suppress(charter.ConstraintError):
            tx.create("Customer", email="ada@example.com", name="Eve", password_hash="h")
            with tx.savepoint():
                tx.create("Customer", email="dan@example.com", name="Dan", password_hash="h")
        tx.create("Customer", email="cy@example.com", name="Cy", password_hash="h")
    assert customers_named(shop) == {"Ada"}
    assert outbox_names(shop) == [("Ada", 1, "created")]


def test_a_refusal_of_a_check_made_before_the_store_also_fails_the_transaction(
    shop: System,
) -> None:
    ada = new_customer(shop)
    customers = shop.context("customers")
    with pytest.raises(charter.ConflictError, match=ROLLED_BACK), customers.transaction() as tx:
        tx.create("Customer", email="bob@example.com", name="Bob", password_hash="h")
        with contextlib.suppress(charter.ConflictError):
            tx.update("Customer", ada.id, name="Ada L", expected_version=7)
    assert customers_named(shop) == {"Ada"}


def test_a_savepoint_undoes_only_its_refused_part_and_the_rest_commits(shop: System) -> None:
    ada = new_customer(shop, "ada@example.com")
    customers = shop.context("customers")
    with customers.transaction() as tx:
        tx.create("Customer", email="bob@example.com", name="Bob", password_hash="h")
        refused = pytest.raises(charter.ConstraintError, match="email must be unique")
        with refused, tx.savepoint():
            tx.create("Customer", email="dan@example.com", name="Dan", password_hash="h")
            tx.update("Customer", ada.id, name="Ada in the savepoint")
            tx.create("Customer", email="ada@example.com", name="Eve", password_hash="h")
        tx.update("Customer", ada.id, name="Ada L")  # version 2: the savepoint's is undone
        tx.create("Customer", email="cy@example.com", name="Cy", password_hash="h")
    assert customers_named(shop) == {"Ada L", "Bob", "Cy"}
    assert customers.get("Customer", ada.id).version == 2  # type: ignore[union-attr]
    assert outbox_names(shop) == [
        ("Ada", 1, "created"),
        ("Bob", 1, "created"),
        ("Ada L", 2, "updated"),
        ("Cy", 1, "created"),
    ]
    charter.Runner(shop).drain()
    copy = shop.context("orders").copy("order_customers")
    assert sorted(r.name for r in copy) == ["Ada L", "Bob", "Cy"]


def test_nested_savepoints_undo_the_inner_one_alone_or_both(shop: System) -> None:
    new_customer(shop, "ada@example.com")
    customers = shop.context("customers")

    def create(tx: charter.Transaction, name: str, email: str | None = None) -> None:
        tx.create("Customer", email=email or f"{name}@example.com", name=name, password_hash="h")

    with customers.transaction() as tx:
        create(tx, "Bob")
        with tx.savepoint():
            create(tx, "Cy")
            with pytest.raises(charter.ConstraintError), tx.savepoint():
                create(tx, "Dan")
                create(tx, "Eve", "ada@example.com")
            create(tx, "Fay")
        with pytest.raises(charter.ConstraintError), tx.savepoint():
            create(tx, "Gus")
            with tx.savepoint():
                create(tx, "Hal")
            create(tx, "Ivy", "Bob@example.com")  # refused: Gus and Hal go with it
        create(tx, "Jo")
    assert customers_named(shop) == {"Ada", "Bob", "Cy", "Fay", "Jo"}
    assert [n for n, _, _ in outbox_names(shop)] == ["Ada", "Bob", "Cy", "Fay", "Jo"]


def test_a_refused_update_inside_a_savepoint_leaves_the_record_as_it_was(shop: System) -> None:
    """The update is refused by the store (`no_overlap`, and `unique`): the record keeps its
    version and values, the transaction goes on and updates it again."""
    calendar = shop.context("calendar")
    user = "0190a0a0-0000-7000-8000-000000000001"
    nine = dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC)
    hour = dt.timedelta(hours=1)
    with calendar.transaction() as tx:
        first = tx.create("Appointment", user_id=user, starts_at=nine, ends_at=nine + hour)
        second = tx.create(
            "Appointment", user_id=user, starts_at=nine + hour, ends_at=nine + 2 * hour
        )
    with calendar.transaction() as tx:
        with pytest.raises(charter.ConstraintError, match="no_overlap"), tx.savepoint():
            tx.update("Appointment", second.id, starts_at=nine + hour / 2)
        moved = tx.update("Appointment", second.id, ends_at=nine + 3 * hour)
        assert moved.version == 2 and moved.starts_at == nine + hour
    record = calendar.get("Appointment", second.id)
    assert record is not None and record.version == 2
    assert (record.starts_at, record.ends_at) == (nine + hour, nine + 3 * hour)
    assert calendar.get("Appointment", first.id).version == 1  # type: ignore[union-attr]
    history = shop.store("calendar").history("Appointment", second.id)
    assert [(h.version, h.changed) for h in history] == [
        (1, ("user_id", "starts_at", "ends_at", "status")),
        (2, ("ends_at",)),
    ]
    ada, bob = new_customer(shop, "ada@example.com"), new_customer(shop, "bob@example.com")
    with shop.context("customers").transaction() as tx:
        with pytest.raises(charter.ConstraintError, match="unique"), tx.savepoint():
            tx.update("Customer", bob.id, email="ada@example.com")
        tx.update("Customer", bob.id, name="Bob B")
    assert shop.context("customers").get("Customer", bob.id).email == "bob@example.com"  # type: ignore[union-attr]
    assert shop.context("customers").get("Customer", ada.id).version == 1  # type: ignore[union-attr]


def test_a_refusal_caught_inside_a_savepoint_fails_the_savepoint(shop: System) -> None:
    new_customer(shop, "ada@example.com")
    customers = shop.context("customers")
    with customers.transaction() as tx:
        tx.create("Customer", email="bob@example.com", name="Bob", password_hash="h")
        # the first refusal names the error: a ValidationError, saying what was refused
        refused = pytest.raises(charter.ValidationError, match=r"savepoint was rolled back.*gone")
        with refused, tx.savepoint():
            tx.create("Customer", email="cy@example.com", name="Cy", password_hash="h")
            with contextlib.suppress(charter.ValidationError):
                tx.create("Customer", email="x@example.com", name="X", status="gone")
            with contextlib.suppress(charter.ConstraintError):
                tx.create("Customer", email="ada@example.com", name="E", password_hash="h")
    assert customers_named(shop) == {"Ada", "Bob"}


# -- no_overlap leaves out what its `unless` says (a cancelled appointment) ------------------

NINE = dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
USER = "0190a0a0-0000-7000-8000-000000000001"


def book(system: System, starts: dt.datetime, **fields: object) -> charter.Record:
    with system.context("calendar").transaction() as tx:
        return tx.create(
            "Appointment", user_id=USER, starts_at=starts, ends_at=starts + HOUR, **fields
        )


def test_a_cancelled_slot_can_be_rebooked_but_not_uncancelled_into_an_overlap(
    shop: System,
) -> None:
    first = book(shop, NINE)
    with pytest.raises(charter.ConstraintError, match="no_overlap"):
        book(shop, NINE + HOUR / 2)
    calendar = shop.context("calendar")
    with calendar.transaction() as tx:
        tx.update("Appointment", first.id, status="cancelled")
    again = book(shop, NINE + HOUR / 2)  # the cancelled one no longer holds the slot
    book(shop, NINE - HOUR / 2, status="cancelled")  # a cancelled record overlaps freely
    with pytest.raises(charter.ConstraintError, match="no_overlap"):  # noqa: SIM117
        with calendar.transaction() as tx:
            tx.update("Appointment", first.id, status="booked")
    assert calendar.get("Appointment", first.id).status == "cancelled"  # type: ignore[union-attr]
    with calendar.transaction() as tx:
        tx.update("Appointment", again.id, status="cancelled")
        tx.update("Appointment", first.id, status="booked")  # free again: un-cancelled
    assert {r.id: r.status for r in calendar.filter("Appointment", status="booked")} == {
        first.id: "booked"
    }


def test_changing_a_no_overlap_condition_remakes_it_in_the_store(shop_file: Path) -> None:
    """Without `unless` the cancelled record holds its slot; with it, it does not; and the
    stricter rule again is refused while records that break it are stored."""
    edit(shop_file, ", unless: {status: [cancelled]}", "")
    with charter.load(shop_file) as system:
        first = book(system, NINE, status="cancelled")
        with pytest.raises(charter.ConstraintError, match="no_overlap"):
            book(system, NINE)
    edit(
        shop_file,
        "range: [starts_at, ends_at]}",
        "range: [starts_at, ends_at], unless: {status: [cancelled]}}",
    )
    with charter.load(shop_file) as system:
        book(system, NINE)
        with pytest.raises(charter.ConstraintError, match="no_overlap"):
            book(system, NINE + HOUR / 2)
    edit(shop_file, ", unless: {status: [cancelled]}", "")
    system = charter.load(shop_file)
    try:  # the cancelled record and the booked one overlap: the old rule cannot come back
        with pytest.raises(charter.SchemaChangeError, match=r"no_overlap \(per user_id"):
            system.context("calendar").get("Appointment", first.id)
    finally:
        system.close()


# -- the owner's history says who changed what; private changes by name, never published --


def test_a_transaction_names_its_actor_in_the_history_and_in_each_event(shop: System) -> None:
    with shop.context("customers").transaction(actor="support:grace") as tx:
        ada = tx.create("Customer", email="ada@example.com", name="Ada", password_hash="s")
        tx.update("Customer", ada.id, name="Ada L")
    unnamed = new_customer(shop, "bob@example.com")
    history = shop.store("customers").history("Customer", ada.id)
    assert [(h.version, h.actor) for h in history] == [(1, "support:grace"), (2, "support:grace")]
    assert all(orjson.loads(h.body)["actor"] == "support:grace" for h in history)
    [bob] = shop.store("customers").history("Customer", unnamed.id)
    assert bob.actor is None and "actor" not in orjson.loads(bob.body)
    with pytest.raises(charter.ValidationError, match="actor"):
        shop.context("customers").transaction(actor="").__enter__()
    charter.Runner(shop).drain()
    assert shop.context("orders").copy("order_customers").get(ada.id).name == "Ada L"  # type: ignore[union-attr]


def test_a_change_of_private_fields_only_is_in_the_history_by_name_and_published_without_it(
    shop: System,
) -> None:
    """The version moves (so every copy follows it) and its event carries no private name
    or value; the owner's history says which private field changed."""
    ada = new_customer(shop)
    with shop.context("customers").transaction() as tx:
        tx.update("Customer", ada.id, password_hash="rotated")
    first, second = shop.store("customers").history("Customer", ada.id)
    assert (first.private, second.private) == (("password_hash",), ("password_hash",))
    assert second.version == 2 and second.changed == ()
    event = orjson.loads(second.body)
    assert event["changedfields"] == "" and "password_hash" not in event["data"]
    assert b"password_hash" not in second.body and b"rotated" not in second.body
    charter.Runner(shop).drain()
    assert shop.context("orders").copy("order_customers").get(ada.id).version == 2  # type: ignore[union-attr]


@pytest.mark.sql
def test_an_outbox_from_before_actors_gets_its_new_columns_and_keeps_its_rows(
    shop_file: Path, backend: Backend
) -> None:
    with charter.load(shop_file) as system:
        ada = new_customer(system)
        store_url = system.charter.contexts["customers"].store
    for column in ("actor", "private_changed"):  # as a store made by the last release
        backend.raw_execute(store_url, f"ALTER TABLE charter_outbox DROP COLUMN {column}")
    if "postgresql" in store_url:  # its tables were made for another charter_outbox
        backend.raw_execute(store_url, "DELETE FROM charter_meta")
    with charter.load(shop_file) as system:
        with system.context("customers").transaction(actor="ops") as tx:
            tx.update("Customer", ada.id, name="Ada L", password_hash="new")
        history = system.store("customers").history("Customer", ada.id)
        assert [(h.version, h.actor, h.private) for h in history] == [
            (1, None, ()),
            (2, "ops", ("password_hash",)),
        ]
        charter.Runner(system).drain()
        assert_converged(system)
