"""G2 atomic publish, G3 effectively once, G4 monotonic, G8 poison events parked:
the path owner → outbox → relay → bus → projector → copy."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import charter
from charter.events import Event, decode
from charter.records import OutboxRow
from charter.relay import Relay
from charter.system import System
from tests.backends import Backend
from tests.conftest import assert_converged
from tests.workers import write_customers


def make_changes(system: System, count: int, seed: int = 1) -> list[str]:
    """A mix of creates, updates and deletes of customers; returns the ids still alive."""
    return write_customers(system, seed, count, tag=uuid.uuid4().hex)


def outbox_events(system: System) -> list[Event]:
    return [decode(row.body) for row in system.store("customers").outbox(0, 1_000_000)]


def test_a_rolled_back_transaction_leaves_no_row_and_no_event(shop: System) -> None:
    customers = shop.context("customers")
    with pytest.raises(RuntimeError), customers.transaction() as tx:
        tx.create("Customer", email="a@x", name="A", password_hash="h")
        raise RuntimeError("the caller changed its mind")
    with pytest.raises(charter.ConstraintError), customers.transaction() as tx:
        tx.create("Customer", email="b@x", name="B", password_hash="h")
        tx.create("Customer", email="b@x", name="B again", password_hash="h")
    assert shop.store("customers").outbox(0, 100) == []
    assert list(shop.store("customers").rows(shop.charter.entities["Customer"])) == []


def test_every_committed_change_has_exactly_one_event(shop: System) -> None:
    make_changes(shop, 200)
    events = outbox_events(shop)
    assert len(events) == 200
    assert len({e.id for e in events}) == 200
    per_id: dict[str, list[int]] = {}
    for event in events:
        per_id.setdefault(event.entity_id, []).append(event.version)
    for versions in per_id.values():
        assert versions == list(range(1, len(versions) + 1))


def test_events_are_cloudevents_with_full_public_state(shop: System) -> None:
    with shop.context("customers").transaction() as tx:
        ada = tx.create("Customer", email="a@x", name="Ada", password_hash="h")
        tx.update("Customer", ada.id, address="1 Lane")
    first, second = (orjson.loads(r.body) for r in shop.store("customers").outbox(0, 10))
    assert first["specversion"] == "1.0" and first["type"] == "Customer.created"
    assert first["source"] == "customers" and first["subject"] == ada.id
    assert second["entityversion"] == 2 and second["changedfields"] == "address"
    assert second["data"] == {
        "email": "a@x",
        "name": "Ada",
        "address": "1 Lane",
        "status": "active",
    }
    assert first["time"] == second["time"]  # one commit, one commit time


def test_copies_converge_through_creates_updates_and_deletes(shop: System) -> None:
    make_changes(shop, 500)
    charter.Runner(shop).drain()
    assert_converged(shop)
    assert len(shop.context("orders").copy("order_customers")) > 0


def test_redelivery_after_a_relay_crash_applies_nothing_twice(shop: System) -> None:
    make_changes(shop, 300)
    runner = charter.Runner(shop)
    runner.drain()
    before = {c: list(shop.store(c.context).copy_rows(c)) for c in shop.charter.copies.values()}
    relay = next(w for w in runner.workers if isinstance(w, Relay))
    relay.store.rewind(0)  # as if it crashed before saving its position, every time
    runner.drain()
    after = {c: list(shop.store(c.context).copy_rows(c)) for c in shop.charter.copies.values()}
    assert before == after
    assert_converged(shop)


def test_old_events_delivered_again_late_never_move_a_copy_backwards(shop: System) -> None:
    make_changes(shop, 300)
    runner = charter.Runner(shop)
    runner.drain()
    rows = shop.store("customers").outbox(0, 1_000_000)
    stale = [
        OutboxRow(
            0,
            f"replay-{r.event_id}",
            r.entity,
            r.entity_id,
            r.version,
            r.op,
            r.changed,
            r.time,
            r.body.replace(r.event_id.encode(), f"replay-{r.event_id}".encode()),
        )
        for r in reversed(rows)
    ]
    shop.bus.publish(stale)  # every old version again, newest first, under new event ids
    runner.drain()
    assert_converged(shop)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_order_with_any_duplicates_converges_and_never_goes_back(
    shop: System, data: st.DataObject
) -> None:
    """One system for all examples: each example writes new customers and delivers their
    events to the copy in any order, with any duplicates, after the copy's checkpoint."""
    seq_before = len(shop.store("customers").outbox(0, 1_000_000))
    make_changes(shop, data.draw(st.integers(5, 40)), seed=data.draw(st.integers(0, 10**9)))
    events = [decode(r.body) for r in shop.store("customers").outbox(seq_before, 1_000_000)]
    deliveries = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events)))))
    latest = {e.entity_id: e for e in events}
    deliveries += latest.values()  # at least once: the newest version of each id arrives
    copy = shop.charter.copies["order_customers"]
    store = shop.store("orders")
    checkpoint = store.checkpoint(copy)
    if checkpoint is None:
        store.backfill(copy, iter(()), 0)
    start = checkpoint.position if checkpoint else 0
    seen: dict[str, int] = {}
    for position, event in enumerate(deliveries, start + 1):
        store.apply(copy, [(position, event)], [], position)
        for row in store.copy_rows(copy):
            if row["id"] in latest:
                assert row["version"] >= seen.get(row["id"], 0), "a copy's version went back"
                seen[row["id"]] = row["version"]
    expected = {
        i: (e.version, e.state["name"], e.state["email"])
        for i, e in latest.items()
        if e.op != "deleted" and e.state is not None
    }
    actual = {
        r["id"]: (r["version"], r["name"], r["email"])
        for r in store.copy_rows(copy)
        if r["id"] in latest
    }
    assert actual == expected


def poison(event_id: str, subject: str, version: int, data: object) -> OutboxRow:
    body = orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "customers",
            "type": "Customer.updated",
            "subject": subject,
            "time": "2026-01-01T00:00:00.000000Z",
            "entityversion": version,
            "changedfields": "email",
            "data": data,
        }
    )
    return OutboxRow(
        0,
        event_id,
        "Customer",
        subject,
        version,
        "updated",
        ("email",),
        "2026-01-01T00:00:00.000000Z",
        body,
    )


def test_an_event_the_copys_store_refuses_is_parked_and_its_batch_still_applies(
    shop: System,
) -> None:
    """A well-formed event whose value one store cannot keep (PostgreSQL text holds no NUL
    character; SQLite does): where it is refused, it is parked for its id alone, and the
    rest of its batch lands, before and after it."""
    make_changes(shop, 30)
    runner = charter.Runner(shop)
    runner.drain()
    victim = next(iter(shop.context("orders").copy("order_customers")))
    make_changes(shop, 30, seed=3)  # same batch as the event below: not drained in between
    shop.bus.publish([poison("nul-1", victim.id, 99, {"name": "a\x00b", "email": "n@x"})])
    make_changes(shop, 30, seed=4)
    runner.drain()
    copy = shop.context("orders").copy("order_customers")
    parked = shop.store("orders").parked(shop.charter.copies["order_customers"])
    row = copy.get(victim.id)
    assert row is not None
    if row.version == 99:  # this store keeps it
        assert row["name"] == "a\x00b" and parked == []
    else:
        assert [(p.entity_id, p.event_id, p.version) for p in parked] == [(victim.id, "nul-1", 99)]
        assert "nul-1" in parked[0].reason
    owner = shop.context("customers")
    for record in copy:  # every other change arrived
        if record.id != victim.id:
            want = owner.get("Customer", record.id)
            assert want is not None and record.version == want.version


def test_a_poison_event_is_parked_for_its_id_and_the_others_keep_flowing(
    shop: System, shop_file: Path
) -> None:
    make_changes(shop, 50)
    runner = charter.Runner(shop)
    runner.drain()
    victim = next(iter(shop.context("orders").copy("order_customers")))
    shop.bus.publish(
        [
            poison("bad-1", victim.id, 99, {"name": 42, "email": "x@x", "address": None}),
            OutboxRow(0, "bad-2", "Customer", victim.id, 100, "updated", (), "", b"{not json"),
            poison("bad-3", victim.id, 2**40, {"name": "Huge", "email": "h@x"}),
        ]
    )
    make_changes(shop, 50, seed=2)
    runner.drain()
    assert_converged(shop)  # every other change still arrived
    parked = shop.store("orders").parked(shop.charter.copies["order_customers"])
    # what the body cannot say, the bus may know: always the event id; the record's id
    # where the bus keeps it apart from the body (SQLite; NATS only has its partition)
    known = victim.id if shop.bus.url.startswith("sqlite") else "?"
    assert [(p.entity_id, p.event_id, p.version) for p in parked] == [
        (victim.id, "bad-1", 99),
        (known, "bad-2", 0),
        (victim.id, "bad-3", 0),
    ]
    assert "bad-1 (version 99)" in parked[0].reason and "name" in parked[0].reason
    assert "not JSON" in parked[1].reason
    assert "entityversion" in parked[2].reason
    states = {s.copy: s for s in charter.status(shop)}
    assert states["order_customers"].parked == 3 and states["shipping_customers"].parked == 3
    from click.testing import CliRunner

    from charter.cli import main

    result = CliRunner().invoke(main, ["parked", "order_customers", "-f", str(shop_file), "--json"])
    assert result.exit_code == 0, result.output
    listed = orjson.loads(result.output)
    assert listed[0]["id"] == victim.id and listed[0]["version"] == 99


EVERY_TYPE = """\
charter: 1
name: {name}
bus: "{bus}"
contexts:
  customers: {{team: a-team, store: "{customers}"}}
  orders:    {{team: b-team, store: "{orders}"}}
entities:
  Sample:
    owner: customers
    fields:
      label: {{type: string}}
      note:  {{type: text, required: false}}
      count: {{type: integer, required: false}}
      ratio: {{type: number, required: false}}
      flag:  {{type: boolean, required: false}}
      kind:  {{type: enum, values: [a, b], required: false}}
      ref:   {{type: uuid, required: false}}
      at:    {{type: timestamp, required: false}}
      day:   {{type: date, required: false}}
copies:
  samples:
    in: orders
    of: Sample
    fields: [label, note, count, ratio, flag, kind, ref, at, day]
    window: 1m
    breaks: nothing
"""


def test_every_field_type_travels_intact_through_many_row_writes(
    tmp_path: Path, backend: Backend
) -> None:
    """Many creates, updates and deletes in one transaction each (on PostgreSQL: one
    statement per kind, the rows as one JSON document), every field type, awkward values
    and NULLs: the owner reads back what it wrote, and the copy holds the same."""
    urls = backend.urls(tmp_path)
    path = tmp_path / "charter.yaml"
    path.write_text(EVERY_TYPE.format(**urls))
    system = charter.load(path)
    try:
        moment = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.UTC)
        awkward = ["plain", 'quote " and \\ backslash', "new\nline\ttab", "ünïcødé ✓ 🚀", ""]
        wanted = [
            {
                "label": awkward[i % len(awkward)] + str(i),
                "note": None if i % 3 == 0 else "x" * (i * 50),
                "count": None if i % 4 == 0 else (-(2**62) if i % 2 else i * 10**15),
                "ratio": None if i % 5 == 0 else (i / 7 if i % 2 else -1e-7 * i),
                "flag": None if i % 6 == 0 else bool(i % 2),
                "kind": None if i % 7 == 0 else "ab"[i % 2],
                "ref": None if i % 8 == 0 else uuid.UUID(int=i * 7919),
                "at": None if i % 9 == 0 else moment + dt.timedelta(days=i, microseconds=i),
                "day": None if i % 10 == 0 else (moment + dt.timedelta(days=40 * i)).date(),
            }
            for i in range(1, 25)
        ]
        owner = system.context("customers")
        with owner.transaction() as tx:
            ids = [tx.create("Sample", **values).id for values in wanted]
        with owner.transaction() as tx:
            for k, entity_id in enumerate(ids[:8]):
                changes = {"count": k, "flag": k % 2 == 0, "at": moment, "note": None}
                tx.update("Sample", entity_id, **changes)
                wanted[k].update(changes)
            for entity_id in ids[8:12]:
                tx.delete("Sample", entity_id)
        charter.Runner(system).drain()
        assert_converged(system)
        copy = system.context("orders").copy("samples")
        for k, entity_id in enumerate(ids):
            record = owner.get("Sample", entity_id)
            if 8 <= k < 12:
                assert record is None and copy.get(entity_id) is None
                continue
            expected = {**wanted[k], "ref": wanted[k]["ref"] and str(wanted[k]["ref"])}
            assert record is not None and dict(record) == expected, k
            mirrored = copy.get(entity_id)
            assert mirrored is not None and dict(mirrored) == expected, k
    finally:
        system.close()
        backend.cleanup(urls)
