"""`charter apply`: PostgreSQL itself refuses a non-owner (G1), and applying twice
changes nothing the second time."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

import charter
from charter.cli import main
from charter.errors import BackendError, BackfillError, OwnershipError
from charter.lanes import Lane
from tests.backends import CONTEXTS, POSTGRES
from tests.conftest import SHOP, charter_command, edit
from tests.test_parked import cloudevent


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


# -- each role `charter apply` makes works for what it is for (README: which role each
# process uses); the shop's `shipping` owns nothing and only keeps a copy --------------


def under(path: Path, role: str) -> Path:
    """The charter as a process holding only `role`'s credentials has it (the same role for
    every store: it has no rights in another context's, as with no credentials for it)."""
    mine = path.with_name(f"{role}.yaml")
    mine.write_text(path.read_text().replace("postgresql://postgres@", f"postgresql://{role}@"))
    return mine


def cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A `charter` command in a process of its own, as an operator would run it."""
    return subprocess.run(
        charter_command(*args, "-f", str(path)), capture_output=True, text=True, timeout=120
    )


def ada(path: Path) -> str:
    with charter.load(path) as shop, shop.context("customers").transaction() as tx:
        return tx.create("Customer", email="ada@x", name="Ada", password_hash="h").id


def test_the_service_of_a_context_that_owns_nothing_reads_its_copies(
    pg_shop: tuple[Path, str, str],
) -> None:
    """Failed before: `permission denied for database` opening its store (its role may read
    nothing there, so charter took the schema for unprepared and tried to create it)."""
    path, system, _ = pg_shop
    apply(path)
    ada_id = ada(path)
    with charter.load(path) as admin:
        charter.Runner(admin).drain()
    service = under(path, f"{system}_shipping")
    with charter.load(service) as shop:
        copy = shop.context("shipping").copy("shipping_customers")
        found = copy.get(ada_id)
        assert found is not None and found.name == "Ada"
        assert [r.id for r in copy.filter(name="Ada")] == [ada_id]
        assert [r.id for r in copy] == [ada_id] and len(copy) == 1
        for write in (
            lambda tx: tx.create("Customer", email="m@x", name="M", password_hash="h"),
            lambda tx: tx.update("Customer", ada_id, name="Mallory"),
        ):
            with pytest.raises(OwnershipError), shop.context("shipping").transaction() as tx:
                write(tx)
    status = cli(service, "status", "--context", "shipping", "--json")
    assert status.returncode == 0, status.stderr
    assert [(r["copy"], r["state"]) for r in json.loads(status.stdout)] == [
        ("shipping_customers", "OK")
    ]
    parked = cli(service, "parked", "--context", "shipping")
    assert parked.returncode == 0 and "Traceback" not in parked.stderr, parked.stderr


def test_the_service_of_an_owner_writes_relays_and_answers_fills(
    pg_shop: tuple[Path, str, str],
) -> None:
    """Failed before: the service of `orders` (it owns Order and keeps a copy) could not
    read its copy, nor say how it stands (`status --context orders`)."""
    path, system, _ = pg_shop
    apply(path)
    customers, orders = under(path, f"{system}_customers"), under(path, f"{system}_orders")
    projector = under(path, f"{system}_orders_projector")
    ada_id = ada(customers)
    with charter.load(customers) as shop:
        store = shop.store("customers")
        assert store.lead("a test") and store.lead("a test")  # the relay lead: no grant
        store.release("a test")
    with charter.load(projector) as shop, pytest.raises(BackfillError, match="asked for"):
        charter.Runner(shop, ["orders"], relays=False).drain()
    with charter.load(customers) as shop:
        assert charter.Runner(shop, ["customers"]).drain() >= 1  # relays, answers the fill
        assert shop.store("customers").unrelayed("Customer").events == 0
    with charter.load(projector) as shop:
        charter.Runner(shop, ["orders"], relays=False).drain()
    with charter.load(orders) as shop:
        seen = shop.context("orders").copy("order_customers").get(ada_id)
        assert seen is not None and seen.name == "Ada"
        with shop.context("orders").transaction() as tx:
            order = tx.create("Order", customer_id=ada_id, customer_name=seen.name, total=3.5)
        assert charter.Runner(shop, ["orders"], projectors=False).drain() == 1
        assert shop.context("orders").get("Order", order.id) is not None
    for args in (["status", "--context", "orders", "--json"], ["history", "Order", order.id]):
        done = cli(orders, *args)
        assert done.returncode == 0, done.stderr
    assert [
        r["state"]
        for r in json.loads(cli(orders, "status", "--context", "orders", "--json").stdout)
    ] == ["OK"]


def test_a_projector_runs_its_contexts_copies_with_charter_run(
    pg_shop: tuple[Path, str, str],
) -> None:
    """`charter run --no-relays --context shipping` under its projector's role: a first fill
    through the bus, then events, then parked events retried and dropped. Failed before at
    the last step: the projector could not delete a parked event."""
    path, system, _ = pg_shop
    apply(path)
    customers = under(path, f"{system}_customers")
    projector = under(path, f"{system}_shipping_projector")
    ada_id = ada(customers)
    run_copies = ("run", "--no-relays", "--context", "shipping", "--once")
    waiting = cli(projector, *run_copies)
    assert waiting.returncode == 1 and "needs a first fill" in waiting.stderr, waiting.stderr
    assert "Traceback" not in waiting.stderr
    relay = cli(customers, "run", "--no-projectors", "--context", "customers", "--once")
    assert relay.returncode == 0, relay.stderr
    filled = cli(projector, *run_copies)
    assert filled.returncode == 0, filled.stderr
    with charter.load(customers) as shop:
        with shop.context("customers").transaction() as tx:
            tx.update("Customer", ada_id, address="1 Main St")
        charter.Runner(shop, ["customers"]).drain()
        forged = cloudevent("forged-1", ada_id, 1000, None, op="deleted", source="orders")
        shop.bus.publish_raw("forged-1", "Customer", ada_id, forged)
    assert cli(projector, *run_copies).returncode == 0
    with charter.load(under(path, f"{system}_shipping_reader")) as shop:
        seen = shop.context("shipping").copy("shipping_customers").get(ada_id)
        assert seen is not None and (seen.version, seen.address) == (2, "1 Main St")
    for args in (["--retry"], ["--drop"]):
        done = cli(projector, "parked", "--context", "shipping", *args)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    with charter.load(path) as admin:
        assert admin.store("shipping").parked(admin.charter.copies["shipping_customers"]) == []


def test_a_reader_reads_copies_only(pg_shop: tuple[Path, str, str]) -> None:
    """Reading works; writing is a charter error naming the role and what it may do.
    Failed before: the refusal did not name the role nor say what it is for."""
    path, system, _ = pg_shop
    apply(path)
    ada_id = ada(path)
    with charter.load(path) as admin:
        charter.Runner(admin).drain()
    reader = under(path, f"{system}_shipping_reader")
    with charter.load(reader) as shop:
        assert [r.id for r in shop.context("shipping").copy("shipping_customers")] == [ada_id]
    status = cli(reader, "status", "--context", "shipping", "--json")
    assert status.returncode == 0, status.stderr
    with charter.load(path) as admin, admin.context("customers").transaction() as tx:
        tx.update("Customer", ada_id, name="Ada L")
    with charter.load(path) as admin:
        charter.Runner(admin, ["customers"]).drain()
    with charter.load(reader) as shop, pytest.raises(BackendError) as refused:
        charter.Runner(shop, ["shipping"], relays=False).drain()
    text = str(refused.value)
    assert f"role '{system}_shipping_reader' is the reader role of context 'shipping'" in text
    assert "reads" in text and f"{system}_shipping_projector" in text
    assert not isinstance(refused.value.__cause__, BackendError)


def test_a_role_used_for_another_job_is_told_which_role_does_it(
    pg_shop: tuple[Path, str, str],
) -> None:
    """The service applying copies, the projector writing what the context owns, a role in
    another context's store: charter errors naming the role, what it may do and which role
    does the job, never a driver's error. Failed before: no role named."""
    path, system, _ = pg_shop
    apply(path)
    ada_id = ada(path)
    with charter.load(path) as admin:
        charter.Runner(admin).drain()
        with admin.context("customers").transaction() as tx:
            tx.update("Customer", ada_id, name="Ada L")
        charter.Runner(admin, ["customers"]).drain()
    service, projector = f"{system}_orders", f"{system}_orders_projector"
    with charter.load(under(path, service)) as shop, pytest.raises(BackendError) as applying:
        charter.Runner(shop, ["orders"], relays=False).drain()
    assert f"role '{service}' is the service role of context 'orders'" in str(applying.value)
    assert f"'{projector}'" in str(applying.value)
    with charter.load(under(path, projector)) as shop:
        with pytest.raises(BackendError) as writing, shop.context("orders").transaction() as tx:
            tx.create("Order", customer_id=ada_id, customer_name="Ada", total=1.0)
        assert f"role '{projector}' is the projector role of context 'orders'" in str(writing.value)
        assert f"'{service}'" in str(writing.value)
        with pytest.raises(BackendError) as elsewhere:
            shop.context("customers").get("Customer", ada_id)
    text = str(elsewhere.value)
    assert f"role '{projector}' is the projector role of context 'orders'" in text
    assert "no rights in the store of context 'customers'" in text


def test_a_relay_under_a_role_that_may_not_relay_never_takes_the_lead(
    pg_shop: tuple[Path, str, str],
) -> None:
    """A relay of `orders` run under its projector's or reader's role is refused at once,
    by name, and leaves the lead to the service's own relay. Failed before: it took the
    lead, then failed on every step while holding it, and the service's relay stood by."""
    path, system, _ = pg_shop
    apply(path)
    service = under(path, f"{system}_orders")
    with charter.load(service) as shop, shop.context("orders").transaction() as tx:
        tx.create("Order", customer_id=str(uuid.uuid4()), customer_name="Ada", total=1.0)
    for kind in ("projector", "reader"):
        role = f"{system}_orders_{kind}"
        with charter.load(under(path, role)) as wrong:
            with pytest.raises(BackendError) as refused:
                charter.Runner(wrong, ["orders"], projectors=False).drain()
            text = str(refused.value)
            assert "may not relay its outbox" in text, text
            assert f"role '{role}' is the {kind} role of context 'orders'" in text, text
            with charter.load(service) as shop:  # while the wrong one is still open
                moved = charter.Runner(shop, ["orders"], projectors=False).drain()
            assert moved == (1 if kind == "projector" else 0)


def test_a_restricted_role_never_changes_tables_and_says_what_to_do(
    pg_shop: tuple[Path, str, str],
) -> None:
    """A charter changed after `charter apply` (a new field in a copy): a context's own
    role may not change its tables, and says to apply the charter. Failed before:
    `permission denied for database`, naming no role and not what to do."""
    path, system, _ = pg_shop
    apply(path)
    edit(path, "fields: [name, address]", "fields: [name, address, email]")
    for role in (f"{system}_shipping", f"{system}_shipping_projector"):
        with charter.load(under(path, role)) as shop, pytest.raises(BackendError) as refused:
            shop.context("shipping").copy("shipping_customers")
        text = str(refused.value)
        assert "not prepared for this charter" in text and "charter apply" in text, text
        assert f"role '{role}'" in text, text
    apply(path)
    with charter.load(under(path, f"{system}_shipping")) as shop:
        assert list(shop.context("shipping").copy("shipping_customers")) == []
