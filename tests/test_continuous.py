"""Continuous reconciliation (issue 10 point 3): a copy's `reconcile:` schedule (or the
charter's default) and `repair:` kinds, checked inside `charter run`, each result kept in
the copy's own store (charter_drift) for `charter status`, the metrics and the alerts.

On every backend (SQLite, PostgreSQL + NATS, memory): the schedule finds and repairs a
missing row planted past charter, and reports a kind its `repair:` does not list without
touching it; and under load (owners writing at full speed while the runner runs and the
copies are checked about every second) it reports no drift at all: rows on their way are
in flight."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import charter
from charter import model, reconcile
from charter.cli import main
from charter.errors import CharterError, Error
from charter.metrics import MetricsServer
from charter.records import Drift
from charter.runner import Runner
from charter.status import DRIFT, OK, status
from charter.system import System
from tests.backends import Backend
from tests.conftest import charter_command, edit
from tests.test_metrics import (
    ALERTS_CHARTER,
    ORDER,
    PROMTOOL,
    needs_promtool,
    promtool,
    samples,
    scrape,
)
from tests.test_reconcile import memory_rows, plant

# -- the charter file -------------------------------------------------------------------

BASE = """\
charter: 1
name: shop
contexts:
  customers: {team: customer-team, store: "memory://c"}
  orders:    {team: order-team,    store: "memory://o"}
entities:
  Customer:
    owner: customers
    fields:
      name: {type: string}
copies:
  order_customers:
    in: orders
    of: Customer
    fields: [name]
    window: 5s
  other_customers:
    in: orders
    of: Customer
    fields: [name]
    window: 5s
"""


def loaded(top: str = "", order: str = "") -> model.Charter:
    """BASE with `top` added at the top level (at the end) and `order` to order_customers."""
    text = BASE + top
    text = text.replace("window: 5s\n", "window: 5s\n" + order, 1)
    return model.loads(text, "charter.yaml")


def problems(top: str = "", order: str = "") -> list[tuple[int, str, str]]:
    with pytest.raises(CharterError) as caught:
        loaded(top, order)
    return [(p.line, p.message, p.hint) for p in caught.value.problems]


def test_copies_take_the_charters_schedule_and_repairs_unless_they_say_their_own() -> None:
    plain = loaded()
    assert [(c.reconcile_s, c.repair) for c in plain.copies.values()] == [(0.0, ())] * 2
    both = loaded("reconcile: 1h\nrepair: [missing, stale, extra]\n")
    assert (both.reconcile_s, both.repair) == (3600.0, ("missing", "stale", "extra"))
    for copy in both.copies.values():
        assert (copy.reconcile_s, copy.repair) == (3600.0, ("missing", "stale", "extra"))
    own = loaded("reconcile: 1h\nrepair: [missing]\n", "    reconcile: 10m\n    repair: []\n")
    assert (own.copies["order_customers"].reconcile_s, own.copies["order_customers"].repair) == (
        600.0,
        (),
    )
    assert own.copies["other_customers"].repair == ("missing",)
    off = loaded("reconcile: 1h\n", "    reconcile: off\n    repair: [divergent]\n")
    assert off.copies["order_customers"].reconcile_s == 0.0
    assert off.copies["order_customers"].repair == ("divergent",)
    assert loaded("reconcile: 0\n").copies["other_customers"].reconcile_s == 0.0


def test_a_schedule_changes_no_stores_fingerprint() -> None:
    """Neither key shapes a table: a changed schedule must not make a PostgreSQL service
    ask for `charter apply` (the fingerprint is made of the copies' repr)."""
    assert repr(loaded().copies) == repr(loaded("reconcile: 1h\nrepair: [missing]\n").copies)


def test_bad_schedules_and_repairs_are_refused_with_their_line() -> None:
    line = len(BASE.splitlines()) + 1
    [(at, message, hint)] = problems("reconcile: soon\n")
    assert at == line and "reconcile 'soon' is not a duration" in message and "1h" in hint
    found = problems("repair:\n  - missing\n  - ahead\n  - mising\n  - in_flight\n")
    ahead = len(BASE.splitlines()) + 3
    assert found[0][0] == ahead and "cannot list 'ahead'" in found[0][1]
    assert "--accept-owner" in found[0][2]
    assert found[1][0] == ahead + 1 and "unknown kind of drift 'mising'" in found[1][1]
    assert "did you mean 'missing'" in found[1][2]
    assert found[2][0] == ahead + 2 and "in flight is not drift" in found[2][2]
    [(_, message, hint)] = problems("", "    repair: missing\n")
    assert "copy 'order_customers': repair must be a list" in message and "[]" in hint
    [(_, message, _)] = problems("", "    reconcile: -1s\n")
    assert "copy 'order_customers': reconcile '-1s' is not a duration" in message


def test_charter_check_says_where_a_bad_repair_is(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(BASE.replace("window: 5s\n", "window: 5s\n    repair: [ahead]\n", 1))
    done = CliRunner().invoke(main, ["check", "-f", str(path)])
    line = path.read_text().splitlines().index("    repair: [ahead]") + 1
    assert done.exit_code != 0 and "Traceback" not in done.output
    assert f"charter.yaml:{line}" in done.output and "'ahead'" in done.output


# -- the schedule, on every backend -------------------------------------------------------


def customers(system: System, count: int) -> list[str]:
    ids = []
    with system.context("customers").transaction() as tx:
        for n in range(count):
            made = tx.create("Customer", email=f"c{n}@x.org", name=f"C{n}", password_hash="h")
            ids.append(made.id)
    return ids


def until(what: Callable[[], object], timeout: float = 60.0) -> object:
    """`what()` once it is truthy (asked every 50 ms), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def scheduled(shop_file: Path, repair: str = "[missing]") -> None:
    """order_customers checked every second (its window 1 s), repairing `repair`."""
    schedule = f"    window: 1s\n    reconcile: 1s\n    repair: {repair}\n"
    edit(shop_file, "    window: 5s\n", schedule)


def plant_missing_and_divergent(system: System, missing: str, divergent: str) -> None:
    """Delete one row of the copy and change another at the same version, past charter."""
    if system.charter.contexts["orders"].store.startswith("memory://"):
        rows = memory_rows(system, "order_customers")
        del rows[missing]
        rows[divergent] = {**rows[divergent], "name": "Written past charter"}
        return
    plant(
        system,
        "order_customers",
        f"DELETE FROM order_customers WHERE id = '{missing}';\n"
        f"UPDATE order_customers SET name = 'Written past charter' WHERE id = '{divergent}';",
    )


def last(system: System, copy: str = "order_customers") -> Drift | None:
    return system.store("orders").drift(system.charter.copies[copy])


def test_the_schedule_repairs_what_repair_lists_and_reports_the_rest(shop_file: Path) -> None:
    scheduled(shop_file)
    system = charter.load(shop_file)
    try:
        ids = customers(system, 5)
        Runner(system).drain()
        time.sleep(1.2)  # older than the copy's window: a difference now is drift
        plant_missing_and_divergent(system, ids[0], ids[1])
        runner = Runner(system)
        assert [c.name for c in runner.reconciler.copies] == ["order_customers"]
        with runner:
            until(lambda: runner.reconciler.repaired and runner.reconciler.checks)
            found = last(system)
        assert runner.reconciler.repaired == {"missing": 1}  # repaired by the runner itself …
        assert found is not None and found.rows == 1
        assert found.counts == {"divergent": 1} and found.sample == {"divergent": [ids[1]]}
        copy = system.charter.copies["order_customers"]
        rows = {r["id"]: r["name"] for r in system.store("orders").copy_rows(copy)}
        assert rows[ids[0]] == "C0"  # … from its owner
        assert rows[ids[1]] == "Written past charter"  # not in `repair:`: reported, left alone
        assert "shipping_customers" not in runner.reconciler.last  # no schedule: never checked
        lines = runner.reports.take()
        assert any("1 missing, 1 divergent; repaired 1 missing, 1 left" in x for x in lines)
        row = next(r for r in status(system) if r.copy == "order_customers")
        assert row.state == DRIFT and row.drift == 1 and row.last_check is not None
    finally:
        system.close()


def test_status_shows_drift_and_strict_exits_for_it(shop_file: Path) -> None:
    system = charter.load(shop_file)
    try:
        ids = customers(system, 3)
        Runner(system).drain()
        copy = system.charter.copies["order_customers"]
        drifted = Drift(
            copy.name,
            "2026-01-02T03:04:05.000000Z",
            0.5,
            {"stale": 2, "in_flight": 1},
            {"stale": ids[:2]},
            repaired={"missing": 1},
        )
        system.store("orders").record_drift(drifted)
    finally:
        system.close()
    runner = CliRunner()
    shown = runner.invoke(main, ["status", "-f", str(shop_file)])
    assert shown.exit_code == 0, shown.output
    assert "DRIFT" in shown.output and "drift 2: 2 stale (1 in flight)" in shown.output
    assert "repaired 1 missing before this check" in shown.output and ids[0] in shown.output
    strict = runner.invoke(main, ["status", "-f", str(shop_file), "--strict"])
    assert strict.exit_code == 3
    printed = runner.invoke(main, ["status", "-f", str(shop_file), "--json"])
    docs = {d["copy"]: d for d in json.loads(printed.output)}
    assert docs["order_customers"]["state"] == DRIFT
    assert docs["order_customers"]["drift"] == {
        "rows": 2,
        "counts": {"stale": 2, "in_flight": 1},
        "checked_at": "2026-01-02T03:04:05.000000Z",
        "took_s": 0.5,
        "complete": True,
        "sample": {"stale": ids[:2]},
        "repaired": {"missing": 1},
        "error": None,
    }
    assert docs["shipping_customers"]["drift"] is None
    assert docs["shipping_customers"]["state"] == OK


def test_charter_reconcile_keeps_its_result_for_status(shop_file: Path) -> None:
    system = charter.load(shop_file)
    try:
        ids = customers(system, 4)
        Runner(system).drain()
    finally:
        system.close()
    clean = CliRunner().invoke(main, ["reconcile", "-f", str(shop_file)])
    assert clean.exit_code == 0, clean.output
    docs = json.loads(CliRunner().invoke(main, ["status", "-f", str(shop_file), "--json"]).output)
    assert {d["copy"]: (d["state"], d["drift"]["rows"]) for d in docs} == {
        "order_customers": (OK, 0),
        "shipping_customers": (OK, 0),
    }
    system = charter.load(shop_file)
    try:
        with later_than_the_window():
            plant_missing_and_divergent(system, ids[0], ids[1])
            # planted with triggers off (PostgreSQL): no bucket saw it, a full check does
            drifted = CliRunner().invoke(main, ["reconcile", "-f", str(shop_file), "--full"])
            assert drifted.exit_code == 5, drifted.output
        row = next(r for r in status(system) if r.copy == "order_customers")
        assert row.state == DRIFT and row.last_check is not None
        assert row.last_check.counts == {"missing": 1, "divergent": 1}
        assert row.last_check.repaired is None
    finally:
        system.close()


def later_than_the_window() -> object:
    """The clock 10 s on: the rows written a moment ago are older than the copy's window."""
    from tests.test_reconcile import later

    return later(10)


# -- no false positives under load ----------------------------------------------------------

LOAD_S = 10.0


def owner_at_full_speed(system: System, stop: threading.Event, errors: list[BaseException]) -> int:
    """Create, rename and delete customers as fast as the store takes them, until `stop`."""
    done, live = 0, []
    customers_ctx = system.context("customers")
    try:
        while not stop.is_set():
            with customers_ctx.transaction() as tx:
                for _ in range(10):
                    made = tx.create(
                        "Customer", email=f"{made_id()}@x", name="new", password_hash="h"
                    )
                    live.append(made.id)
                for entity_id in live[-20:-10]:
                    tx.update("Customer", entity_id, name=f"renamed {done}")
                if len(live) > 40:
                    tx.delete("Customer", live.pop(0))
            done += 1
    except BaseException as exc:  # a failure must fail the test, not vanish with the thread
        errors.append(exc)
    return done


def made_id() -> str:
    from charter.ids import uuid7

    return uuid7()


def test_no_false_positives_under_load(shop_file: Path) -> None:
    every = "retention: 1h\nreconcile: 1s\nrepair: [missing, stale, extra]\n"
    edit(shop_file, "retention: 1h\n", every)
    system = charter.load(shop_file)
    try:
        customers(system, 200)
        runner = Runner(system)
        runner.drain()
        stop, errors = threading.Event(), []
        writers = [
            threading.Thread(target=owner_at_full_speed, args=(system, stop, errors))
            for _ in range(2)
        ]
        with runner:
            for writer in writers:
                writer.start()
            time.sleep(LOAD_S)
            stop.set()
            for writer in writers:
                writer.join()
            assert runner.wait_until_synced(60)
        assert not errors, errors
        checks = runner.reconciler
        assert checks.checks >= 3  # both copies, and again, while the writes went on
        # the checks did see rows on their way (in memory, copies apply within microseconds
        # and a check may meet none: SQLite and PostgreSQL + NATS show the case) …
        assert checks.in_flight > 0 or system.charter.bus.startswith("memory:")
        assert checks.drifted == 0, checks.last  # … and called none of them drift
        assert all(d.rows == 0 and not d.repaired for d in checks.last.values()), checks.last
        assert not [x for x in runner.reports.take() if "drift" in x]
        for copy in system.charter.copies.values():
            assert reconcile.check(system, copy).clean  # and once the writes stop: equal
    finally:
        system.close()


# -- metrics and alerts ------------------------------------------------------------------------


def test_metrics_say_each_copys_drift_and_last_check(shop: System) -> None:
    runner = Runner(shop, reconcile=False)
    runner.drain()
    copy = shop.charter.copies["order_customers"]
    shop.store("orders").record_drift(
        Drift(copy.name, "2026-01-02T03:04:05.000000Z", 0.25, {"extra": 3, "in_flight": 2}, {})
    )
    server = MetricsServer(runner, "127.0.0.1", 0)
    try:
        text = scrape(server)
    finally:
        server.close()
    found = samples(text)
    drift = {s.labels["class"]: s.value for s in found if s.name == "charter_drift"}
    assert drift == {"missing": 0, "extra": 3, "stale": 0, "divergent": 0, "ahead": 0}
    [stamp] = [s for s in found if s.name == "charter_drift_last_check_timestamp_seconds"]
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert stamp.labels == ORDER and stamp.value == moment.timestamp()
    [took] = [s for s in found if s.name == "charter_drift_last_check_duration_seconds"]
    assert took.value == 0.25
    never = [s for s in found if s.labels.get("copy") == "shipping_customers"]
    assert not [s for s in never if "drift" in s.name]  # never checked: no series
    if PROMTOOL is not None:
        checked = promtool("check", "metrics", stdin=text)
        assert checked.returncode == 0, checked.stdout + checked.stderr


DRIFT_RULE_TESTS = """\
rule_files: [rules.yml]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'charter_drift{copy="order_customers",of="Customer",owner="customers",in="orders",class="missing"}'
        values: '0 0 2 2'
      - series: 'charter_drift{copy="order_customers",of="Customer",owner="customers",in="orders",class="stale"}'
        values: '0 0 1 1'
      - series: 'charter_drift_last_check_timestamp_seconds{copy="order_customers",of="Customer",owner="customers",in="orders"}'
        values: '0 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15'
    alert_rule_test:
      - eval_time: 15s
        alertname: CharterCopyDrift
        exp_alerts: []
      - eval_time: 45s
        alertname: CharterCopyDrift
        exp_alerts:
          - exp_labels:
              severity: critical
              copy: order_customers
              of: Customer
              owner: customers
              in: orders
              team: customer-team
            exp_annotations:
              summary: "copy order_customers of Customer differed from its owner in 3 ids at its last reconciliation: see `charter reconcile order_customers`"
              breaks: "order confirmations go to an outdated e-mail address {{ not a template }}"
              team: customer-team
              description: "What breaks: order confirmations go to an outdated e-mail address {{ not a template }}. Customer is owned by 'customers' (team customer-team); the copy 'order_customers' is kept in 'orders' (team order-team). See `charter status` and `charter parked order_customers`."
      - eval_time: 3m
        alertname: CharterCopyUnchecked
        exp_alerts: []
      - eval_time: 5m
        alertname: CharterCopyUnchecked
        exp_alerts:
          - exp_labels:
              severity: warning
              copy: order_customers
              of: Customer
              owner: customers
              in: orders
              team: customer-team
            exp_annotations:
              summary: "copy order_customers of Customer was last checked against its owner 4m 45s ago; it should be every 1m (is `charter run` running for 'orders'?)"
              breaks: "order confirmations go to an outdated e-mail address {{ not a template }}"
              team: customer-team
              description: "What breaks: order confirmations go to an outdated e-mail address {{ not a template }}. Customer is owned by 'customers' (team customer-team); the copy 'order_customers' is kept in 'orders' (team order-team). See `charter status` and `charter parked order_customers`."
"""  # noqa: E501 (series and expected annotations as Prometheus shows them, whole)


@needs_promtool
def test_drift_rules_pass_promtool_and_fire(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    text = ALERTS_CHARTER.format(folder=tmp_path)
    path.write_text(text.replace("    window: 5s\n", "    window: 5s\n    reconcile: 1m\n", 1))
    rules = tmp_path / "rules.yml"
    written = CliRunner().invoke(main, ["alerts", "-f", str(path), "-o", str(rules)])
    assert written.exit_code == 0 and "wrote 9 rules" in written.output, written.output
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0 and b"SUCCESS: 9 rules found" in checked.stdout, checked
    (tmp_path / "tests.yml").write_text(DRIFT_RULE_TESTS)
    tested = promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert tested.returncode == 0, (tested.stdout + tested.stderr).decode()


def test_a_store_that_cannot_keep_the_result_is_said_not_raised(shop_file: Path) -> None:
    """`charter reconcile` still reports and exits as its check says."""
    system = charter.load(shop_file)
    try:
        store = system.store("orders")

        def refuse(drift: Drift) -> None:
            raise Error("permission denied for table charter_drift")

        store.record_drift = refuse  # type: ignore[method-assign]
        reports = reconcile.check_all(system)
        lines = reconcile.drift.keep_all(system, reports, {})
        assert lines == [
            "order_customers: its result is not kept for `charter status`: "
            "permission denied for table charter_drift",
        ]  # shipping_customers is kept in another store, which took it
    finally:
        system.close()


def test_a_copy_catching_up_between_the_two_reads_is_not_ahead(shop: System) -> None:
    """A check reads each differing id on both sides; between the two reads the owner may
    write and the copy apply. Read owner first, that looked like a copy ahead of its owner
    (a false alarm under load); the copy is read first, so it cannot."""
    from charter import clock
    from charter.reconcile.classify import classify

    [cid] = customers(shop, 1)
    Runner(shop).drain()
    owner, entity = shop.store("customers"), shop.charter.entities["Customer"]
    real, moved = owner.fetch, []

    def fetch_then_write(entity: object, entity_id: str) -> object:
        row = real(entity, entity_id)  # type: ignore[arg-type]
        if not moved:  # the owner writes, and the copy applies it, right after this read
            moved.append(True)
            with shop.context("customers").transaction() as tx:
                tx.update("Customer", cid, name="newer")
            Runner(shop).drain()
        return row

    owner.fetch = fetch_then_write  # type: ignore[method-assign]
    copy = shop.charter.copies["order_customers"]
    finding = classify(owner, entity, shop.store("orders"), copy, cid, clock.time_s())
    assert moved and (finding is None or finding.kind == "in_flight"), finding


@pytest.mark.processes
def test_charter_run_reconciles_repairs_and_stops_cleanly(shop_file: Path) -> None:
    scheduled(shop_file)
    system = charter.load(shop_file)
    try:
        ids = customers(system, 5)
        Runner(system).drain()
        time.sleep(1.2)  # older than the copy's window
        plant_missing_and_divergent(system, ids[0], ids[1])
        process = subprocess.Popen(
            charter_command("run", "-f", str(shop_file)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            until(lambda: (d := last(system)) is not None and d.repaired)
        finally:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "reconciling copy 'order_customers' every 1s, repairing missing" in out
        assert "stopped cleanly" in out and "Traceback" not in err
        assert "1 missing, 1 divergent; repaired 1 missing, 1 left" in err
        copy = system.charter.copies["order_customers"]
        rows = {r["id"]: r["name"] for r in system.store("orders").copy_rows(copy)}
        assert rows[ids[0]] == "C0" and rows[ids[1]] == "Written past charter"
    finally:
        system.close()


@pytest.mark.processes
def test_a_runner_that_cannot_read_the_owner_records_the_failure(
    shop_file: Path, backend: Backend
) -> None:
    """A copy's process without the owner's credentials cannot check: each try is kept as
    failed, with the reason, and status says so (the copy's state stays what it is)."""
    scheduled(shop_file)
    system = charter.load(shop_file)
    try:
        customers(system, 3)
        Runner(system).drain()
        store = system.charter.contexts["customers"].store
    finally:
        system.close()
    edit(shop_file, f'store: "{store}"', f'store: "{backend.out_of_reach(store)}"')
    system = charter.load(shop_file)
    try:
        runner = Runner(system, ["orders"])
        with runner:
            until(lambda: runner.reconciler.checks)
        found = last(system)
        assert found is not None and found.error and found.rows == 0
        row = next(r for r in status(system, "orders") if r.copy == "order_customers")
        assert row.state == OK and row.last_check == found
    finally:
        system.close()
    shown = CliRunner().invoke(main, ["status", "-f", str(shop_file), "--context", "orders"])
    assert "order_customers reconciliation: failed" in shown.output, shown.output


def test_checks_again_and_again_leave_no_connections_behind(shop: System) -> None:
    """A check digests both sides in threads of its own, a new pool each time; on SQLite
    each thread opened a connection per store that stayed open until the store closed: a
    file descriptor (and a page cache) per check, which a schedule of every second ran out
    of. Memory and descriptors must stay flat however many checks run."""
    import os

    customers(shop, 20)
    Runner(shop).drain()
    copy = shop.charter.copies["order_customers"]
    for _ in range(3):
        assert reconcile.check(shop, copy).clean
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        assert reconcile.check(shop, copy).clean
    assert len(os.listdir("/proc/self/fd")) <= before + 4


def test_the_reconciler_checks_incrementally_and_rebuilds_what_no_trigger_saw(
    shop_file: Path,
) -> None:
    """The schedule compares the buckets the databases keep; a runner's first check of a
    copy, and one every REBUILD_S, builds them anew, so drift planted with triggers off
    (PostgreSQL) is found by it though no bucket saw it; the checks between find only what
    the triggers saw."""
    from charter.reconcile import schedule
    from charter.reports import Reports

    scheduled(shop_file, "[]")
    system = charter.load(shop_file)
    try:
        ids = customers(system, 6)
        Runner(system).drain()
        copy = system.charter.copies["order_customers"]
        assert reconcile.check(system, copy, incremental_digests=True).clean  # built
        reconciler = schedule.Reconciler(system, [copy], Reports())
        with later_than_the_window():
            plant_missing_and_divergent(system, ids[0], ids[1])
            first = reconciler.once(copy)  # this runner's first: built anew
            assert first.counts == {"missing": 1, "divergent": 1}, first
            plant_missing_and_divergent(system, ids[2], ids[3])
            between = reconciler.once(copy)
            pg = system.charter.contexts["orders"].store.startswith("postgresql://")
            seen = {"missing": 1, "divergent": 1} if pg else {"missing": 2, "divergent": 2}
            assert between.counts == seen, between  # PostgreSQL: no trigger saw the second
            reconciler._built[copy.name] -= schedule.REBUILD_S  # a day later
            again = reconciler.once(copy)
            assert again.counts == {"missing": 2, "divergent": 2}, again
    finally:
        system.close()
