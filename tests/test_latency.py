"""How each copy has kept its promise: every applied event's propagation latency counted
in the copy's own store, p50/p99 and the share within the window in `charter status`,
on every backend, on a clock that moves only when the test says (charter.clock)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import charter
from charter import latency
from charter.cli import main
from charter.events import decode
from charter.status import CopyStatus, status
from charter.system import System
from charter.testing.world import Clock
from tests.conftest import edit

ORDER, SHIPPING = "order_customers", "shipping_customers"  # windows 5s and 1m


def started(system: System) -> System:
    """`system` with its copies filled once (from the owners' current state, empty): from
    here on what they hold comes through events."""
    charter.Runner(system).drain()
    return system


def create(system: System, count: int, tag: str) -> list[str]:
    with system.context("customers").transaction() as tx:
        return [
            tx.create("Customer", email=f"{tag}{n}@x", name=f"N{n}", password_hash="h").id
            for n in range(count)
        ]


def by_copy(system: System) -> dict[str, CopyStatus]:
    return {row.copy: row for row in status(system)}


# -- the histogram's arithmetic (no backend) ----------------------------------------


def test_buckets_double_every_four_from_a_millisecond_to_an_hour() -> None:
    assert latency.BOUNDS[0] == 0.001 and latency.BOUNDS[4] == pytest.approx(0.002)
    assert latency.BOUNDS[-1] > 3600
    assert latency.bucket(-1.0) == latency.bucket(0.0) == latency.bucket(0.001) == 0
    assert latency.bucket(0.0011) == 1
    assert latency.bucket(5 * 3600) == latency.INF


def test_quantiles_interpolate_inside_the_bucket() -> None:
    at = latency.bucket(1.0)
    low, high = latency.BOUNDS[at - 1], latency.BOUNDS[at]
    counts = {at: 100}
    assert latency.quantile(counts, 0.5) == pytest.approx(low + (high - low) / 2)
    assert latency.quantile(counts, 1.0) == pytest.approx(high)
    assert latency.quantile({0: 10}, 0.5) == pytest.approx(0.0005)  # from 0 to 1 ms
    slow = {latency.bucket(0.01): 99, latency.INF: 1}
    assert latency.quantile(slow, 0.99) == pytest.approx(latency.BOUNDS[latency.bucket(0.01)])
    assert latency.quantile({latency.INF: 3}, 0.5) == latency.BOUNDS[-1]
    assert latency.quantile({}, 0.5) is None


def test_the_share_within_a_window_counts_the_bucket_it_cuts_in_proportion() -> None:
    fast, slow = latency.bucket(0.2), latency.bucket(30.0)
    assert latency.within({fast: 992, slow: 8}, 5.0) == pytest.approx(0.992)
    at = latency.bucket(5.0)
    low, high = latency.BOUNDS[at - 1], latency.BOUNDS[at]
    assert latency.within({at: 10}, 5.0) == pytest.approx((5.0 - low) / (high - low))
    assert latency.within({latency.INF: 1}, 1e9) == 0.0
    assert latency.within({}, 5.0) is None


def test_commit_times_are_read_in_the_owners_form_and_in_others() -> None:
    ns = latency.commit_ns("2026-01-01T00:00:30.250000Z")
    assert ns == 1_767_225_630_250_000_000
    assert latency.commit_ns("2026-01-01T00:00:30.25+00:00") == ns
    assert latency.commit_ns("2026-01-01T01:00:30.250000+01:00") == ns
    assert latency.commit_ns("yesterday") is None
    assert latency.tally([0.5, 0.5, math.nan]) == {latency.bucket(0.5): 2}


# -- on every backend -------------------------------------------------------------


def test_each_applied_events_latency_is_kept_by_its_copy(shop: System) -> None:
    clock = Clock()
    with clock.installed():
        assert {row.latency_p50_s for row in status(started(shop))} == {None}
        create(shop, 10, "a")
        clock.advance(2.0)
        seen: list[float] = []
        runner = charter.Runner(shop)
        for projector in runner.projectors:
            projector.on_applied = seen.extend
        runner.drain()
        assert seen == [2.0] * 20  # ten events, two copies
        rows = by_copy(shop)
    two = latency.bucket(2.0)
    for name in (ORDER, SHIPPING):
        copy = shop.charter.copies[name]
        assert shop.store(copy.context).latency(copy, clock.minute) == {two: 10}
        row = rows[name]
        assert row.latency_p50_s == pytest.approx(latency.quantile({two: 10}, 0.5), abs=1e-6)
        assert latency.BOUNDS[two - 1] < (row.latency_p99_s or 0) <= latency.BOUNDS[two]
        assert row.within_window_1h == row.within_window_1d == 1.0


def test_a_batch_applied_again_is_not_counted_again(shop: System) -> None:
    """Two processes running one copy may both apply a batch: its latencies count once."""
    clock = Clock()
    with clock.installed():
        create(started(shop), 4, "b")
        clock.advance(1.0)
        copy = shop.charter.copies[ORDER]
        store = shop.store(copy.context)
        charter.Runner(shop, projectors=False).drain()  # published, not applied
        projector = next(p for p in charter.Runner(shop).projectors if p.copy.name == ORDER)
        deliveries = shop.bus.fetch(ORDER, projector.topic, projector._start(), 100)
        items = [(d.position, decode(d.body)) for d in deliveries]
        timed = [(position, 1.0) for position, _ in items]
        for _ in range(2):
            store.apply(copy, items, [], items[-1][0], None, timed)
        assert store.latency(copy, clock.minute) == {latency.bucket(1.0): 4}


def test_the_shares_tell_the_last_hour_from_the_last_day(shop: System) -> None:
    clock = Clock()
    with clock.installed():
        create(started(shop), 3, "slow")
        clock.advance(10.0)  # beyond order_customers' 5s, within shipping's minute
        charter.Runner(shop).drain()
        clock.advance(2 * 3600)
        create(shop, 9, "fast")
        clock.advance(0.5)
        charter.Runner(shop).drain()
        rows = by_copy(shop)
        clock.advance(6 * 60)  # the last 5 minutes hold nothing now
        later = by_copy(shop)
    assert rows[ORDER].within_window_1h == 1.0
    assert rows[ORDER].within_window_1d == pytest.approx(0.75)
    assert rows[SHIPPING].within_window_1d == 1.0
    half = latency.bucket(0.5)
    assert latency.BOUNDS[half - 1] < (rows[ORDER].latency_p99_s or 0) <= latency.BOUNDS[half]
    assert later[ORDER].latency_p50_s is None and later[ORDER].latency_p99_s is None
    assert later[ORDER].within_window_1h == 1.0  # 6 minutes ago is still this hour


def test_status_shows_how_each_copy_kept_its_promise(shop_file: Path) -> None:
    clock = Clock()
    with clock.installed(), charter.load(shop_file) as system:
        create(started(system), 4, "a")
        clock.advance(0.25)
        charter.Runner(system).drain()
        create(system, 1, "late")
        clock.advance(30.0)
        charter.Runner(system).drain()
        rows = json.loads(
            CliRunner().invoke(main, ["status", "-f", str(shop_file), "--json"]).output
        )
        table = CliRunner().invoke(main, ["status", "-f", str(shop_file)], terminal_width=120)
    order = next(row for row in rows if row["copy"] == ORDER)
    assert order["within_window_1h"] == order["within_window_1d"] == 0.8
    assert 20 < order["latency_p99_s"] <= 30 * 2**0.25
    assert table.exit_code == 0
    assert "80.0 % within 5s" in table.output and "100.0 % within 1m" in table.output


def test_a_retention_of_zero_records_no_latency(shop_file: Path) -> None:
    edit(shop_file, "retention: 1h", "retention: 1h\nlatency_retention: 0")
    clock = Clock()
    with clock.installed(), charter.load(shop_file) as system:
        assert system.charter.latency_retention_s == 0
        create(started(system), 3, "a")
        runner = charter.Runner(system)
        seen: list[float] = []
        runner.projectors[0].on_applied = seen.extend
        runner.drain()
        assert seen == [0.0] * 3  # the hook still hears of them
        copy = system.charter.copies[ORDER]
        assert system.store(copy.context).latency(copy, 0) == {}
        assert {row.within_window_1d for row in status(system)} == {None}


def test_every_event_moves_the_copys_version_even_one_it_ignores(shop: System) -> None:
    """Changes of fields a copy does not keep (status; a private password hash) still
    reach it as the owner's next version, on every backend."""
    (cid,) = create(started(shop), 1, "a")
    with shop.context("customers").transaction() as tx:
        tx.update("Customer", cid, status="suspended")  # not in either copy
    with shop.context("customers").transaction() as tx:
        tx.update("Customer", cid, password_hash="rotated")  # private: no field at all
    charter.Runner(shop).drain()
    for name in (ORDER, SHIPPING):
        record = shop.context(shop.charter.copies[name].context).copy(name).get(cid)
        assert record is not None and record.version == 3
    copy = shop.charter.copies[ORDER]
    assert shop.store(copy.context).latency(copy, 0)  # and all three were timed
    assert sum(shop.store(copy.context).latency(copy, 0).values()) == 3
