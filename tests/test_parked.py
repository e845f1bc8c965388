"""G8 and G1 at the consumer: what a copy cannot or may not apply is parked for its id
(whatever a foreign producer wrote on the bus), a copy with parked events says so
(DEGRADED), and `charter parked --retry / --drop` is the way out."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

import charter
from charter import parking
from charter.cli import main
from charter.system import System
from tests.backends import NATS, Backend, PostgresBackend, SQLiteBackend
from tests.conftest import SHOP, assert_converged, edit
from tests.test_nats_bus import needs_nats
from tests.test_pipeline import make_changes


def cloudevent(
    event_id: str,
    subject: str,
    version: int,
    data: dict[str, object] | None,
    op: str = "updated",
    source: str = "customers",
) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": f"Customer.{op}",
            "subject": subject,
            "time": "2026-01-01T00:00:00.000000Z",
            "entityversion": version,
            "changedfields": "",
            "data": data,
        }
    )


def cli(path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "-f", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def states(path: Path) -> dict[str, dict[str, object]]:
    code, out = cli(path, "status", "--json")
    assert code == 0, out
    return {row["copy"]: row for row in json.loads(out)}


def customer(system: System, name: str, status: str = "active") -> str:
    with system.context("customers").transaction() as tx:
        return tx.create(
            "Customer", email=f"{name}@x", name=name, status=status, password_hash="h"
        ).id


# -- whatever another tool wrote on the bus, the copy goes on ------------------------------


@pytest.fixture
def sqlite_shop(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(**SQLiteBackend().urls(tmp_path)))
    yield path


def test_rows_another_tool_wrote_into_the_sqlite_bus_are_parked_not_fatal(
    sqlite_shop: Path, tmp_path: Path
) -> None:
    """Plain sqlite3 stores TEXT (even invalid UTF-8) and numbers where charter writes bytes:
    a body that is not an event is parked for its id (named from the row), a text body that
    holds a good event is an event like any other, and everything else keeps flowing."""
    with charter.load(sqlite_shop) as shop:
        make_changes(shop, 30)
        charter.Runner(shop).drain()
        victim, other = list(shop.context("orders").copy("order_customers"))[:2]
        good = cloudevent("text-good", other.id, 50, {"name": "Texted", "email": "t@x"})
        conn = sqlite3.connect(tmp_path / "bus.db")
        with conn:
            conn.executemany(
                "INSERT INTO events (event_id, entity, subject, time, published_at, body) "
                "VALUES (?, 'Customer', ?, '', ?, ?)",
                [
                    ("text-1", victim.id, time.time(), "{not json"),
                    ("text-good", other.id, time.time(), good.decode()),
                    (7, victim.id, time.time(), 12345),
                ],
            )
            conn.execute(
                "INSERT INTO events (event_id, entity, subject, time, published_at, body) "
                "VALUES ('text-3', 'Customer', ?, '', ?, CAST(X'FFFE7B22' AS TEXT))",
                (victim.id, time.time()),
            )
        conn.close()
        make_changes(shop, 30, seed=2)
    code, out = cli(sqlite_shop, "run", "--once")
    assert code == 0, out
    with charter.load(sqlite_shop) as shop:
        parked = shop.store("orders").parked(shop.charter.copies["order_customers"])
        assert [(p.entity_id, p.event_id) for p in parked] == [
            (victim.id, "text-1"),
            (victim.id, "7"),
            (victim.id, "text-3"),
        ]
        assert all("not JSON" in p.reason or "JSON object" in p.reason for p in parked)
        texted = shop.context("orders").copy("order_customers").get(other.id)
        assert texted is not None and (texted.version, texted["name"]) == (50, "Texted")


@needs_nats
def test_odd_messages_another_nats_client_published_are_parked_not_fatal(
    tmp_path: Path,
) -> None:
    """Messages on an entity's subjects that charter did not publish: a "Status" header
    like the server's own, no headers, a subject with no partition, an empty body."""
    backend = PostgresBackend("nats")
    urls = backend.urls(tmp_path)
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(**urls))
    try:
        with charter.load(path) as shop:
            make_changes(shop, 30)
            charter.Runner(shop).drain()
            prefix = shop.bus._prefix  # type: ignore[attr-defined]

            async def publish() -> None:
                import nats

                nc = await nats.connect(NATS)
                js = nc.jetstream()
                await js.publish(f"{prefix}.Customer.3", b"{not json", headers={"Status": "503"})
                await js.publish(f"{prefix}.Customer.4", b"", headers={"Status": "100"})
                await js.publish(f"{prefix}.Customer.5", b"\xff\xfe")
                await js.publish(
                    f"{prefix}.Customer.x.y", b"[]", headers={"Nats-Msg-Id": "odd-4", "X": ""}
                )
                await nc.close()

            asyncio.run(publish())
            make_changes(shop, 30, seed=2)
            charter.Runner(shop).drain()
            parked = shop.store("orders").parked(shop.charter.copies["order_customers"])
            assert_converged(shop)
            parked = shop.store("orders").parked(shop.charter.copies["order_customers"])
            assert len(parked) == 4, parked
            assert parked[-1].event_id == "odd-4"
    finally:
        backend.cleanup(urls)


def test_an_event_whose_ids_hold_a_nul_never_stops_a_copy(shop: System) -> None:
    """PostgreSQL text holds no NUL character, not even in the parked list: such an event is
    kept by a store that can (SQLite) or parked with the NUL spelled out, never fatal."""
    make_changes(shop, 20)
    runner = charter.Runner(shop)
    runner.drain()
    body = cloudevent("nul\x00event", "nul\x00id", 1, {"name": "N", "email": "n@x"})
    shop.bus.publish_raw("nul-event", "Customer", "nul-id", body)
    make_changes(shop, 20, seed=2)
    runner.drain()
    spec = shop.charter.copies["order_customers"]
    parked = shop.store("orders").parked(spec)
    ids = {record.id for record in shop.context("orders").copy("order_customers")}
    if "nul\x00id" not in ids:
        assert [(p.entity_id, p.event_id) for p in parked] == [("nul\\0id", "nul\\0event")]
        assert "cannot be stored" in parked[0].reason
    else:
        assert parked == []
    owner = shop.context("customers")
    for record in shop.context("orders").copy("order_customers"):  # every other change
        want = owner.get("Customer", record.id)
        assert record.id == "nul\x00id" or (want is not None and want.version == record.version)


# -- single writer, checked at the consumer too ---------------------------------------------


def test_an_event_whose_source_is_not_the_owner_is_refused_on_every_bus(shop: System) -> None:
    """A well-formed delete of a customer, claiming to come from `orders` with a huge
    version: parked with the reason, and the owner's next real update still applies."""
    make_changes(shop, 20)
    runner = charter.Runner(shop)
    runner.drain()
    victim = next(iter(shop.context("orders").copy("order_customers")))
    forged = cloudevent("forged-1", victim.id, 1000, None, op="deleted", source="orders")
    shop.bus.publish_raw("forged-1", "Customer", victim.id, forged)
    with shop.context("customers").transaction() as tx:
        tx.update("Customer", victim.id, name="Still here")
    runner.drain()
    assert_converged(shop)
    kept = shop.context("orders").copy("order_customers").get(victim.id)
    assert kept is not None and kept["name"] == "Still here"
    for copy in ("order_customers", "shipping_customers"):
        spec = shop.charter.copies[copy]
        parked = shop.store(spec.context).parked(spec)
        assert [(p.entity_id, p.event_id, p.version) for p in parked] == [
            (victim.id, "forged-1", 1000)
        ]
        reason = parked[0].reason
        for part in ("forged-1", "1000", "'orders'", "'customers'", "customer-team"):
            assert part in reason, reason


# -- DEGRADED, and the way out -------------------------------------------------------------


def test_a_copy_with_parked_events_is_degraded_and_strict_fails(shop_file: Path) -> None:
    with charter.load(shop_file) as shop:
        make_changes(shop, 10)
        charter.Runner(shop).drain()
        victim = next(iter(shop.context("orders").copy("order_customers")))
        body = cloudevent("bad-1", victim.id, 99, {"name": 42, "email": "x@x"})
        shop.bus.publish_raw("bad-1", "Customer", victim.id, body)
        charter.Runner(shop).drain()
    rows = states(shop_file)
    assert rows["order_customers"]["state"] == "DEGRADED"
    assert rows["order_customers"]["parked"] == 1 and rows["order_customers"]["lag_events"] == 0
    code, _ = cli(shop_file, "status", "--strict")
    assert code == 3
    _, table = cli(shop_file, "status")
    assert "DEGRADED" in table
    # a broken window still says BREACH, parked or not
    edit(shop_file, "window: 5s", "window: 50ms")
    with charter.load(shop_file) as shop:
        make_changes(shop, 2, seed=5)
    time.sleep(0.2)
    assert states(shop_file)["order_customers"]["state"] == "BREACH"


ROLLOUT_COPY = "fields: [name, email]"


@pytest.mark.sql
def test_retry_applies_what_now_fits_keeps_what_does_not_and_never_goes_back(
    shop_file: Path, tmp_path: Path, backend: Backend
) -> None:
    """The owner starts using a new enum value before the copy's charter knows it: those
    events are parked; retried before the charter is mended they stay; after it, the ones
    still newest apply and one already overtaken by a newer version changes nothing."""
    edit(shop_file, ROLLOUT_COPY, "fields: [name, email, status]")
    owner_file = tmp_path / "owner.yaml"
    owner_file.write_text(shop_file.read_text().replace("deleted]", "deleted, vip]", 1))
    with charter.load(owner_file) as owner, charter.load(shop_file) as copies:
        a, b = customer(owner, "a"), customer(owner, "b")
        charter.Runner(copies).drain()
        with owner.context("customers").transaction() as tx:
            tx.update("Customer", a, status="vip")  # a v2: parked
        with owner.context("customers").transaction() as tx:
            tx.update("Customer", b, status="vip")  # b v2: parked
        charter.Runner(copies).drain()
        with owner.context("customers").transaction() as tx:
            tx.update("Customer", a, status="active", name="A")  # a v3: applies
        charter.Runner(copies).drain()
        spec = copies.charter.copies["order_customers"]
        assert [p.entity_id for p in copies.store("orders").parked(spec)] == [a, b]
        orders = copies.charter.contexts["orders"].store
    backend.raw_execute(orders, "UPDATE charter_parked SET reason = 'an old reason'")
    code, out = cli(shop_file, "parked", "--retry", "order_customers", "--json")
    assert code == 0, out
    outcome = json.loads(out)
    assert [(o["id"], o["version"], o["outcome"]) for o in outcome] == [
        (a, 2, "parked"),
        (b, 2, "parked"),
    ]
    assert "vip" in outcome[0]["reason"]
    code, out = cli(shop_file, "parked", "--json")
    assert ["vip" in p["reason"] for p in json.loads(out)] == [True, True]  # as retried
    assert states(shop_file)["order_customers"]["state"] == "DEGRADED"
    shop_file.write_text(owner_file.read_text())  # the copy's charter now knows 'vip'
    code, out = cli(shop_file, "parked", "--retry", "order_customers")
    assert code == 0, out
    assert "2 of 2" in out and "resolved" in out
    with charter.load(shop_file) as shop:
        copy = shop.context("orders").copy("order_customers")
        got_a, got_b = copy.get(a), copy.get(b)
        assert got_a is not None and (got_a.version, got_a["status"]) == (3, "active")
        assert got_b is not None and (got_b.version, got_b["status"]) == (2, "vip")
        assert shop.store("orders").parked(shop.charter.copies["order_customers"]) == []
        assert_converged(shop)
    assert states(shop_file)["order_customers"]["state"] == "OK"
    code, out = cli(shop_file, "status", "--strict")
    assert code == 0, out


def test_retry_and_drop_from_python_for_one_id(
    shop: System, caplog: pytest.LogCaptureFixture
) -> None:
    make_changes(shop, 10)
    runner = charter.Runner(shop)
    runner.drain()
    victim, other = list(shop.context("orders").copy("order_customers"))[:2]
    shop.bus.publish_raw("junk-1", "Customer", victim.id, b"{not json")
    shop.bus.publish_raw("junk-2", "Customer", other.id, b"{not json")
    runner.drain()
    outcomes = parking.retry(shop, "order_customers", "junk-1")
    assert [(o.parked.event_id, o.resolved) for o in outcomes] == [("junk-1", False)]
    with caplog.at_level(logging.INFO, logger="charter.parking"):
        dropped = parking.drop(shop, "order_customers", "junk-1")
    assert [p.event_id for p in dropped] == ["junk-1"]
    assert any(
        "junk-1" in r.getMessage() and "order_customers" in r.getMessage() for r in caplog.records
    )
    spec = shop.charter.copies["order_customers"]
    assert [p.event_id for p in shop.store("orders").parked(spec)] == ["junk-2"]
    dropped = parking.drop(shop)  # every copy, every id
    assert sorted(p.copy for p in dropped) == [
        "order_customers",
        "shipping_customers",
        "shipping_customers",
    ]
    assert all(s.state == "OK" for s in charter.status(shop))


def test_parked_says_what_it_did_and_what_was_wrong(shop_file: Path) -> None:
    code, out = cli(shop_file, "parked")
    assert code == 0 and "nothing parked" in out
    code, out = cli(shop_file, "parked", "--retry", "order_customers")
    assert code == 0 and "nothing parked" in out
    code, out = cli(shop_file, "parked", "--drop", "--json")
    assert code == 0 and json.loads(out) == []
    code, out = cli(shop_file, "parked", "--retry", "order_customer")
    assert code == 1 and "did you mean 'order_customers'" in out
    code, out = cli(shop_file, "parked", "--retry", "--drop")
    assert code == 2
    with charter.load(shop_file) as shop:
        make_changes(shop, 5)
        charter.Runner(shop).drain()
        victim = next(iter(shop.context("orders").copy("order_customers")))
        junk = "junk-" + uuid.uuid4().hex
        shop.bus.publish_raw(junk, "Customer", victim.id, b"{nope")
        charter.Runner(shop).drain()
    code, out = cli(shop_file, "parked", "order_customers", "no-such-id", "--drop")
    assert code == 0 and "nothing parked for 'no-such-id'" in out
    code, out = cli(shop_file, "parked", "order_customers", junk, "--drop")  # by its event id
    assert code == 0 and "dropped 1 parked event" in out and junk in out
    assert states(shop_file)["order_customers"]["state"] == "OK"
    assert states(shop_file)["shipping_customers"]["state"] == "DEGRADED"
