"""`charter apply`: PostgreSQL itself refuses a non-owner (G1), and applying twice
changes nothing the second time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

import charter
from charter.cli import main
from charter.errors import BackfillError
from charter.lanes import Lane
from tests.backends import CONTEXTS, POSTGRES
from tests.conftest import SHOP


@pytest.fixture
def pg_shop(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """A shop on PostgreSQL (bus on SQLite): charter path, system name, schema prefix."""
    prefix = "a" + uuid.uuid4().hex[:10]
    system = f"shop_{prefix}"
    urls = {ctx: f"{POSTGRES}?schema={prefix}_{ctx}" for ctx in CONTEXTS}
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(name=system, bus=f"sqlite:///{tmp_path}/bus.db", **urls))
    yield path, system, prefix
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        roles = [
            r
            for (r,) in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"{system}%",)
            )
        ]
        for role in roles:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
        for ctx in CONTEXTS:
            conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}_{ctx}" CASCADE')


def as_role(role: str) -> psycopg.Connection[tuple[object, ...]]:
    base = POSTGRES.replace("postgresql://postgres@", f"postgresql://{role}@")
    return psycopg.connect(base, autocommit=True)


def apply(path: Path, *extra: str) -> str:
    result = CliRunner().invoke(main, ["apply", "-f", str(path), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_apply_creates_roles_once_and_is_idempotent(pg_shop: tuple[Path, str, str]) -> None:
    path, system, _ = pg_shop
    dry = apply(path, "--dry-run")
    assert f'CREATE ROLE "{system}_orders_projector" LOGIN;' in dry
    assert "would change" in dry
    first = apply(path)
    assert "changed" in first
    assert apply(path, "--dry-run").strip() == "nothing to change"
    assert apply(path).strip() == "nothing to change"


def test_the_database_refuses_a_non_owner(pg_shop: tuple[Path, str, str]) -> None:
    path, system, prefix = pg_shop
    apply(path)
    with charter.load(path) as shop, shop.context("customers").transaction() as tx:
        ada = tx.create("Customer", email="ada@x", name="Ada", password_hash="h")
    customers, orders = f'"{prefix}_customers"', f'"{prefix}_orders"'
    with as_role(f"{system}_orders") as conn:
        for sql in (
            f"INSERT INTO {customers}.customer (id, version, email, name, status, password_hash)"
            " VALUES ('x', 1, 'm@x', 'M', 'active', 'h')",
            f"UPDATE {customers}.customer SET name = 'Mallory'",
            f"SELECT * FROM {customers}.customer",
            f"UPDATE {orders}.order_customers SET name = 'Mallory'",  # only its projector writes
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(sql)  # type: ignore[call-overload]
    with as_role(f"{system}_orders_reader") as conn:
        conn.execute(f"SELECT * FROM {orders}.order_customers")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT * FROM {customers}.customer")  # type: ignore[call-overload]
    with charter.load(path) as shop:
        assert shop.context("customers").get("Customer", ada.id).name == "Ada"  # type: ignore[union-attr]


def test_services_run_under_their_own_roles(pg_shop: tuple[Path, str, str]) -> None:
    path, system, prefix = pg_shop
    apply(path)
    text = path.read_text()
    as_service = text.replace("postgresql://postgres@", "postgresql://{role}@")
    for ctx in ("customers", "calendar"):
        as_service = as_service.replace(
            f'postgresql://{{role}}@127.0.0.1:5432/test?schema={prefix}_{ctx}"',
            f'postgresql://{system}_{ctx}@127.0.0.1:5432/test?schema={prefix}_{ctx}"',
        )
    for ctx in ("orders", "shipping"):
        as_service = as_service.replace(
            f'postgresql://{{role}}@127.0.0.1:5432/test?schema={prefix}_{ctx}"',
            f'postgresql://{system}_{ctx}_projector@127.0.0.1:5432/test?schema={prefix}_{ctx}"',
        )
    service_path = path.with_name("services.yaml")
    service_path.write_text(as_service)
    # each projector has only its own context's credentials: it may not read the owner's
    # records, so it fills a new copy from the fill the owner's relay publishes on the bus
    for ctx in ("orders", "shipping"):
        only_own = as_service
        for owner in ("customers", "calendar"):
            only_own = only_own.replace(f"{system}_{owner}@", f"{system}_{ctx}_projector@")
        path.with_name(f"{ctx}.yaml").write_text(only_own)
    with charter.load(service_path) as shop, shop.context("customers").transaction() as tx:
        ada = tx.create("Customer", email="ada@x", name="Ada", password_hash="h")
    for ctx in ("orders", "shipping"):  # before the owner's relay has run: they ask for it
        with (
            charter.load(path.with_name(f"{ctx}.yaml")) as projector,
            pytest.raises(BackfillError, match=r"cannot read \(.*permission denied.*asked for"),
        ):
            charter.Runner(projector, [ctx], relays=False).drain()
    with charter.load(service_path) as shop:
        charter.Runner(shop, ["customers"]).drain()  # under customers' own role: it answers
    for ctx in ("orders", "shipping"):
        with charter.load(path.with_name(f"{ctx}.yaml")) as projector:
            charter.Runner(projector, [ctx], relays=False).drain()
    with charter.load(path) as admin:
        for ctx, name in (("orders", "order_customers"), ("shipping", "shipping_customers")):
            assert admin.context(ctx).copy(name).get(ada.id) is not None, name
    with charter.load(service_path) as shop:
        for version, name in ((2, "Ada L"), (3, "Ada Lovelace")):
            with shop.context("customers").transaction() as tx:
                tx.update("Customer", ada.id, name=name)
            charter.Runner(shop, ["customers"]).drain()
            for lane in (Lane(1, 2), Lane(2, 2)):  # lanes keep their checkpoints, as projectors
                charter.Runner(shop, ["orders", "shipping"], relays=False, lane=lane).drain()
            copy = shop.context("orders").copy("order_customers").get(ada.id)
            assert copy is not None and copy.name == name and copy.version == version
