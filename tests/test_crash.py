"""G7 nothing lost: real processes killed with SIGKILL at random moments.

`charter run` dies while an owner writes 10,000 changes; an owner's writer dies in the
middle of its transactions; a relay dies between publishing and saving its position, so
the bus delivers everything again. After recovery every copy equals its owner row by
row, each version was applied at most once and never out of order, every committed change
has its event and a rolled-back one has none."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import charter
from charter.events import decode
from charter.relay import Relay
from charter.stores.base import OutboxRow
from charter.system import System
from tests.conftest import assert_converged, charter_command
from tests.workers import WorkerProcess


def crash_seed() -> int:
    """Random moments each run; CHARTER_CRASH_SEED=<n> replays one."""
    return int(os.environ.get("CHARTER_CRASH_SEED") or random.randrange(2**32))


def all_events(system: System, context: str) -> list[OutboxRow]:
    """The owner's whole outbox (its history), in commit order, page by page."""
    store = system.store(context)
    rows: list[OutboxRow] = []
    while page := store.outbox(rows[-1].seq if rows else 0, 1000):
        rows += page
    return rows


def copy_tables(system: System) -> dict[str, list[dict[str, Any]]]:
    """Every copy row with every column, synced_at included: a version applied again
    would stamp a new synced_at, so an unchanged snapshot means nothing was re-applied."""
    return {
        copy.name: list(system.store(copy.context).copy_rows(copy))
        for copy in system.charter.copies.values()
    }


def assert_pipeline_healthy(system: System) -> None:
    """Every copy converged, nothing parked, nothing left in flight."""
    assert_converged(system)
    for state in charter.status(system):
        assert state.parked == 0, f"{state.copy}: {state.parked} events parked"
        assert state.synced, f"{state.copy} not synced: {state}"


class SQLiteApplyLog:
    """Observes every write of the projectors into the copy tables, through triggers that
    log (copy, id, version) in the copy's own store, inside the projector's transaction:
    a rolled-back apply leaves no entry, a committed one exactly one.

    SQLite only. charter has no backend-neutral way to observe applies yet (see the
    proposal in the report: an applied-log option or counter on the Store protocol). On
    another backend the convergence checks still run, and only the final apply-once check
    skips, saying why."""

    TABLE = "test_apply_log"

    def __init__(self, system: System) -> None:
        self.system = system
        self.paths: dict[str, Path] = {}
        self.unsupported = ""
        for copy in system.charter.copies.values():
            url = system.charter.contexts[copy.context].store
            if not url.startswith("sqlite:///"):
                self.unsupported = f"no apply log for store {url}: only SQLite is observable"
                return
            system.store(copy.context)  # the copy table exists from here on
            self.paths[copy.name] = Path(urlsplit(url).path)
        for name, path in self.paths.items():
            with _connect(path) as conn:
                conn.executescript(
                    f"""
                    CREATE TABLE IF NOT EXISTS {self.TABLE} (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT, copy TEXT NOT NULL,
                        id TEXT NOT NULL, version INTEGER NOT NULL, how TEXT NOT NULL
                    );
                    CREATE TRIGGER IF NOT EXISTS "{name}_test_log_insert" AFTER INSERT ON "{name}"
                    BEGIN INSERT INTO {self.TABLE} (copy, id, version, how)
                          VALUES ('{name}', NEW.id, NEW.version, 'insert'); END;
                    CREATE TRIGGER IF NOT EXISTS "{name}_test_log_update" AFTER UPDATE ON "{name}"
                    BEGIN INSERT INTO {self.TABLE} (copy, id, version, how)
                          VALUES ('{name}', NEW.id, NEW.version, 'update'); END;
                    CREATE TRIGGER IF NOT EXISTS "{name}_test_log_delete" AFTER DELETE ON "{name}"
                    BEGIN INSERT INTO {self.TABLE} (copy, id, version, how)
                          VALUES ('{name}', OLD.id, OLD.version, 'delete'); END;
                    """
                )

    def entries(self) -> list[tuple[str, str, int, str]]:
        rows: list[tuple[str, str, int, str]] = []
        for name, path in self.paths.items():
            with _connect(path) as conn:
                rows += conn.execute(
                    f"SELECT copy, id, version, how FROM {self.TABLE} WHERE copy = ? ORDER BY seq",
                    (name,),
                ).fetchall()
        return rows

    def assert_each_version_applied_at_most_once(self) -> int:
        """No (copy, id, version) written twice; per id, versions only go up, and a deleted id
        never comes back; the log agrees with the copy tables. Returns how many applies."""
        if self.unsupported:
            pytest.skip(f"copies converged; applied-once not checked: {self.unsupported}")
        entries = self.entries()
        writes = Counter((c, i, v) for c, i, v, how in entries if how != "delete")
        twice = [key for key, count in writes.items() if count > 1]
        assert twice == [], f"{len(twice)} versions applied more than once, e.g. {twice[:3]}"
        last: dict[tuple[str, str], tuple[int, str]] = {}
        for copy, entity_id, version, how in entries:
            key = (copy, entity_id)
            if key in last:
                before, before_how = last[key]
                assert before_how != "delete", f"{key} came back at {version} after a delete"
                if how != "delete":
                    assert version > before, f"{key} went from {before} to {version}"
            last[key] = (version, how)
        logged = {key: v for key, (v, how) in last.items() if how != "delete"}
        tables = {
            (name, row["id"]): row["version"]
            for name, rows in copy_tables(self.system).items()
            for row in rows
        }
        assert logged == tables, "the apply log missed a write: it cannot be trusted"
        return len(writes)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


# -- `charter run` killed at random while the owner writes ---------------------------------


def write_paced(system: System, total: int, seconds: float, rng: random.Random) -> int:
    """`total` changes to customers (creates, updates, a few deletes), half the transactions
    a single change and the others 100, spread over about `seconds` so that the kills land
    while there is work in flight."""
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(total - sum(sizes), 1 if rng.random() < 0.5 else 100))
    customers = system.context("customers")
    alive: list[str] = []
    start = time.monotonic()
    made = 0
    for number, size in enumerate(sizes):
        lead = start + seconds * number / len(sizes) - time.monotonic()
        if lead > 0:
            time.sleep(lead)  # pacing the load, not waiting for anything
        with customers.transaction() as tx:
            for k in range(size):
                roll = rng.random()
                if roll < 0.3 or len(alive) < 10:
                    email = f"p{number}-{k}@example.com"
                    alive.append(
                        tx.create("Customer", email=email, name=email, password_hash="h").id
                    )
                elif roll < 0.98:
                    tx.update(
                        "Customer",
                        rng.choice(alive),
                        name=f"n{number}-{k}",
                        address=f"{number} {k} road",
                    )
                else:
                    tx.delete("Customer", alive.pop(rng.randrange(len(alive))))
        made += size
    return made


def progress(system: System) -> tuple[int, ...]:
    """How far the pipeline got: the bus head (relay) and each copy's checkpoint."""
    copies = system.charter.copies.values()
    checkpoints = (system.store(copy.context).checkpoint(copy) for copy in copies)
    return (system.bus.head("Customer"), *(c.position if c else -1 for c in checkpoints))


def test_charter_run_killed_at_random_moments_applies_every_version_once(
    shop: System, shop_file: Path
) -> None:
    seed = crash_seed()
    rng = random.Random(seed)
    log = SQLiteApplyLog(shop)
    total = 10_000
    made: list[int] = []
    failures: list[BaseException] = []
    writing = threading.Event()
    writing.set()

    def writer() -> None:
        try:
            made.append(write_paced(shop, total, seconds=3.0, rng=random.Random(seed + 1)))
        except BaseException as exc:
            failures.append(exc)
        finally:
            writing.clear()

    thread = threading.Thread(target=writer)
    thread.start()
    lives: list[str] = []
    progressed = 0
    try:
        while len(lives) < 8 and (writing.is_set() or len(lives) < 5):
            before = progress(shop)
            run = WorkerProcess(charter_command("run", "-f", str(shop_file)))
            started = "spawn"
            if rng.random() < 0.5:  # half the kills while it starts up, half once it runs
                run.wait_for(lambda line: line.startswith("running"))
                started = "running"
            life = rng.uniform(0.1, 0.7)
            time.sleep(life)  # the random moment of the crash
            code = run.kill()
            assert code == -signal.SIGKILL, f"charter run ended by itself ({code}):\n{run.output}"
            after = progress(shop)
            progressed += after != before
            lives.append(f"{started}+{life:.2f}s: {before} -> {after}")
    finally:
        thread.join(60)
    assert failures == [] and made == [total]
    context = f"seed {seed}; lives: {lives}"
    assert progressed >= 2, f"the kills never caught charter run at work; {context}"

    final = subprocess.run(
        charter_command("run", "--once", "-f", str(shop_file)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert final.returncode == 0, final.stdout + final.stderr
    events = all_events(shop, "customers")
    assert len(events) == total, "a committed change without its event"
    assert_pipeline_healthy(shop)
    applied = log.assert_each_version_applied_at_most_once()
    assert applied > 0, context


# -- the owner's writer killed in the middle of transactions --------------------------------


def assert_rolled_back(system: System, pending: list[list[Any]]) -> None:
    """Nothing of a transaction that never committed: no row version, no event."""
    customers = system.context("customers")
    store = system.store("customers")
    new = {entity_id for entity_id, _, op in pending if op == "created"}
    for entity_id, version, op in pending:
        record = customers.get("Customer", entity_id)
        history = store.history("Customer", entity_id)
        assert [h.version for h in history if h.version >= version] == [], (
            f"an event for the rolled-back {op} of {entity_id} (version {version})"
        )
        if entity_id in new:
            assert record is None and history == [], f"{entity_id} created in a rollback"
        else:
            assert record is not None and record.version < version, f"{op} {entity_id} kept"


def test_owner_writer_killed_mid_transaction_keeps_outbox_and_rows_in_step(
    shop: System, shop_file: Path
) -> None:
    seed = crash_seed()
    rng = random.Random(seed)
    for context in shop.charter.contexts:
        shop.store(context)
    runner = charter.Runner(shop).start()  # the pipeline keeps running while writers die
    committed: list[list[Any]] = []
    paused_kills = 0
    try:
        for round_ in range(6):
            pause_at = rng.randint(2, 15) if round_ % 2 == 0 else 0
            writer = WorkerProcess.worker(
                "writer", shop_file, seed=seed % 100_000 * 10 + round_, pause_at=pause_at
            )
            if pause_at:  # killed for sure in the middle of a transaction, lock held
                line = writer.wait_for(lambda line: '"paused"' in line)
            else:  # killed at a random moment, most likely inside a transaction too
                writer.wait_for(lambda line: '"committed"' in line)
                time.sleep(rng.uniform(0.05, 0.4))
            code = writer.kill()
            assert code == -signal.SIGKILL, f"the writer ended by itself ({code}):\n{writer.output}"
            for doc in writer.json_lines():
                committed += doc.get("changes", [])
            if pause_at:
                pending = json.loads(line)["pending"]
                assert {op for _, _, op in pending} >= {"created", "updated"}
                assert_rolled_back(shop, pending)  # now, before anyone writes again
                paused_kills += 1
    finally:
        runner.stop()
    assert runner.errors == []
    assert paused_kills == 3 and len(committed) > 100

    events = all_events(shop, "customers")
    history: dict[str, list[OutboxRow]] = defaultdict(list)
    for event in events:
        history[event.entity_id].append(event)
    spec = shop.charter.entities["Customer"]
    rows = {row["id"]: row for row in shop.store("customers").rows(spec)}
    for entity_id, trail in history.items():
        assert [e.version for e in trail] == list(range(1, len(trail) + 1)), (
            f"{entity_id}: history versions {[e.version for e in trail]} have a gap or a repeat"
        )
        last = trail[-1]
        if entity_id in rows:  # no event beyond the row, and the row's own event is there
            row = rows[entity_id]
            assert last.version == row["version"] and last.op != "deleted", entity_id
            assert decode(last.body).state == {n: row[n] for n in spec.public_names}
        else:
            assert last.op == "deleted", f"{entity_id}: events for a row that never committed"
    assert rows.keys() <= history.keys(), "a committed row without its events"
    ops = {(e.entity_id, e.version): e.op for e in events}
    missing = [c for c in committed if ops.get((c[0], c[1])) != c[2]]
    assert missing == [], f"committed changes without their event: {missing[:3]}"

    charter.Runner(shop).drain()
    assert_pipeline_healthy(shop)


# -- a relay that crashed between publishing and saving its position ------------------------


def make_changes(system: System, count: int, seed: int) -> None:
    rng = random.Random(seed)
    customers = system.context("customers")
    alive: list[str] = []
    for number in range(count):
        with customers.transaction() as tx:
            for k in range(rng.randint(1, 5)):
                roll = rng.random()
                if roll < 0.35 or len(alive) < 3:
                    email = f"r{seed}-{number}-{k}@example.com"
                    alive.append(
                        tx.create("Customer", email=email, name=email, password_hash="h").id
                    )
                elif roll < 0.9:
                    tx.update("Customer", rng.choice(alive), name=f"{number} {k}", address="x")
                else:
                    tx.delete("Customer", alive.pop(rng.randrange(len(alive))))


def republish_everything(system: System) -> int:
    """What a relay does after it crashed with its position never saved: publish its whole
    outbox again, from the start."""
    relay = Relay("customers", system.store("customers"), system.bus)
    relay.rewind(0)
    moved = 0
    while step := relay.step():
        moved += step
    return moved


def test_events_delivered_again_after_a_relay_crash_are_not_applied_again(
    shop: System,
) -> None:
    log = SQLiteApplyLog(shop)
    make_changes(shop, 400, seed=1)
    runner = charter.Runner(shop)
    runner.drain()
    assert_pipeline_healthy(shop)
    before = copy_tables(shop)
    events = len(all_events(shop, "customers"))

    # the bus still holds every event: the re-published ones are the same event ids
    assert republish_everything(shop) == events
    runner.drain()
    assert copy_tables(shop) == before, "a duplicate was applied again"

    # the bus has forgotten what every copy applied: the same events come back as new
    # deliveries, and each projector must see them and skip them all
    forgotten = shop.bus.compact(0)
    assert republish_everything(shop) == events
    delivered = runner.drain()
    if forgotten:
        copies = len(shop.charter.copies)
        assert delivered >= forgotten * copies, "the duplicates were never delivered"
    assert copy_tables(shop) == before, "a duplicate delivery was applied again"
    assert_pipeline_healthy(shop)

    make_changes(shop, 100, seed=2)  # and new changes still flow after all that
    runner.drain()
    assert_pipeline_healthy(shop)
    log.assert_each_version_applied_at_most_once()
