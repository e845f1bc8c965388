"""`visibility: contract`: each copy gets only its own fields, on a topic of its own
(charter.visibility), on every backend; on NATS the server itself refuses a context that
reads the entity's whole subject or another copy's, and every copy still converges."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats
import orjson
import pytest
from click.testing import CliRunner

import charter
from charter.buses import Bus
from charter.buses.nats import RefusedError
from charter.cli import main
from charter.errors import CharterError
from charter.events import decode
from charter.model import loads
from charter.relay import Relay
from charter.runner import Runner, declared_copies
from charter.visibility import topic_of
from tests import nats_servers
from tests.backends import CONTEXTS, Backend
from tests.conftest import SHOP, assert_converged, edit
from tests.test_fills import asks_for_a_fill, project, projector_charter, relay
from tests.test_nats_permissions import Guarded
from tests.workers import write_customers

ORDERS, SHIPPING = "Customer@order_customers", "Customer@shipping_customers"
FIELDS = {ORDERS: {"name", "email"}, SHIPPING: {"name", "address"}}


def contract(shop_file: Path, where: str = "retention: 1h") -> None:
    """The shop under contract visibility: the whole charter, or (`where`) one entity."""
    indent = " " * (len(where) - len(where.lstrip()))
    edit(shop_file, where, f"{where}\n{indent}visibility: contract")


def published(bus: Bus, topic: str) -> list[dict[str, object]]:
    """Every event on `topic`, as its CloudEvent."""
    docs, after = [], 0
    while deliveries := bus.fetch("test-reader", topic, after, 500):
        docs += [orjson.loads(d.body) for d in deliveries]
        after = deliveries[-1].position
    return docs


def assert_only_its_fields(bus: Bus) -> None:
    """Each copy's topic holds events with its fields only; the whole events went nowhere."""
    assert published(bus, "Customer") == []
    for topic, fields in FIELDS.items():
        docs = published(bus, topic)
        assert docs, f"nothing on {topic}"
        for doc in docs:
            data = doc["data"]
            assert data is None or set(data) <= fields, (topic, data)  # type: ignore[arg-type]
            assert set(str(doc["changedfields"]).split(",")) - {""} <= fields
            assert str(doc["id"]).endswith("@" + topic.split("@")[1])


# -- the charter ----------------------------------------------------------------------


def test_visibility_is_public_unless_the_charter_or_an_entity_says_contract() -> None:
    text = SHOP.format(name="v", bus="memory://v/bus", **{c: f"memory://v/{c}" for c in CONTEXTS})
    plain = loads(text)
    assert plain.visibility == "public"
    assert {e.visibility for e in plain.entities.values()} == {"public"}
    mixed = loads(
        text.replace("retention: 1h", "retention: 1h\nvisibility: contract").replace(
            "    owner: orders\n", "    owner: orders\n    visibility: public\n"
        )
    )
    assert mixed.entities["Customer"].visibility == "contract"
    assert mixed.entities["Order"].visibility == "public"
    copy, entity = mixed.copies["order_customers"], mixed.entities["Customer"]
    assert topic_of(entity, copy) == ORDERS
    assert declared_copies(mixed)["Customer"] == []  # what was left there goes by age
    assert declared_copies(mixed)[ORDERS] == ["order_customers"]


def test_a_bad_visibility_is_a_problem_with_its_line() -> None:
    text = SHOP.format(name="v", bus="memory://v/bus", **{c: f"memory://v/{c}" for c in CONTEXTS})
    bad = text.replace("retention: 1h", "retention: 1h\nvisibility: secret").replace(
        "    owner: orders\n", "    owner: orders\n    visibility: [x]\n"
    )
    with pytest.raises(CharterError) as problems:
        loads(bad)
    said = str(problems.value)
    assert "charter.yaml:5: charter: visibility 'secret' is neither public nor contract" in said
    line = bad.splitlines().index("    visibility: [x]") + 1
    assert f"charter.yaml:{line}: entity 'Order': visibility ['x']" in said


# -- every backend --------------------------------------------------------------------


def test_each_copy_gets_only_its_fields_and_converges(shop_file: Path) -> None:
    contract(shop_file)
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=61, transactions=120, per=(1, 4), keep=30)
        Runner(shop).drain()
        assert_converged(shop)
        assert_only_its_fields(shop.bus)
        # a change of none of a copy's fields still reaches it: its version follows
        alive = [r.id for r in shop.context("customers").filter("Customer")]
        with shop.context("customers").transaction() as tx:
            record = tx.update("Customer", alive[0], address="Elsewhere 1")
        Runner(shop).drain()
        copy = shop.context("orders").copy("order_customers").get(alive[0])
        assert copy is not None and copy.version == record.version
        assert_converged(shop)
        assert all(s.synced and s.state == "OK" for s in charter.status(shop))


def test_one_entity_under_contract_the_others_whole(shop_file: Path) -> None:
    contract(shop_file, "    why: creates accounts; keeps e-mail addresses unique")
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=62, transactions=40, per=(1, 3), keep=10)
        with shop.context("orders").transaction() as tx:
            tx.create("Order", customer_id=secrets.token_hex(16), customer_name="A", total=1)
        Runner(shop).drain()
        assert_converged(shop)
        assert_only_its_fields(shop.bus)
        assert len(published(shop.bus, "Order")) == 1  # public: whole, on its own topic


def test_a_republished_copy_event_is_a_duplicate(shop_file: Path) -> None:
    """The relay's rewind sends the newest events again, narrowed as before, under the
    same ids: the bus drops them and the copies change nothing."""
    contract(shop_file)
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=63, transactions=30, per=(1, 2), keep=10)
        Runner(shop).drain()
        heads = {topic: shop.bus.head(topic) for topic in FIELDS}
        owned = shop.charter.owned_by("customers")
        copies = [(c, owned[0]) for c in shop.charter.copies_of("Customer")]
        assert Relay(
            "customers", shop.store("customers"), shop.bus, None, 100, copies, owned
        ).rewind()
        assert {topic: shop.bus.head(topic) for topic in FIELDS} == heads
        Runner(shop).drain()
        assert_converged(shop)


def test_a_fill_through_the_bus_carries_only_the_copys_fields(
    shop_file: Path, backend: Backend
) -> None:
    contract(shop_file)
    projector = projector_charter(shop_file, backend)
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=64, transactions=80, per=(1, 4), keep=30)
        relay(shop)
        asks_for_a_fill(projector)
        relay(shop)  # answers, on each copy's topic
        every = shop.bus.fetch("test-reader", ORDERS, 0, 10_000)
        fills = [orjson.loads(d.body) for d in every if "~fill~" in d.event_id]
        assert fills and all(set(doc["data"]) <= FIELDS[ORDERS] for doc in fills)  # type: ignore[arg-type]
        write_customers(shop, seed=65, transactions=40, per=(1, 4), keep=30)
        relay(shop)
        project(projector)
        assert_converged(shop)
        assert_only_its_fields(shop.bus)


def test_a_widened_copy_is_filled_again_with_its_new_field(shop_file: Path) -> None:
    contract(shop_file)
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=66, transactions=60, per=(1, 4), keep=20)
        Runner(shop).drain()
    edit(shop_file, "fields: [name, email]", "fields: [name, email, address]")
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=67, transactions=30, per=(1, 4), keep=20)
        Runner(shop).drain()
        assert_converged(shop)
        rows = shop.context("orders").copy("order_customers")
        assert any(r.address for r in rows), "the new field is filled in"
        newest = published(shop.bus, ORDERS)[-1]["data"]
        assert newest is None or "address" in newest  # type: ignore[operator]


def test_a_change_of_visibility_on_a_running_system_loses_nothing(shop_file: Path) -> None:
    """Public → contract → public, each time with changes the old relay published on the
    old topic after the copies' positions (their projectors stopped): the relay under the
    new charter publishes each record's newest event again on the new topics, and every
    copy converges; then it does not again."""
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=71, transactions=40, per=(1, 4), keep=15)
        Runner(shop).drain()
        write_customers(shop, seed=72, transactions=30, per=(1, 4), keep=15, tag="p")
        Runner(shop, projectors=False).drain()  # on the entity's topic, not applied
        assert published(shop.bus, ORDERS) == []
    contract(shop_file)
    with charter.load(shop_file) as shop:
        runner, timed = Runner(shop), list[float]()
        for projector in runner.projectors:
            projector.on_applied = timed.extend
        runner.drain()
        assert_converged(shop)
        assert published(shop.bus, ORDERS), "carried over to the copy's topic"
        assert timed == []  # committed long before: not counted as propagation latency
        assert all(s.state == "OK" for s in charter.status(shop))
        write_customers(shop, seed=73, transactions=30, per=(1, 4), keep=15, tag="c")
        Runner(shop, projectors=False).drain()  # on the copies' topics, not applied
    edit(shop_file, "retention: 1h\nvisibility: contract", "retention: 1h")
    with charter.load(shop_file) as shop:
        before = len(published(shop.bus, "Customer"))
        Runner(shop).drain()
        assert_converged(shop)
        carried = len(published(shop.bus, "Customer")) - before
        assert carried > 0
        (relay,) = [r for r in Runner(shop, projectors=False).relays if r.context == "customers"]
        assert relay.carry_over() == 0  # the entity's topic is the newest again: done
        write_customers(shop, seed=74, transactions=20, per=(1, 4), keep=15, tag="q")
        Runner(shop).drain()
        assert_converged(shop)
        assert all(s.synced and s.state == "OK" for s in charter.status(shop))


def test_compaction_goes_topic_by_topic(shop_file: Path) -> None:
    """With retention 0, what both copies applied goes from both topics, and a copy
    whose events were compacted before it applied them is filled again (GAP)."""
    contract(shop_file)
    edit(shop_file, "retention: 1h", "retention: 0s")
    with charter.load(shop_file) as shop:
        write_customers(shop, seed=68, transactions=40, per=(1, 3), keep=10)
        Runner(shop, ["customers", "orders"]).drain()  # shipping's copy never ran
        assert published(shop.bus, ORDERS) == []  # applied, and compacted
        assert published(shop.bus, SHIPPING)  # its copy has no position: kept
        Runner(shop).drain()
        write_customers(shop, seed=69, transactions=20, per=(1, 3), keep=10)
        Runner(shop).drain()
        assert_converged(shop)
        assert all(s.state == "OK" for s in charter.status(shop))


# -- NATS: the server refuses what a context's contract does not name -----------------


@contextmanager
def guarded_contract(tmp_path: Path) -> Iterator[Guarded]:
    """The shop under contract visibility after `charter apply`, on a nats-server of its
    own that loads the block apply wrote (as tests.test_nats_permissions.guarded)."""
    from charter.natsauth import password_variable, user_name

    urls = {ctx: f"sqlite:///{tmp_path}/{ctx}.db" for ctx in CONTEXTS}
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(name="visguard", bus="nats://127.0.0.1:4222", **urls))
    contract(path)
    result = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert result.exit_code == 0, result.output
    block = (tmp_path / ".charter" / "nats-auth.conf").read_text()
    assert "$JS.API.STREAM.MSG.GET" not in block  # no context reads by sequence
    loaded = charter.model.load(path)
    users = [user_name(loaded.name, who) for who in ("admin", *CONTEXTS)]
    passwords = {user: "pw" + secrets.token_hex(8) for user in users}
    env = {password_variable(user): password for user, password in passwords.items()}
    with nats_servers.single(extra=block, env=env) as servers:
        yield Guarded(path, loaded, servers, passwords)


def _subscribe_refused(url: str, subject: str) -> str:
    """What the server says to a plain subscription of `subject` under `url`'s user."""

    async def attempt() -> str:
        said: list[str] = []

        async def error(exc: Exception) -> None:
            said.append(str(exc))

        nc = await nats.connect(url, error_cb=error, max_reconnect_attempts=0)
        try:
            await nc.subscribe(subject)
            await nc.flush()
            deadline = time.monotonic() + 5
            while not said and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            await nc.close()
        return " ".join(said)

    return asyncio.run(attempt())


def test_a_consumer_may_read_only_its_own_copys_subject(tmp_path: Path) -> None:
    with guarded_contract(tmp_path) as shop:
        prefix = "charter.visguard"
        with shop.bus("admin") as admin:  # creates the stream
            assert admin.head(ORDERS) == 0
        with charter.load(shop.as_user("customers")) as owner:
            write_customers(owner, seed=71, transactions=20, per=(1, 2), keep=5)
            Runner(owner, ["customers"], projectors=False).drain()
        with shop.bus("orders") as orders:
            deadline, got = time.monotonic() + 10, []
            while not got and time.monotonic() < deadline:
                got = orders.fetch("order_customers", ORDERS, 0, 100)  # its own: fine
            assert got and all(set(decode(d.body).state or {}) <= FIELDS[ORDERS] for d in got)
            assert orders.head(ORDERS) == got[-1].position
            assert orders.backlog("order_customers", ORDERS, 0).events == len(got)
            for topic, what in (("Customer", "Customer.>"), (SHIPPING, "shipping_customers.>")):
                with pytest.raises(RefusedError) as reading:
                    orders.fetch("order_customers", topic, 0, 10)
                assert what in str(reading.value)
                assert "a context reads only its own copies' topics" in str(reading.value)
                with pytest.raises(RefusedError):
                    orders.head(topic)
            with pytest.raises(RefusedError):  # a stored message, by its sequence
                orders._call(orders._api(f"STREAM.MSG.GET.{orders.stream}", {"seq": 1}), 10)
            with pytest.raises(RefusedError):  # a consumer of the old kind: filter in its body
                request = {
                    "stream_name": orders.stream,
                    "config": {"filter_subject": f"{prefix}.Customer.>", "ack_policy": "none"},
                }
                orders._call(orders._api(f"CONSUMER.CREATE.{orders.stream}", request), 10)
        url = shop.url("orders")
        for subject in (f"{prefix}.Customer.>", f"{prefix}._copy.Customer.shipping_customers.>"):
            assert "permissions violation for subscription" in _subscribe_refused(url, subject)
        assert "permissions violation" in _subscribe_refused(url, "_INBOX.>")  # others' replies


def test_under_their_own_credentials_every_copy_converges(tmp_path: Path) -> None:
    """Each context runs its relay and projectors under its own user (`charter run
    --context`), and `charter status --context` works under it too."""
    with guarded_contract(tmp_path) as shop:
        with shop.bus("admin"):  # creates the stream
            pass
        with charter.load(shop.as_user("admin")) as whole:  # the admin's: every store
            write_customers(whole, seed=72, transactions=60, per=(1, 3), keep=20)
            for seed in (73, 74):  # a second round: what was committed after the first fill
                for who in ("customers", "orders", "shipping"):
                    own = str(shop.as_user(who))
                    ran = CliRunner().invoke(main, ["run", "--once", "--context", who, "-f", own])
                    assert ran.exit_code == 0, ran.output
                write_customers(whole, seed=seed, transactions=20, per=(1, 3), keep=20)
            for who in ("customers", "orders", "shipping"):
                own = str(shop.as_user(who))
                CliRunner().invoke(main, ["run", "--once", "--context", who, "-f", own])
            assert_converged(whole)
            assert_only_its_fields(whole.bus)
        own = str(shop.as_user("orders"))
        status = CliRunner().invoke(main, ["status", "--json", "--context", "orders", "-f", own])
        assert status.exit_code == 0, status.output
        (row,) = orjson.loads(status.output)
        assert (row["copy"], row["state"], row["lag_events"]) == ("order_customers", "OK", 0)
