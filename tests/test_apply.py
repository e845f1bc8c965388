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
    with charter.load(service_path) as shop:
        with shop.context("customers").transaction() as tx:
            ada = tx.create("Customer", email="ada@x", name="Ada", password_hash="h")
        # the projector role cannot read customers' tables, so the owner's rows come to it
        # through events only: run customers' relay, then the copies under their own roles
        charter.Runner(shop, ["customers"]).drain()
    # a projector that has only its own context's credentials cannot fill a new copy from
    # the owner's records: it says so, and an operator runs the first drain
    only_orders = as_service.replace(f"{system}_customers@", f"{system}_orders_projector@").replace(
        f"{system}_calendar@", f"{system}_orders_projector@"
    )
    projector_path = path.with_name("projector.yaml")
    projector_path.write_text(only_orders)
    with (
        charter.load(projector_path) as projector,
        pytest.raises(BackfillError, match=r"needs a first fill .*permission denied"),
    ):
        charter.Runner(projector, ["orders"], relays=False).drain()
    with charter.load(path) as admin:  # a new copy is backfilled by an operator (admin)
        charter.Runner(admin, ["orders", "shipping"]).drain()
    with charter.load(service_path) as shop:
        for version, name in ((2, "Ada L"), (3, "Ada Lovelace")):
            with shop.context("customers").transaction() as tx:
                tx.update("Customer", ada.id, name=name)
            charter.Runner(shop, ["customers"]).drain()
            for lane in (Lane(1, 2), Lane(2, 2)):  # lanes keep their checkpoints, as projectors
                charter.Runner(shop, ["orders", "shipping"], relays=False, lane=lane).drain()
            copy = shop.context("orders").copy("order_customers").get(ada.id)
            assert copy is not None and copy.name == name and copy.version == version
