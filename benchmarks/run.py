"""charter's figures in one run: each beside the raw limit of the same database and beside a
peer (the ``eventsourcing`` library, see ``peer_eventsourcing.py``), with ratios and the
targets from the issue.

    .venv/bin/python benchmarks/run.py                 # everything (~25-35 minutes)
    .venv/bin/python benchmarks/run.py --quick         # smaller counts, a couple of minutes
    .venv/bin/python benchmarks/run.py --only latency  # owner | pipeline | latency | memory | diff
    .venv/bin/python benchmarks/run.py --only latency-cost --only pg-nats-latency-cost
    .venv/bin/python benchmarks/run.py --only wait-for
    .venv/bin/python benchmarks/run.py --only pg-writes --only relay-nats  # servers.py
    .venv/bin/python benchmarks/run.py --only visibility  # visibility.py: contract vs public
    .venv/bin/python benchmarks/run.py --only audit    # charter audit beside pgBadger, audit_log.py
    .venv/bin/python benchmarks/run.py --only reconcile  # reconciling.py: beside floors, reladiff

The sections pg-writes, relay-nats, pg-nats-e2e and pg-nats-latency (servers.py) run charter on
PostgreSQL and NATS JetStream (--pg, --nats; defaults for a local test setup) beside plain
psycopg and nats-py. They are part of a full run and skipped, with a note, when the servers
do not answer.

Every SQLite connection in every measurement runs journal_mode=WAL, synchronous=FULL (each
commit fsyncs the WAL): charter's default, eventsourcing's effective default, and set
explicitly on the raw connections. A target missed prints MISS; the exit status is 0 anyway.
A full run (no --quick, no --only) rewrites the generated part of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.metadata
import os
import platform
import queue
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import audit_log
import commands_bench
import diffs
import orjson
import peer_eventsourcing as peer
import reconciling
import servers
import visibility as visibility_bench
from workload import (
    ChangeMaker,
    Toggled,
    alive,
    charter_run,
    on_off_text,
    settled,
    toggled_blocks,
)

import charter
from charter.events import Event
from charter.ids import uuid7
from charter.runner import Runner
from charter.status import status
from charter.system import ContextHandle, System
from charter.tokens import parse

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
READING_MARK = "<!-- everything below this line is written by hand; run.py keeps it -->"
SECTIONS = ("owner", "pipeline", "latency", "memory", "diff", "latency-cost", "wait-for")
COMMANDS = "commands"  # command round trips on SQLite and on the servers: commands_bench.py
ALL_SECTIONS = (
    *SECTIONS,
    *servers.SECTIONS,
    visibility_bench.SECTION,
    "audit",
    COMMANDS,
    reconciling.SECTION,
)
DURABILITY = "journal_mode=WAL, synchronous=FULL"
UPDATE_FRACTION = peer.UPDATE_FRACTION  # the same change mix as the peer's pipeline
ENTITY = "Customer"
COPIES = ("order_customers", "mailing_customers")
SYNC_TIMEOUT_S = 1800.0
STARTED = dt.datetime.now(dt.UTC)

CHARTER_FILE = """\
charter: 1
name: bench
bus: sqlite:///bus.db
contexts:
  customers: {team: customer-team, store: "sqlite:///customers.db"}
  orders:    {team: order-team,    store: "sqlite:///orders.db"}
  mailing:   {team: marketing,     store: "sqlite:///mailing.db"}
entities:
  Customer:
    owner: customers
    why: creates accounts; keeps e-mail addresses unique
    fields:
      name:  {type: string}
      email: {type: string, unique: true}
copies:
  order_customers:
    in: orders
    of: Customer
    fields: [name, email]
    window: 5s
    breaks: order confirmations go to an outdated e-mail address
  mailing_customers:
    in: mailing
    of: Customer
    fields: [name, email]
    window: 5s
    breaks: newsletters go to an outdated e-mail address
"""


@dataclass(frozen=True)
class Sizes:
    owner_commits: int
    pipeline_changes: int
    peer_pipeline_changes: int
    latency_s: float
    memory_changes: int


FULL = Sizes(5000, 100_000, 20_000, 10.0, 1_000_000)
QUICK = Sizes(1500, 20_000, 5_000, 3.0, 100_000)


@dataclass
class Row:
    """One line of the figures table (already formatted)."""

    measure: str
    raw: str
    ours: str
    peer: str
    ratio: str
    target: str
    verdict: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(f"  {text}")


def say(text: str) -> None:
    print(text, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**MISS**"


# --- helpers: folders, raw connections, the charter system ---------------------------------


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"charter-bench-{prefix}-") as tmp:
        yield Path(tmp)


def raw_connect(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection at the same durability setting as charter's."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def pragmas(conn: sqlite3.Connection) -> str:
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
        conn.execute("PRAGMA synchronous").fetchone()[0]
    ]
    return f"journal_mode={mode}, synchronous={sync}"


def new_system(folder: Path, more: str = "") -> System:
    """A fresh charter system in `folder`, every store and the bus opened and prepared;
    `more` is added to the charter file (say, "latency_retention: 0\n")."""
    path = folder / "charter.yaml"
    path.write_text(CHARTER_FILE + more)
    system = charter.load(path)
    for name in system.charter.contexts:
        system.store(name)
    _ = system.bus
    return system


MEMORY_URLS = {
    "bus: sqlite:///bus.db": "bus: memory://{run}/bus",
    '"sqlite:///customers.db"': "memory://{run}/customers",
    '"sqlite:///orders.db"': "memory://{run}/orders",
    '"sqlite:///mailing.db"': "memory://{run}/mailing",
}


@contextmanager
def memory_system(folder: Path) -> Iterator[System]:
    """The same charter with every store and the bus in memory:// (the reference backend, in
    this process; names of this run's own), forgotten afterwards."""
    from charter.buses import memory as memory_bus
    from charter.stores import memory as memory_store

    run = f"bench-{uuid7()}"
    text = CHARTER_FILE
    for old, new in MEMORY_URLS.items():
        text = text.replace(old, new.format(run=run))
    path = folder / "charter.yaml"
    path.write_text(text)
    system = charter.load(path)
    try:
        for name in system.charter.contexts:
            system.store(name)
        _ = system.bus
        yield system
    finally:
        system.close()
        for name in system.charter.contexts:
            memory_store.forget(system.charter.contexts[name].store)
        memory_bus.forget(system.charter.bus)


def charter_pragmas(system: System) -> str:
    """The setting charter's own connections really run with (read through the store)."""
    conns: Any = getattr(system.store("customers"), "_conns", None)
    if conns is None:
        return "unknown (store has no sqlite connection)"
    return pragmas(conns.get())


def cloud_event(entity_id: str, version: int, op: str, name: str, email: str) -> Event:
    changed = ("name", "email") if op == "created" else ("email",)
    return Event(
        uuid7(),
        ENTITY,
        entity_id,
        version,
        op,
        changed,
        {"name": name, "email": email},
        "customers",
        "2026-11-23T12:00:00.000000Z",
    )


class Progress:
    """Tells when both copies hold everything the owner committed, through charter's own
    status API (`charter.status.status`: lag in events per copy), polled every few ms."""

    def __init__(self, system: System) -> None:
        self.system = system

    def synced(self) -> bool:
        return all(copy.synced for copy in status(self.system))

    def wait(
        self, timeout: float = SYNC_TIMEOUT_S, check: Callable[[], None] | None = None
    ) -> None:
        deadline = time.perf_counter() + timeout
        while True:
            began = time.perf_counter()
            if self.synced():
                return
            if check is not None:
                check()
            if began > deadline:
                raise TimeoutError("the copies did not catch up in time")
            # Never spend more than about half the time asking (a long backlog costs counts).
            time.sleep(max(0.005, time.perf_counter() - began))


def check_copies(system: System, maker: ChangeMaker) -> None:
    """Both copies hold every customer; a sample of them (updated ones among them) with the
    owner's current values."""
    owner = system.context("customers")
    probes = [maker.known[-1], *random.Random(7).sample(maker.known, min(200, len(maker.known)))]
    for name in COPIES:
        copy = system.context(system.charter.copies[name].context).copy(name)
        for probe in probes:
            want, got = owner.get(ENTITY, probe), copy.get(probe)
            if want is None or got is None or got["email"] != want["email"]:
                raise RuntimeError(f"{name}: the copy of {probe} is wrong: {got!r} vs {want!r}")
        if len(copy) != len(maker.known):
            raise RuntimeError(f"{name}: {len(copy)} rows, the owner has {len(maker.known)}")


# --- 1. owner writes -----------------------------------------------------------------------

RAW_OWNER_SCHEMA = """
CREATE TABLE customer (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, name TEXT, email TEXT
) WITHOUT ROWID;
CREATE UNIQUE INDEX customer_email_unique ON customer (email);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, entity TEXT NOT NULL,
    entity_id TEXT NOT NULL, version INTEGER NOT NULL, op TEXT NOT NULL,
    changed TEXT NOT NULL, time TEXT NOT NULL, body BLOB NOT NULL
);
CREATE INDEX outbox_entity_id ON outbox (entity_id);
CREATE TABLE guard (open INTEGER NOT NULL);
INSERT INTO guard VALUES (0);
"""
RAW_INSERT = "INSERT INTO customer (id, version, name, email) VALUES (?, ?, ?, ?)"
RAW_UPDATE = "UPDATE customer SET version = ?, email = ? WHERE id = ? AND version = ?"
RAW_OUTBOX = (
    "INSERT INTO outbox (event_id, entity, entity_id, version, op, changed, time, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

OutboxParams = tuple[str, str, str, int, str, str, str, bytes]


def outbox_params(event: Event) -> OutboxParams:
    return (
        event.id,
        event.entity,
        event.entity_id,
        event.version,
        event.op,
        ",".join(event.changed),
        event.time,
        event.encode(),
    )


def raw_owner_db(folder: Path, guard: bool = False) -> sqlite3.Connection:
    conn = raw_connect(folder / "raw-owner.db")
    conn.executescript(RAW_OWNER_SCHEMA)
    if guard:  # charter's single-writer triggers, as the SQLite store creates them
        for action in ("INSERT", "UPDATE", "DELETE"):
            conn.execute(
                f"CREATE TRIGGER customer_guard_{action.lower()} BEFORE {action} ON customer "
                "WHEN (SELECT open FROM guard) IS NOT 1 BEGIN SELECT RAISE(ABORT, 'no'); END"
            )
    return conn


class OwnerWriters:
    """The four owner writers of measurement 1, each on its own file, each doing one
    create per commit. `step(i)` does command i and returns nothing; the caller times it.

    raw:        BEGIN IMMEDIATE; entity row; outbox row; COMMIT (plain sqlite3). Ids and
                JSON bodies are made before the clock starts: the database's own limit.
    raw+guard:  the same plus charter's single-writer guard (two UPDATEs of a one-row
                table and BEFORE triggers), to show what the guard costs on its own.
    charter:    with ctx.transaction() as tx: tx.create("Customer", name=..., email=...)
    peer:       eventsourcing Registry.register(name, email): one save(), one transaction
                (the Registry of peer_eventsourcing.py, as its owner_writes() runs it).
    """

    NAMES = ("raw", "raw+guard", "charter", "eventsourcing")

    def __init__(self, folder: Path, n: int) -> None:
        self.rows: list[tuple[tuple[str, int, str, str], OutboxParams]] = []
        for i in range(n):
            cid = uuid7()
            name, email = f"name{i}", f"c{i}@example.org"
            event = cloud_event(cid, 1, "created", name, email)
            self.rows.append(((cid, 1, name, email), outbox_params(event)))
        (folder / "raw").mkdir()
        (folder / "guard").mkdir()
        (folder / "charter").mkdir()
        self.raw = raw_owner_db(folder / "raw")
        self.guarded = raw_owner_db(folder / "guard", guard=True)
        self.system = new_system(folder / "charter")
        self.ctx = self.system.context("customers")
        self.peer = peer.Registry(env=peer._env_for(peer.Registry.name, folder / "es.sqlite"))
        self.steps: dict[str, Callable[[int], None]] = {
            "raw": self.raw_step,
            "raw+guard": self.guard_step,
            "charter": self.charter_step,
            "eventsourcing": self.peer_step,
        }

    def raw_step(self, i: int) -> None:
        entity_row, outbox_row = self.rows[i]
        conn = self.raw
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(RAW_INSERT, entity_row)
        conn.execute(RAW_OUTBOX, outbox_row)
        conn.execute("COMMIT")

    def guard_step(self, i: int) -> None:
        entity_row, outbox_row = self.rows[i]
        conn = self.guarded
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE guard SET open = 1")
        conn.execute(RAW_INSERT, entity_row)
        conn.execute(RAW_OUTBOX, outbox_row)
        conn.execute("UPDATE guard SET open = 0")
        conn.execute("COMMIT")

    def charter_step(self, i: int) -> None:
        with self.ctx.transaction() as tx:
            tx.create(ENTITY, name=f"name{i}", email=f"c{i}@example.org")

    def peer_step(self, i: int) -> None:
        self.peer.register(f"name{i}", f"c{i}@example.org")

    def close(self) -> None:
        self.raw.close()
        self.guarded.close()
        self.system.close()
        self.peer.close()


def owner_samples(n: int, warmup: int = 50) -> dict[str, list[float]]:
    """Seconds per commit, every commit timed, the four writers taking turns commit by
    commit (in a rotating order), so that all of them meet the same disk at the same moment:
    this machine's fsync time wanders (other work shares the disk) and separate runs of a
    few seconds each differed by 2-3x."""
    samples: dict[str, list[float]] = {name: [] for name in OwnerWriters.NAMES}
    with scratch("owner") as folder:
        writers = OwnerWriters(folder, warmup + n)
        try:
            order = list(OwnerWriters.NAMES)
            clock = time.perf_counter
            for i in range(warmup + n):
                order.append(order.pop(0))
                for name in order:
                    step = writers.steps[name]
                    start = clock()
                    step(i)
                    elapsed = clock() - start
                    if i >= warmup:
                        samples[name].append(elapsed)
            if writers.peer.recorder.max_notification_id() != warmup + n:
                raise RuntimeError("eventsourcing did not record every command")
        finally:
            writers.close()
    return samples


def bench_owner(sizes: Sizes, report: Report) -> None:
    n = sizes.owner_commits
    say(f"\n[1] owner writes: one entity per transaction, {n} commits each, taking turns")
    samples = owner_samples(n)
    median = {name: statistics.median(v) * 1e6 for name, v in samples.items()}
    mean = {name: statistics.fmean(v) * 1e6 for name, v in samples.items()}
    p99 = {name: percentile(v, 99) * 1e6 for name, v in samples.items()}
    for name in OwnerWriters.NAMES:
        say(
            f"  {name:14s} median {median[name]:6.0f} µs  mean {mean[name]:6.0f} µs  "
            f"p99 {p99[name]:6.0f} µs"
        )
    alone = peer.owner_writes(n) * 1e6
    say(f"  eventsourcing owner_writes({n}) on its own, as a cross-check: {alone:.0f} µs")

    def overheads(figures: dict[str, float]) -> tuple[float, float, float]:
        ours = figures["charter"] - figures["raw"]
        theirs = figures["eventsourcing"] - figures["raw"]
        return ours, theirs, (ours / theirs if theirs > 0 else float("inf"))

    our_over, peer_over, ratio = overheads(median)
    mean_ours, mean_peer, mean_ratio = overheads(mean)
    report.rows.append(
        Row(
            "1. owner write, 1 entity/commit (µs/commit, median)",
            f"{median['raw']:.0f}",
            f"{median['charter']:.0f} (+{our_over:.0f} over raw)",
            f"{median['eventsourcing']:.0f} (+{peer_over:.0f} over raw)",
            f"overhead ours/peer's = {ratio:.2f}",
            "≤ 0.33",
            verdict(ratio <= 1 / 3),
        )
    )
    report.note(
        f"owner writes: {n:,} commits each, every commit timed, the four writers taking turns "
        "commit by commit. Median µs/commit: "
        + ", ".join(f"{k} {median[k]:.0f}" for k in OwnerWriters.NAMES)
        + "; mean (includes WAL checkpoints and disk hiccups): "
        + ", ".join(f"{k} {mean[k]:.0f}" for k in OwnerWriters.NAMES)
        + "; p99: "
        + ", ".join(f"{k} {p99[k]:.0f}" for k in OwnerWriters.NAMES)
    )
    report.note(
        f"owner writes by the mean: overhead charter +{mean_ours:.0f} µs, eventsourcing "
        f"+{mean_peer:.0f} µs, ratio {mean_ratio:.2f}. eventsourcing's own owner_writes({n:,}) "
        f"run alone right after: {alone:.0f} µs/command"
    )
    report.note(
        f"owner writes: charter's single-writer guard alone (raw+guard minus raw) costs "
        f"{median['raw+guard'] - median['raw']:+.0f} µs of charter's {our_over:.0f} µs "
        "overhead (median)"
    )


# --- 2. end to end -------------------------------------------------------------------------

RAW_BUS_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, entity TEXT NOT NULL,
    subject TEXT NOT NULL, time TEXT NOT NULL, published_at REAL NOT NULL, body BLOB NOT NULL
);
CREATE INDEX events_entity_seq ON events (entity, seq);
"""
RAW_COPY_SCHEMA = """
CREATE TABLE copy (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, name TEXT, email TEXT, synced_at TEXT
) WITHOUT ROWID;
CREATE TABLE checkpoint (id INTEGER PRIMARY KEY, position INTEGER NOT NULL);
"""
RAW_UPSERT = (
    "INSERT INTO copy (id, version, name, email, synced_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET version = excluded.version, name = excluded.name, "
    "email = excluded.email, synced_at = excluded.synced_at WHERE excluded.version > copy.version"
)

RawChange = tuple[str, int, str, str, OutboxParams]  # id, version, name, email, outbox row


def raw_changes(n: int, per_transaction: int) -> list[list[RawChange]]:
    """The pipeline's change mix as ready-made rows, one list per transaction."""
    rng = random.Random(1234)
    known: list[tuple[str, str]] = []  # (id, name)
    versions: dict[str, int] = {}
    batches: list[list[RawChange]] = []
    done, seq = 0, 0
    while done < n:
        size = min(per_transaction, n - done)
        n_updates = min(int(size * UPDATE_FRACTION), len(known))
        batch: list[RawChange] = []
        for k, (cid, name) in enumerate(rng.sample(known, n_updates)):
            version = versions[cid] = versions[cid] + 1
            email = f"moved{seq}-{k}@example.org"
            event = cloud_event(cid, version, "updated", name, email)
            batch.append((cid, version, name, email, outbox_params(event)))
        for i in range(size - n_updates):
            cid, name, email = uuid7(), f"name{seq}-{i}", f"c{seq}-{i}@example.org"
            versions[cid] = 1
            known.append((cid, name))
            batch.append(
                (cid, 1, name, email, outbox_params(cloud_event(cid, 1, "created", name, email)))
            )
        batches.append(batch)
        done += size
        seq += 1
    return batches


def raw_owner_tx(conn: sqlite3.Connection, batch: list[RawChange]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for cid, version, name, email, _ in batch:
        if version == 1:
            conn.execute(RAW_INSERT, (cid, 1, name, email))
        else:
            conn.execute(RAW_UPDATE, (version, email, cid, version - 1))
    conn.executemany(RAW_OUTBOX, [change[4] for change in batch])
    conn.execute("COMMIT")


def raw_pipeline(n: int, per_transaction: int) -> tuple[float, float]:
    """(owner side only, whole path) in changes/s, plain sqlite3 in one thread.

    Owner side: the owner's transactions alone (entity rows + outbox rows, 100 a commit).
    Whole path: the same work charter does, done by the simplest possible code, serially:
    owner commit; read the new outbox rows and publish them to a bus file in one commit;
    for each of two copies read them from the bus, decode the JSON and upsert them with a
    checkpoint in one commit. Four fsynced commits per 100 changes."""
    batches = raw_changes(n, per_transaction)
    with scratch("raw-pipeline") as folder:
        conn = raw_owner_db(folder)
        start = time.perf_counter()
        for batch in batches:
            raw_owner_tx(conn, batch)
        owner_only = n / (time.perf_counter() - start)
        conn.close()
    with scratch("raw-path") as folder:
        owner = raw_owner_db(folder)
        bus = raw_connect(folder / "bus.db")
        bus.executescript(RAW_BUS_SCHEMA)
        copies: list[sqlite3.Connection] = []
        for name in COPIES:
            copy = raw_connect(folder / f"{name}.db")
            copy.executescript(RAW_COPY_SCHEMA)
            copies.append(copy)
        positions = [0 for _ in copies]
        relayed = 0
        start = time.perf_counter()
        for batch in batches:
            raw_owner_tx(owner, batch)
            rows = owner.execute(
                "SELECT seq, event_id, entity, entity_id, time, body FROM outbox WHERE seq > ? "
                "ORDER BY seq",
                (relayed,),
            ).fetchall()
            now = time.time()
            bus.execute("BEGIN IMMEDIATE")
            bus.executemany(
                "INSERT OR IGNORE INTO events (event_id, entity, subject, time, published_at, "
                "body) VALUES (?, ?, ?, ?, ?, ?)",
                [(r[1], r[2], r[3], r[4], now, r[5]) for r in rows],
            )
            bus.execute("COMMIT")
            relayed = rows[-1][0]
            for k, copy in enumerate(copies):
                got = bus.execute(
                    "SELECT seq, body FROM events WHERE entity = ? AND seq > ? ORDER BY seq",
                    (ENTITY, positions[k]),
                ).fetchall()
                stamp = dt.datetime.now(dt.UTC).isoformat()
                params = []
                for _, body in got:
                    doc = orjson.loads(body)
                    data = doc["data"]
                    params.append(
                        (doc["subject"], doc["entityversion"], data["name"], data["email"], stamp)
                    )
                copy.execute("BEGIN IMMEDIATE")
                copy.executemany(RAW_UPSERT, params)
                copy.execute("INSERT OR REPLACE INTO checkpoint VALUES (1, ?)", (got[-1][0],))
                copy.execute("COMMIT")
                positions[k] = got[-1][0]
        whole = n / (time.perf_counter() - start)
        for conn in (owner, bus, *copies):
            conn.close()
    return owner_only, whole


def charter_pipeline_in_process(
    n: int, per_transaction: int, opened: Callable[[Path], Any] = new_system
) -> tuple[float, float]:
    """(writer-side rate, end-to-end rate): the owner writes in the main thread while a
    Runner moves the events in background threads of the same process."""
    with scratch("pipeline") as folder, opened(folder) as system:
        progress = Progress(system)
        runner = Runner(system).start()
        try:
            maker = ChangeMaker(system.context("customers"))
            maker.batch(per_transaction)  # warm-up, drained before the clock starts
            progress.wait()
            start = time.perf_counter()
            written = maker.write(n, per_transaction)
            progress.wait()
            elapsed = time.perf_counter() - start
        finally:
            runner.stop()
        if runner.errors:
            raise RuntimeError(f"runner errors: {runner.errors[:3]}")
        check_copies(system, maker)
    return n / written, n / elapsed


def charter_pipeline_memory(n: int, per_transaction: int) -> tuple[float, float]:
    """The same on the memory backend (memory:// stores and bus, the runner in threads): no
    database at all, so what is left is charter's own Python, under one GIL."""
    return charter_pipeline_in_process(n, per_transaction, memory_system)


def charter_pipeline_process(n: int, per_transaction: int) -> tuple[float, float]:
    """The same, with the runner as a separate `charter run` process sharing the files."""
    with scratch("pipeline-proc") as folder, new_system(folder) as system:
        progress = Progress(system)
        with charter_run(folder) as proc:
            check = alive(proc, folder)
            maker = ChangeMaker(system.context("customers"))
            maker.batch(per_transaction)
            progress.wait(60, check)
            start = time.perf_counter()
            written = maker.write(n, per_transaction)
            progress.wait(check=check)
            elapsed = time.perf_counter() - start
        check_copies(system, maker)
    return n / written, n / elapsed


def charter_pipeline_processes(n: int, per_transaction: int) -> tuple[float, float]:
    """The same, with one `charter run --context X` process per context: the relay of the
    owner and each copy's projector in a process (and a GIL) of its own."""
    with scratch("pipeline-procs") as folder, new_system(folder) as system:
        progress = Progress(system)
        with ExitStack() as stack:
            procs = [
                stack.enter_context(charter_run(folder, "--context", name))
                for name in system.charter.contexts
            ]
            checks = [alive(proc, folder) for proc in procs]

            def check() -> None:
                for one in checks:
                    one()

            maker = ChangeMaker(system.context("customers"))
            maker.batch(per_transaction)
            progress.wait(60, check)
            start = time.perf_counter()
            written = maker.write(n, per_transaction)
            progress.wait(check=check)
            elapsed = time.perf_counter() - start
        check_copies(system, maker)
    return n / written, n / elapsed


MEMORY_LABEL = "memory:// stores and bus, runner in background threads"


def bench_pipeline(sizes: Sizes, report: Report, in_process: bool, separate: bool) -> None:
    n, n_peer, per = sizes.pipeline_changes, sizes.peer_pipeline_changes, 100
    say(f"\n[2] end to end: {n} changes, {per} per transaction, two copies")
    owner_only, whole = raw_pipeline(n, per)
    say(f"  raw sqlite3: owner side {owner_only:,.0f}/s, whole path in one thread {whole:,.0f}/s")
    say(f"  eventsourcing pipeline({n_peer}) ...")
    peer_rate = peer.pipeline(n_peer, per)
    say(f"  eventsourcing: {peer_rate:,.0f} changes/s")
    variants: list[tuple[str, Callable[[int, int], tuple[float, float]]]] = []
    if in_process:
        variants.append(("runner in background threads", charter_pipeline_in_process))
        variants.append((MEMORY_LABEL, charter_pipeline_memory))
    if separate:
        variants.append(("runner as `charter run` process", charter_pipeline_process))
        variants.append(
            ("runner as 3 `charter run --context` processes", charter_pipeline_processes)
        )
    sqlite_threads = 0.0
    for label, run in variants:
        writer_rate, rate = run(n, per)
        say(f"  charter, {label}: {rate:,.0f} changes/s (owner wrote at {writer_rate:,.0f}/s)")
        if label == MEMORY_LABEL:
            beside = f"{sqlite_threads:,.0f} SQLite, runner in threads" if sqlite_threads else "-"
            ratio = f"{rate / sqlite_threads:.1f}x SQLite" if sqlite_threads else "-"
            report.rows.append(
                Row(
                    f"2. end to end, {label} (changes/s)",
                    beside,
                    f"{rate:,.0f}",
                    "n/a",
                    ratio,
                    "charter's own ceiling (no target)",
                    "-",
                )
            )
            report.note(
                f"end to end, {label}: {n:,} changes, the same workload in the same run; the "
                f"owner alone wrote at {writer_rate:,.0f}/s; no database, so this is the "
                "Python of the owner, relay and two projectors sharing one GIL"
            )
            continue
        if label == "runner in background threads":
            sqlite_threads = rate
        x_peer = rate / peer_rate
        report.rows.append(
            Row(
                f"2. end to end, {label} (changes/s)",
                f"{owner_only:,.0f} owner side; {whole:,.0f} whole path",
                f"{rate:,.0f}",
                f"{peer_rate:,.0f}",
                f"{x_peer:.1f}x peer; {rate / whole:.2f}x raw whole path",
                "≥ 20,000/s; ≥ 10x peer",
                f"{verdict(rate >= 20_000)}; {verdict(x_peer >= 10)}",
            )
        )
        report.note(
            f"end to end, {label}: {n:,} changes; the owner alone wrote at {writer_rate:,.0f}/s "
            f"while the runner ran; clock from first write to both copies holding the last one"
        )
    report.note(
        f"end to end, eventsourcing: pipeline({n_peer:,}) — fewer changes than charter's "
        f"{n:,}, as it runs at about a thousand a second (leader + 2 followers, "
        "MultiThreadedRunner)"
    )
    report.note(
        f"end to end, raw limits: owner side only {owner_only:,.0f}/s (entity + outbox rows, "
        f"100 a commit); whole path {whole:,.0f}/s (owner, bus, two copies: 4 commits per 100 "
        "changes, one thread, no framework)"
    )


# --- 2b. what recording latencies costs ------------------------------------------------------


def apply_cost(batches: int = 400, size: int = 1000) -> tuple[float, float, float]:
    """The CPU that recording adds per event, apart from the noise of disks and a shared
    machine: (µs/event reading the commit times in the projector; µs/event of one copy's
    apply on the memory store, with the latencies counted and without), 1000-event batches
    taking turns. The SQL stores add one small statement part per batch to this."""
    from charter.projector import _latencies

    with scratch("apply-cost") as folder, memory_system(folder) as system:
        copy = system.charter.copies["order_customers"]
        store = system.store(copy.context)
        store.backfill(copy, iter(()), 0)
        per: dict[bool, list[float]] = {True: [], False: []}
        reading: list[float] = []
        position = 0
        for number in range(batches):
            items = []
            for _ in range(size):
                position += 1
                event = cloud_event(uuid7(), 1, "created", "n", f"{position}@x")
                items.append((position, event))
            start = time.perf_counter()
            timed = _latencies(items)
            reading.append((time.perf_counter() - start) / size * 1e6)
            recording = number % 4 in (0, 3)  # on, off, off, on: as on_and_off
            start = time.perf_counter()
            store.apply(copy, items, [], position, None, timed if recording else ())
            per[recording].append((time.perf_counter() - start) / size * 1e6)
    median = statistics.median
    return median(reading), median(per[True]), median(per[False])


LATENCY_COST_TARGET = 0.05


def latency_cost_blocks(rounds: int, n: int, per: int) -> Toggled:
    """(on rates, off rates): blocks of `n` changes in ONE SQLite system, the runner in
    background threads, recording switched between blocks (workload.toggled)."""
    with scratch("latency-cost") as folder, new_system(folder) as system:
        progress = Progress(system)
        runner = Runner(system).start()
        try:
            maker = ChangeMaker(system.context("customers"))
            found = toggled_blocks(maker, progress.wait, runner.projectors, rounds, n, per, say)
        finally:
            runner.stop()
        if runner.errors:
            raise RuntimeError(f"runner errors: {runner.errors[:3]}")
        check_copies(system, maker)
    return found


def bench_latency_cost(sizes: Sizes, report: Report) -> None:
    rounds = 16 if sizes.pipeline_changes >= 100_000 else 8
    n, per = max(5_000, sizes.pipeline_changes // 10), 100
    say(f"\n[2b] latency recorded or not: {rounds} rounds of two blocks of {n:,} changes")
    found = latency_cost_blocks(rounds, n, per)
    on, off = found.on, found.off
    cost, cpu = settled(on, off), settled(found.on_cpu, found.off_cpu)
    reading_us, with_us, without_us = apply_cost()
    say(
        f"  cost {cost.text()}: {cost.verdict(LATENCY_COST_TARGET)}; per CPU second of this "
        f"process: {cpu.text()}: {cpu.verdict(LATENCY_COST_TARGET)}; per event: "
        f"{reading_us:.2f} µs reading its commit time, one copy's apply on the memory store "
        f"{with_us:.2f} µs counted, {without_us:.2f} not"
    )
    report.rows.append(
        Row(
            "2b. end to end, latency recorded on / off in blocks of one system, runner in "
            "background threads (changes/s, median)",
            "n/a",
            f"{statistics.median(on):,.0f} on; {statistics.median(off):,.0f} off",
            "n/a",
            f"cost {cost.text()}; in CPU: {cpu.text()}",
            "≤ 5 %",
            f"{cost.verdict(LATENCY_COST_TARGET)} (CPU: {cpu.verdict(LATENCY_COST_TARGET)})",
        )
    )
    report.note(
        f"latency cost: {rounds} rounds of two blocks of {n:,} changes ({per} a transaction, "
        f"two copies) in one system, recording switched between blocks, taking turns; "
        f"{on_off_text(on, off)}; per CPU second of this process, "
        f"{on_off_text(found.on_cpu, found.off_cpu)}. "
        f"The CPU per event, 1000-event batches: {reading_us:.2f} µs reading its commit time "
        f"(projector); one copy's apply on the memory store {with_us:.2f} µs with the latencies "
        f"counted, {without_us:.2f} without (medians of 200 batches each, taking turns)"
    )


# --- 3. propagation latency ----------------------------------------------------------------


def _moment(value: str | dt.datetime) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def sqlite_file(url: str) -> Path:
    """sqlite:///abs/path.db?… → the file (charter resolves relative paths on load)."""
    return Path(urlsplit(url).path)


def paced_writes(
    ctx: ContextHandle, seconds: float, rate: float, tag: str
) -> tuple[list[str], float]:
    """One create per transaction, each due at start + i/rate; returns ids and achieved rate."""
    n = int(seconds * rate)
    ids: list[str] = []
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with ctx.transaction() as tx:
            ids.append(tx.create(ENTITY, name=f"{tag}{i}", email=f"{tag}{i}@example.org").id)
    return ids, n / (time.perf_counter() - start)


def latencies(system: System, ids: list[str]) -> list[float]:
    """Seconds from each change's commit time (the event's `time`, stamped by the owner just
    before its COMMIT; read from the owner's outbox) to the moment the later of the two
    copies applied it (the copy row's `synced_at`, stamped just before the copy's COMMIT)."""
    wanted = set(ids)
    owner_file = sqlite_file(system.charter.contexts["customers"].store)
    owner = sqlite3.connect(owner_file)
    committed = {
        entity_id: _moment(t)
        for entity_id, t in owner.execute("SELECT entity_id, time FROM charter_outbox")
        if entity_id in wanted
    }
    owner.close()
    applied: dict[str, float] = {}
    for name in COPIES:
        copy = system.charter.copies[name]
        for record in system.context(copy.context).copy(name):
            if record.id in wanted and record.synced_at is not None:
                moment = _moment(record.synced_at)
                applied[record.id] = max(applied.get(record.id, 0.0), moment)
    missing = wanted - set(applied)
    if missing:
        raise RuntimeError(f"{len(missing)} changes never reached the copies")
    return [applied[i] - committed[i] for i in ids]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latency_in_process(seconds: float, rate: float) -> tuple[list[float], float]:
    with scratch("latency") as folder, new_system(folder) as system:
        progress = Progress(system)
        runner = Runner(system).start()
        try:
            ctx = system.context("customers")
            paced_writes(ctx, 0.3, rate, "warm")
            progress.wait()
            ids, achieved = paced_writes(ctx, seconds, rate, "c")
            progress.wait()
        finally:
            runner.stop()
        return latencies(system, ids), achieved


def latency_process(seconds: float, rate: float) -> tuple[list[float], float]:
    with scratch("latency-proc") as folder, new_system(folder) as system:
        progress = Progress(system)
        with charter_run(folder) as proc:
            check = alive(proc, folder)
            ctx = system.context("customers")
            paced_writes(ctx, 0.3, rate, "warm")
            progress.wait(60, check)
            ids, achieved = paced_writes(ctx, seconds, rate, "c")
            progress.wait(60, check)
        return latencies(system, ids), achieved


def bench_latency(sizes: Sizes, report: Report) -> None:
    rate, seconds = 1000.0, sizes.latency_s
    say(f"\n[3] propagation latency at a steady {rate:.0f} changes/s for {seconds:.0f} s each")
    cases: list[tuple[str, Callable[[float, float], tuple[list[float], float]], float]] = [
        ("runner in background threads", latency_in_process, 0.010),
        ("runner as `charter run` process", latency_process, 0.050),
    ]
    for label, run, target in cases:
        values, achieved = run(seconds, rate)
        p50, p99, top = percentile(values, 50), percentile(values, 99), max(values)
        say(
            f"  {label}: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {top * 1e3:.1f} ms "
            f"({len(values)} changes at {achieved:.0f}/s)"
        )
        report.rows.append(
            Row(
                f"3. latency owner commit → both copies, {label}",
                "n/a",
                f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms",
                "n/a",
                f"max {top * 1e3:.1f} ms",
                f"p99 ≤ {target * 1e3:.0f} ms",
                verdict(p99 <= target),
            )
        )
        report.note(
            f"latency, {label}: {len(values):,} changes, one per transaction, paced at "
            f"{achieved:.0f}/s achieved; from the event's commit stamp to the later copy's "
            "synced_at stamp"
        )


# --- 4. memory of `charter run` ------------------------------------------------------------


def read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int, int]] = []  # (t, VmRSS kB, VmHWM kB)
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self._halt.wait(self.every):
            try:
                status = read_status(self.pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            self.samples.append((time.perf_counter() - start, status["VmRSS"], status["VmHWM"]))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def warm_up_changes(n: int) -> int:
    """Changes written before the baseline: enough that every worker has handled full
    batches (1,000 events) and SQLite's page caches have met their bound."""
    return max(20_000, n // 20)


def bench_memory(sizes: Sizes, report: Report) -> None:
    n, per = sizes.memory_changes, 1000
    warm = warm_up_changes(n)
    say(
        f"\n[4] `charter run` memory: {n:,} changes, {per} per transaction, two copies, "
        f"SQLite stores and bus; the first {warm:,} are the warm-up"
    )
    with scratch("memory") as folder, new_system(folder) as system:
        progress = Progress(system)
        with charter_run(folder) as proc:
            check = alive(proc, folder)
            maker = ChangeMaker(system.context("customers"))
            maker.batch(per)
            progress.wait(60, check)
            started = read_status(proc.pid)["VmRSS"]
            maker.write(warm - per, per)
            progress.wait(check=check)
            baseline = read_status(proc.pid)["VmRSS"]
            sampler = Sampler(proc.pid)
            sampler.start()
            start = time.perf_counter()
            written = maker.write(n - warm, per)
            progress.wait(check=check)
            elapsed = time.perf_counter() - start
            sampler.stop()
            final = read_status(proc.pid)
        check_copies(system, maker)
    hwm_mb = final["VmHWM"] / 1024
    rss_max = max(s[1] for s in sampler.samples) / 1024
    growth = rss_max - baseline / 1024
    quarters = [
        sampler.samples[min(len(sampler.samples) - 1, len(sampler.samples) * k // 4)][1] / 1024
        for k in (1, 2, 3)
    ]
    say(
        f"  runner RSS: {started / 1024:.0f} MB after its first batch, {baseline / 1024:.0f} MB "
        f"after warm-up, {final['VmRSS'] / 1024:.0f} MB at the end; max sampled after warm-up "
        f"{rss_max:.0f} MB (+{growth:.1f}), peak (VmHWM) {hwm_mb:.0f} MB; at 1/4, 1/2, 3/4 of "
        f"the run {', '.join(f'{q:.0f}' for q in quarters)} MB; owner wrote at "
        f"{(n - warm) / written:,.0f}/s, copies caught up after {elapsed:.0f} s "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    report.rows.append(
        Row(
            f"4. `charter run` resident memory over {n:,} changes (MB)",
            f"{started / 1024:.0f} after its first batch",
            f"{baseline / 1024:.0f} after warm-up → {final['VmRSS'] / 1024:.0f} at the end; "
            f"peak {max(rss_max, hwm_mb):.0f}",
            "n/a",
            f"peak minus warm-up {max(rss_max, hwm_mb) - baseline / 1024:+.1f}",
            "≤ +10 MB; < 100 MB",
            f"{verdict(max(rss_max, hwm_mb) - baseline / 1024 <= 10)}; "
            f"{verdict(max(rss_max, hwm_mb) < 100)}",
        )
    )
    report.note(
        f"memory: warm-up {warm:,} changes, then {n - warm:,}; {len(sampler.samples)} samples "
        f"of /proc/<pid>/status every 0.1 s over {elapsed:.0f} s; VmRSS after the first "
        f"batch {started / 1024:.0f} MB, after warm-up {baseline / 1024:.0f} MB, max sampled "
        f"{rss_max:.0f} MB, at the end {final['VmRSS'] / 1024:.0f} MB, VmHWM {hwm_mb:.0f} MB; "
        f"the owner wrote {n - warm:,} changes in {written:.0f} s "
        f"({(n - warm) / written:,.0f}/s), both copies held them all after {elapsed:.0f} s "
        f"({(n - warm) / elapsed:,.0f}/s end to end)"
    )


# --- 5. read your own writes: what wait_for adds to the propagation -------------------------

WAIT_SAMPLE_EVERY = 10  # of the changes written at 1,000/s, every 10th is waited for (100/s)
POLL_S = 0.00005  # the floor: a reader asking every 50 µs, what no wake-up can beat by much


def waits(
    system: System, seconds: float, rate: float, tag: str, how: str = "wait_for"
) -> tuple[list[tuple[str, float, float]], float]:
    """The owner writes one create per transaction at `rate`; every WAIT_SAMPLE_EVERY-th
    change's token goes to a reader thread, which calls `copy.wait_for(token)` (or, `poll`,
    asks the store every POLL_S and then reads the record). Returns, per sampled change,
    (id, committed, returned) on time.monotonic() (one clock for every process of the
    machine), and the rate achieved."""
    copy = system.context("orders").copy("order_customers")
    store = system.store("orders")
    handed: queue.Queue[tuple[str, float] | None] = queue.Queue()
    seen: list[tuple[str, float, float]] = []

    def reader() -> None:
        while (item := handed.get()) is not None:
            token, committed = item
            wanted = parse(token)
            if how == "wait_for":
                copy.wait_for(token, timeout=60)
            else:
                while store.wait_applied(copy.spec, wanted.id, wanted.version, 0) < 1:
                    time.sleep(POLL_S)
                copy.get(wanted.id)
            seen.append((wanted.id, committed, time.monotonic()))

    thread = threading.Thread(target=reader, name="reader")
    thread.start()
    ctx = system.context("customers")
    n = int(seconds * rate)
    start = time.perf_counter()
    try:
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            with ctx.transaction() as tx:
                made = tx.create(ENTITY, name=f"{tag}{i}", email=f"{tag}{i}@example.org")
            if i % WAIT_SAMPLE_EVERY == 0:
                handed.put((made.token, time.monotonic()))
    finally:
        handed.put(None)
        thread.join()
    return seen, n / (time.perf_counter() - start)


def note_applies(store: Any, copy: str, applied: dict[str, float]) -> None:
    """From now on, note in `applied` when (time.monotonic()) each record's first event to
    `copy` was applied: the moment the store's apply returned, its transaction committed."""
    inner = store.apply

    def apply(spec: Any, items: Any, *rest: Any) -> Any:
        result = inner(spec, items, *rest)
        if spec.name == copy:
            now = time.monotonic()
            for _, event in items:
                applied.setdefault(event.entity_id, now)
        return result

    store.apply = apply


# A runner in a process of its own that notes when it applied what (note_applies), and
# writes that down as JSON when it is stopped (SIGTERM).
NOTING_RUNNER = """
import json, signal, sys, threading
sys.path.insert(0, sys.argv[3])
import charter
from run import note_applies

system = charter.load(sys.argv[1])
applied = {}
note_applies(system.store("orders"), "order_customers", applied)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
with charter.Runner(system):
    print("running", flush=True)
    stop.wait()
with open(sys.argv[2], "w") as out:
    json.dump(applied, out)
system.close()
"""


Seen = dict[str, list[tuple[str, float, float]]]  # reader → (id, committed, returned)


def wait_rounds(system: System, seconds: float, rate: float) -> tuple[Seen, float]:
    """Both readers, wait_for and the floor, in four alternating rounds (a shared machine)."""
    seen: Seen = {"wait_for": [], "poll": []}
    rates = []
    waits(system, 0.3, rate, "warm")
    for n in range(4):
        for how in seen:
            found, achieved = waits(system, seconds / 4, rate, f"r{n}{how}", how)
            seen[how] += found
            rates.append(achieved)
    return seen, min(rates)


def wait_in_process(seconds: float, rate: float) -> tuple[Seen, dict[str, float], float]:
    with scratch("wait-for") as folder, new_system(folder) as system:
        applied: dict[str, float] = {}
        note_applies(system.store("orders"), "order_customers", applied)
        with Runner(system):
            seen, achieved = wait_rounds(system, seconds, rate)
        return seen, applied, achieved


def wait_process(seconds: float, rate: float) -> tuple[Seen, dict[str, float], float]:
    with scratch("wait-for-proc") as folder, new_system(folder) as system:
        noted = folder / "applied.json"
        runner = subprocess.Popen(
            [
                sys.executable,
                "-c",
                NOTING_RUNNER,
                str(folder / "charter.yaml"),
                str(noted),
                str(HERE),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert runner.stdout is not None and runner.stdout.readline().strip() == "running"
            seen, achieved = wait_rounds(system, seconds, rate)
        finally:
            runner.terminate()
            runner.wait(60)
        return seen, orjson.loads(noted.read_bytes()), achieved


def bench_wait_for(sizes: Sizes, report: Report) -> None:
    rate, seconds = 1000.0, sizes.latency_s
    say(
        f"\n[5] what wait_for adds to the propagation, at a steady {rate:.0f} changes/s for "
        f"{seconds:.0f} s each reader (every {WAIT_SAMPLE_EVERY}th change waited for)"
    )
    cases = [
        ("runner in background threads", wait_in_process),
        ("runner in another process", wait_process),
    ]
    for label, run in cases:
        seen, applied, achieved = run(seconds, rate)
        ms: dict[str, dict[str, float]] = {}
        for how, rows in seen.items():
            added = [returned - applied[i] for i, _, returned in rows]
            whole = [returned - committed for _, committed, returned in rows]
            spread = [applied[i] - committed for i, committed, _ in rows]
            ms[how] = {
                "p50": percentile(added, 50) * 1e3,
                "p99": percentile(added, 99) * 1e3,
                "beyond": (percentile(whole, 99) - percentile(spread, 99)) * 1e3,
                "propagation": percentile(spread, 99) * 1e3,
                "count": len(rows),
            }
        ours, floor = ms["wait_for"], ms["poll"]
        say(
            f"  {label}: wait_for adds p50 {ours['p50']:.2f} ms, p99 {ours['p99']:.2f} ms per "
            f"change (the 50 µs poller: p50 {floor['p50']:.2f}, p99 {floor['p99']:.2f}); "
            f"p99 commit→return minus p99 commit→applied {ours['beyond']:+.2f} ms "
            f"(propagation p99 {ours['propagation']:.1f} ms; {ours['count']:.0f} waits, "
            f"{achieved:.0f} changes/s at least)"
        )
        report.rows.append(
            Row(
                f"5. wait_for beyond propagation, {label}",
                f"poll 50 µs: +{floor['p50']:.2f} ms p50, +{floor['p99']:.2f} ms p99",
                f"+{ours['p50']:.2f} ms p50, +{ours['p99']:.2f} ms p99 per change",
                "n/a",
                f"p99 {ours['beyond']:+.2f} ms beyond propagation p99 {ours['propagation']:.1f} ms",
                "≤ +1 ms at p99",
                verdict(ours["beyond"] <= 1.0),
            )
        )
        report.note(
            f"wait_for, {label}: the owner writes one create per transaction at {rate:.0f}/s "
            f"({achieved:.0f}/s achieved at least); every {WAIT_SAMPLE_EVERY}th change's token "
            "goes to a reader thread: `copy.wait_for(token)`, or the floor, a reader asking "
            "the store every 50 µs and then reading the record; four alternating rounds of "
            "each. Per change, added = from the moment the projector's apply of it returned "
            "(its transaction committed; noted by wrapping the store's apply, in whichever "
            "process runs it) to the reader's return, on time.monotonic(). The target column: "
            "p99 of commit → wait_for's return minus p99 of commit → applied"
        )


# --- the report ----------------------------------------------------------------------------


def bench_diff(quick: bool, report: Report) -> None:
    """`charter diff` on 200 entities and 500 copies (diffs.py): the comparison and its
    rendering, the same after loading both files, and the whole command as a process."""
    say(
        f"\n[5] `charter diff`: {diffs.ENTITIES} entities, {diffs.COPIES} copies, against a "
        "version with a change of every kind on a tenth of them"
    )
    found = diffs.measure(3 if quick else 7)
    report.rows.append(
        Row(
            f"5. `charter diff`, {diffs.ENTITIES} entities / {diffs.COPIES} copies "
            "(s, median): compare + render; load both + compare + render; whole command",
            "n/a",
            f"{found['compare_render_s']:.3f}; {found['in_process_s']:.2f}; "
            f"{found['process_s']:.2f}",
            "n/a",
            "n/a",
            f"< {diffs.TARGET_S:g} s",
            verdict(found["process_s"] < diffs.TARGET_S),
        )
    )
    report.note(
        f"diff: {found['changes']} changes ({found['breaking']} breaking) between two "
        f"files of {diffs.ENTITIES} entities and {diffs.COPIES} copies; compare + render "
        f"(text, json, github) {found['compare_render_s'] * 1000:.0f} ms; both files "
        f"loaded too {found['in_process_s']:.2f} s; `charter diff --format json` as a "
        f"process {found['process_s']:.2f} s, {found['process_cpu_s']:.2f} s of CPU "
        "(interpreter and imports included)"
    )


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "cpu": f"{model}, {os.cpu_count()} cores",
        "ram": ram,
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "charter": f"{importlib.metadata.version('charter')} ({source_revision()})",
        "eventsourcing": importlib.metadata.version("eventsourcing"),
    }


def source_revision() -> str:
    """The git commit the figures were taken at (src/ changes under our feet otherwise)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ":/src"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "git revision unknown"
    return f"git {head}" + (", src/ has uncommitted changes" if dirty else "")


def peer_setting() -> str:
    with scratch("probe") as folder:
        app = peer.Registry(env=peer._env_for(peer.Registry.name, folder / "probe.sqlite"))
        try:
            found = peer.sqlite_settings(app)
        finally:
            app.close()
    sync = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}.get(found["synchronous"], "?")
    return f"journal_mode={found['journal_mode']}, synchronous={sync}"


def table(rows: list[Row]) -> str:
    head = Row("measurement", "raw SQLite", "charter", "eventsourcing", "ratio", "target", "result")
    lines = []
    for i, row in enumerate([head, *rows]):
        cells = [row.measure, row.raw, row.ours, row.peer, row.ratio, row.target, row.verdict]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "---|" * len(cells))
    return "\n".join(lines)


def render(report: Report, info: dict[str, str], settings: dict[str, str], mode: str) -> str:
    lines = [
        "# charter benchmarks: results",
        "",
        f"Date: {STARTED:%Y-%m-%d}, {STARTED:%H:%M}-{dt.datetime.now(dt.UTC):%H:%M} UTC. "
        f"Mode: {mode}. Produced by "
        "`.venv/bin/python benchmarks/run.py` (see README.md for what each figure means).",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in info.items()),
        "",
        "## Durability",
        "",
        f"Every SQLite connection in every measurement: **{DURABILITY}** (each commit fsyncs "
        "the write-ahead log, so a committed change survives power loss). It is charter's "
        "default and eventsourcing's effective default on this machine (eventsourcing sets WAL "
        "and leaves synchronous at SQLite's compiled-in default, FULL here), so no one is "
        "measured at a setting it would not ship with. Checked on live connections:",
        "",
        *(f"- {key}: {value}" for key, value in settings.items()),
        "",
        "## Figures",
        "",
        table(report.rows),
        "",
        "## Details",
        "",
        *(f"- {note}" for note in report.notes),
        "",
    ]
    return "\n".join(lines)


def bench_audit(quick: bool, info: dict[str, str], write: bool) -> None:
    """charter audit over a server log, beside pgBadger (audit_log.py); written to RESULTS.md
    for a full run or --write."""
    say("\naudit: making the log, then charter audit and pgBadger reading it")
    result = audit_log.run(quick)
    when = f"{STARTED:%Y-%m-%d %H:%M} UTC"
    machine_info = {k: v for k, v in info.items() if k in ("cpu", "ram", "os", "python", "charter")}
    machine_info["load average (1 min) after"] = f"{os.getloadavg()[0]:.1f}"
    block = audit_log.render(result, when, machine_info, "quick" if quick else "full")
    say(block)
    if write or not quick:
        audit_log.write_results(RESULTS, block)
        say(f"\nwritten (audit part): {RESULTS}")


def write_results(text: str) -> None:
    kept = f"{READING_MARK}\n\n## Reading the figures\n\n(to be written)\n"
    if RESULTS.exists():
        old = RESULTS.read_text()
        if READING_MARK in old:
            kept = READING_MARK + old.split(READING_MARK, 1)[1]
    RESULTS.write_text(text + "\n" + kept)


def wait_for_quiet(limit: float, load: float) -> float:
    """Wait up to `limit` seconds for the 1-minute load average to fall below `load`; this
    machine is shared, and other work on it moves fsync times by several times."""
    deadline = time.monotonic() + limit
    current = os.getloadavg()[0]
    if current >= load and limit > 0:
        say(f"\n(waiting up to {limit:.0f} s for load average {current:.1f} to fall below {load})")
    while current >= load and time.monotonic() < deadline:
        time.sleep(5)
        current = os.getloadavg()[0]
    return current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    parser.add_argument(
        "--only",
        action="append",
        choices=ALL_SECTIONS,
        help="run only this measurement (repeatable)",
    )
    parser.add_argument(
        "--no-separate-process",
        action="store_true",
        help="skip the `charter run` process variants of the end-to-end and latency measurements",
    )
    parser.add_argument(
        "--write", action="store_true", help="write RESULTS.md even for --quick or --only"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="S",
        help="before each measurement wait up to S seconds for the machine to calm down "
        "(1-minute load average below --quiet-load); default 180 for a full run, 0 for --quick",
    )
    parser.add_argument("--quiet-load", type=float, default=1.0, metavar="L")
    parser.add_argument(
        "--pg",
        default=os.environ.get("CHARTER_BENCH_PG", servers.PG_DEFAULT),
        metavar="URL",
        help="PostgreSQL for the server sections (a schema per context and run, dropped after; "
        "$CHARTER_BENCH_PG)",
    )
    parser.add_argument(
        "--nats",
        default=os.environ.get("CHARTER_BENCH_NATS", servers.NATS_DEFAULT),
        metavar="URL",
        help="NATS with JetStream for the server sections (a stream per run, deleted after; "
        "$CHARTER_BENCH_NATS)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    chosen = args.only or list(ALL_SECTIONS)
    sqlite_chosen = [name for name in SECTIONS if name in chosen]
    server_chosen = [name for name in servers.SECTIONS if name in chosen]
    info = machine()
    say("charter benchmarks: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    settings: dict[str, str] = {}
    if sqlite_chosen:
        with scratch("setting") as folder:
            system = new_system(folder)
            ours = charter_pragmas(system)
            system.close()
        with scratch("raw-setting") as folder:
            raw = raw_connect(folder / "probe.db")
            raw_setting = pragmas(raw)
            raw.close()
        settings = {"charter": ours, "raw sqlite3": raw_setting, "eventsourcing": peer_setting()}
        say(f"durability: {DURABILITY} — " + "; ".join(f"{k}: {v}" for k, v in settings.items()))
    where = servers.Servers(args.pg, args.nats)
    server_settings: dict[str, str] = {}
    server_report = servers.Report()
    if server_chosen:
        problem = servers.unreachable(where)
        if problem is None:
            server_settings = servers.server_settings(where)
            for key, value in server_settings.items():
                say(f"{key}: {value}")
        else:
            say(f"\nserver sections skipped: {problem}")
            server_report.note(f"not measured: {problem}")
            server_chosen = []

    report = Report()
    started = time.perf_counter()
    sections: dict[str, Callable[[], None]] = {
        "owner": lambda: bench_owner(sizes, report),
        "pipeline": lambda: bench_pipeline(sizes, report, True, not args.no_separate_process),
        "latency": lambda: bench_latency(sizes, report),
        "memory": lambda: bench_memory(sizes, report),
        "diff": lambda: bench_diff(args.quick, report),
        "latency-cost": lambda: bench_latency_cost(sizes, report),
        "wait-for": lambda: bench_wait_for(sizes, report),
    }
    for name in servers.SECTIONS:
        sections[name] = functools.partial(
            servers.run_section,
            name,
            where,
            args.quick,
            not args.no_separate_process,
            server_report,
        )
    if "audit" in chosen:
        sections["audit"] = functools.partial(bench_audit, args.quick, info, args.write)
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0 if args.quick else 180)
    for name in ALL_SECTIONS:
        if name == "audit" and name in chosen:
            wait_for_quiet(quiet_wait, args.quiet_load)
            sections[name]()
        elif name in sqlite_chosen or name in server_chosen:
            before = wait_for_quiet(quiet_wait, args.quiet_load)
            began = time.perf_counter()
            sections[name]()
            (report if name in SECTIONS else server_report).note(
                f"{name}: {time.perf_counter() - began:.0f} s; load average (1 min) "
                f"{before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores; "
                "our own run accounts for about 1 to 2 of it)"
            )
    if visibility_bench.SECTION in chosen:  # prints its own table (RESULTS.md: by hand)
        nats = None if servers.unreachable(where) else args.nats
        visibility_bench.bench(args.quick, nats)
    if COMMANDS in chosen:
        before = wait_for_quiet(quiet_wait, args.quiet_load)
        say("\ncommands (commands_bench.py): round trips from ctx.send to the owner's answer")
        reachable = servers.unreachable(where) is None
        for label, text in commands_bench.bench(
            where.pg if reachable else None, where.nats, servers.RUN, args.quick
        ):
            report.note(f"command round trip, {label}: {text}")
        report.note(
            f"commands: load average (1 min) {before:.1f} before, {os.getloadavg()[0]:.1f} after"
        )
    if reconciling.SECTION in chosen:  # prints its own figures (RESULTS.md: by hand)
        before = wait_for_quiet(quiet_wait, args.quiet_load)
        say(f"\nreconcile (reconciling.py), load average (1 min) {before:.1f} before")
        rows = 100_000 if args.quick else 1_000_000
        reconciling.run(rows, 100, say)
        say(f"reconcile: load average (1 min) {os.getloadavg()[0]:.1f} after")
    mode = ("quick" if args.quick else "full") + (
        f", only {', '.join(chosen)}" if args.only else ""
    )
    report.note(f"whole run took {time.perf_counter() - started:.0f} s")
    write = args.write or (not args.quick and not args.only)
    if sqlite_chosen:
        say(f"\ndurability: {DURABILITY} on every connection (charter, raw sqlite3, eventsourcing)")
        say(table(report.rows))
        if write:
            write_results(render(report, info, settings, mode))
            say(f"\nwritten: {RESULTS}")
    if server_chosen:
        say("")
        say(servers.table(server_report.rows))
        if write:
            command = " ".join([".venv/bin/python benchmarks/run.py", *sys.argv[1:]])
            server_info = {k: v for k, v in info.items() if k not in ("sqlite", "eventsourcing")}
            block = servers.render(
                server_report, server_info, server_settings, mode, STARTED, command
            )
            servers.write_results(RESULTS, block)
            say(f"\nwritten (PostgreSQL/NATS part): {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
