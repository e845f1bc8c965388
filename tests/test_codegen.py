"""`charter codegen --context NAME`: each context's own nouns as typed, frozen dataclasses
(what it owns, written through its transactions; each copy it keeps, read-only, only its
fields), mypy --strict clean, never describing another context's private fields; and the
readers return them (`as_=`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

import charter
from charter import ConflictError, ValidationError, model
from charter.cli import main
from charter.codegen import generate
from charter.demo import SHOP_CHARTER
from charter.runner import Runner
from charter.system import System

PRIVATE = "password_hash"  # the shop's one private field, Customer's (owned by customers)

# names that Python or the generated module use, as field, entity and copy names
ODD = r'''
charter: 1
name: odd
contexts:
  a: {team: t}
  b: {team: u}
  empty: {team: v}
entities:
  Thing:
    owner: a
    why: 'has "quotes", a \ backslash and """ three quotes'
    fields:
      from:     {type: uuid, required: false}
      update:   {type: string}
      uuid:     {type: uuid}
      str:      {type: integer}
      datetime: {type: date, required: false}
      flag:     {type: boolean, default: false}
      kind:     {type: enum, values: [x, "it's"]}
      secret:   {type: text, private: true}
copies:
  things:
    in: b
    of: Thing
    fields: [from, update, uuid, str, kind, datetime, flag]
    window: 500ms
'''


def _charters(tmp_path: Path) -> dict[str, model.Charter]:
    return {
        "shop": model.loads(SHOP_CHARTER, tmp_path / "charter.yaml"),
        "odd": model.loads(ODD, tmp_path / "odd.yaml"),
    }


def _mypy(*files: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(cache),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=files[0].parent,
        env={**os.environ, "MYPYPATH": str(Path(charter.__file__).resolve().parents[1])},
    )


USER = '''\
"""A service of context orders, typed by the models charter codegen wrote."""

from __future__ import annotations

import datetime
import uuid

import charter
from orders_models import Order, OrderCustomers


def confirmation(system: charter.System, order_id: str) -> str:
    order = system.context("orders").get("Order", order_id, as_=Order)
    if order is None:
        raise charter.NotFoundError(order_id)
    reader = system.context("orders").copy("order_customers")
    to: OrderCustomers | None = reader.get(str(order.customer_id), as_=OrderCustomers)
    if to is None:
        raise charter.NotFoundError(str(order.customer_id))
    when: datetime.datetime = to.synced_at
    everyone: list[OrderCustomers] = reader.filter(as_=OrderCustomers, name=to.name)
    names = [c.name for c in reader.iter(as_=OrderCustomers)]
    return f"{to.email} {order.total:.2f} {when:%Y} {len(everyone)} {names}"


def place(system: charter.System, customer: uuid.UUID, total: float) -> Order:
    with system.context("orders").transaction() as tx:
        order = Order.create(tx, customer_id=customer, customer_name="Ada", total=total)
        return order.update(tx, total=total + 1)
'''

# each line a mistake mypy must find
WRONG = """\
from __future__ import annotations

import charter
from customers_models import Customer
from orders_models import Order, OrderCustomers


def wrong(system: charter.System, tx: charter.Transaction, c: OrderCustomers) -> None:
    c.password_hash
    Customer.create(tx, email="a@example.com", name="A")
    Customer.create(tx, email="a@example.com", name="A", password_hash="x", status="gone")
    Order.create(tx, customer_id=1, customer_name="A", total=1.0)
    c.update(tx, name="B")
    c.name = "B"
    x: Order | None = system.context("orders").copy("order_customers").get("1", as_=Customer)
"""


def test_the_generated_modules_pass_mypy_strict(tmp_path: Path) -> None:
    """Every context's module of both charters, and a service file using the shop's,
    are mypy --strict clean; a file of mistakes is not, one error a mistake."""
    files = []
    for name, c in _charters(tmp_path).items():
        for context in c.contexts:
            path = (
                tmp_path / f"{context}_models.py"
                if name == "shop"
                else tmp_path / f"odd_{context}.py"
            )
            path.write_text(generate(c, context))
            files.append(path)
    (tmp_path / "service.py").write_text(USER)
    result = _mypy(*files, tmp_path / "service.py", cache=tmp_path / ".mypy")
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "wrong.py").write_text(WRONG)
    result = _mypy(tmp_path / "wrong.py", cache=tmp_path / ".mypy")
    lines = {int(line.split(":")[1]) for line in result.stdout.splitlines() if ": error:" in line}
    mistakes = {n for n, line in enumerate(WRONG.splitlines(), 1) if line.startswith("    ")}
    assert lines == mistakes, result.stdout


def test_no_module_describes_another_contexts_private_fields(tmp_path: Path) -> None:
    for c in _charters(tmp_path).values():
        for context in c.contexts:
            source = generate(c, context)
            for entity in c.entities.values():
                private = [f.name for f in entity.fields.values() if f.private]
                for name in private:
                    said = f'"{name}"' in source or f"    {name}:" in source
                    assert said == (entity.owner == context), (context, name)


def test_a_copy_class_has_only_the_copys_fields_and_is_read_only(tmp_path: Path) -> None:
    c = _charters(tmp_path)["shop"]
    orders = _load(tmp_path, "orders_models", generate(c, "orders"))
    fields = [f.name for f in dataclasses.fields(orders.OrderCustomers)]
    assert fields == ["id", "version", "name", "email", "synced_at"]
    assert not hasattr(orders.OrderCustomers, "create")
    assert not hasattr(orders.OrderCustomers, "update")
    assert (orders.OrderCustomers.COPY, orders.OrderCustomers.ENTITY) == (
        "order_customers",
        "Customer",
    )
    assert "Customer" not in orders.__all__  # orders owns no Customer: no class for it
    customers = _load(tmp_path, "customers_models", generate(c, "customers"))
    assert [f.name for f in dataclasses.fields(customers.Customer)] == [
        "id",
        "version",
        "email",
        "name",
        "address",
        "status",
        PRIVATE,  # its own: customers owns Customer
    ]


def test_the_module_starts_with_its_header_and_is_the_same_text_each_time(tmp_path: Path) -> None:
    c = _charters(tmp_path)["shop"]
    source = generate(c, "shipping")
    assert source.startswith("# generated by charter codegen from shop; do not edit\n")
    again = generate(model.loads(SHOP_CHARTER, tmp_path / "elsewhere" / "charter.yaml"), "shipping")
    assert source == again
    assert "Literal" not in source  # shipping keeps no enum
    assert "CustomerStatus = Literal[" in generate(c, "customers")


def test_odd_names_keep_their_charter_names_on_the_wire(tmp_path: Path) -> None:
    odd = _load(tmp_path, "odd_a", generate(_charters(tmp_path)["odd"], "a"))
    fields = [f.name for f in dataclasses.fields(odd.Thing)]
    assert fields == [
        "id",
        "version",
        "from_",
        "update_",
        "uuid_",
        "str_",
        "datetime_",
        "flag",
        "kind",
        "secret",
    ]
    assert odd.Thing.__doc__.startswith(
        "Thing, owned by 'a' (team t): has \"quotes\", a \\ backslash"
    )


def test_a_name_standing_for_two_things_is_refused(tmp_path: Path) -> None:
    text = SHOP_CHARTER.replace("  order_customers:\n", "  order:\n")  # class Order, twice
    c = model.loads(text, tmp_path / "charter.yaml")
    with pytest.raises(ValidationError, match="the name 'Order' would stand for two things"):
        generate(c, "orders")
    with pytest.raises(
        ValidationError, match="no context 'order' in the charter; did you mean 'orders'"
    ):
        generate(c, "order")


def _load(folder: Path, name: str, source: str) -> ModuleType:
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses looks its module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_readers_return_the_generated_types(shop: System, tmp_path: Path) -> None:
    """On every backend: the owner writes through its models (typed create / update /
    delete, the version it read expected), and readers return the models."""
    customers = _load(tmp_path, "customers_models", generate(shop.charter, "customers"))
    orders = _load(tmp_path, "orders_models", generate(shop.charter, "orders"))
    calendar = _load(tmp_path, "calendar_models", generate(shop.charter, "calendar"))
    Customer, OrderCustomers = customers.Customer, orders.OrderCustomers
    with shop.context("customers").transaction() as tx:
        ada = Customer.create(tx, email="ada@example.com", name="Ada", password_hash="x")
        bob = Customer.create(tx, email="bob@example.com", name="Bob", password_hash="y")
    assert isinstance(ada, Customer) and (ada.version, ada.status, ada.address) == (
        1,
        "active",
        None,
    )
    with shop.context("customers").transaction() as tx:
        ada = ada.update(tx, name="Ada Lovelace", address="1 Mill Lane")
        bob.delete(tx)
    assert ada.version == 2 and ada.token in tx.tokens  # the same token a Record gives
    with pytest.raises(ConflictError), shop.context("customers").transaction() as tx:
        dataclasses.replace(ada, version=1).update(tx, name="stale")  # read before the last change
    mine = shop.context("customers").get("Customer", ada.id, as_=Customer)
    assert mine == ada
    with shop.context("orders").transaction() as tx:
        order = orders.Order.create(tx, customer_id=ada.id, customer_name=ada.name, total=12)
    assert order.customer_id == uuid.UUID(ada.id) and order.total == 12.0
    with shop.context("calendar").transaction() as tx:
        slot = calendar.Appointment.create(
            tx,
            user_id=uuid.UUID(ada.id),
            starts_at=dt.datetime(2030, 1, 7, 8, tzinfo=dt.UTC),
            ends_at=dt.datetime(2030, 1, 7, 9, tzinfo=dt.UTC),
        )
    assert slot.starts_at == dt.datetime(2030, 1, 7, 8, tzinfo=dt.UTC)
    reader = shop.context("orders").copy("order_customers")
    with Runner(shop) as runner:
        assert reader.wait_for(ada.token, timeout=60) is not None  # read your typed writes
        assert runner.wait_until_synced()
    row = reader.get(ada.id, as_=OrderCustomers)
    assert isinstance(row, OrderCustomers)
    assert (row.id, row.version, row.name, row.email) == (ada.id, 2, "Ada Lovelace", ada.email)
    assert isinstance(row.synced_at, dt.datetime)
    assert reader.get(bob.id, as_=OrderCustomers) is None
    assert reader.filter(as_=OrderCustomers, name="Ada Lovelace") == [row]
    assert list(reader.iter(as_=OrderCustomers)) == [row]
    assert reader.get(ada.id)["name"] == "Ada Lovelace"  # a Record, as before
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.name = "x"
    shipping = _load(tmp_path, "shipping_models", generate(shop.charter, "shipping"))
    with pytest.raises(ValidationError, match="describes copy 'shipping_customers', not"):
        reader.get(ada.id, as_=shipping.ShippingCustomers)
    with pytest.raises(ValidationError, match="describes entity 'Customer', not"):
        shop.context("orders").get("Order", order.id, as_=OrderCustomers)


def test_the_command_writes_the_module(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP_CHARTER)
    target = tmp_path / "orders_models.py"
    args = ["codegen", "-f", str(path), "--context", "orders", "-o", str(target)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert target.read_text() == generate(model.load(path), "orders")
    result = CliRunner().invoke(main, ["codegen", "-f", str(path), "--context", "customers"])
    assert result.output == generate(model.load(path), "customers")
    result = CliRunner().invoke(main, ["codegen", "-f", str(path), "--context", "nobody"])
    assert result.exit_code == 1
    assert "no context 'nobody' in the charter" in result.output
    assert "Traceback" not in result.output
