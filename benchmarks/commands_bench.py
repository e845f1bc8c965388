"""Command round trips (charter.commands): `ctx.send` from `orders` until the answer of
`customers`, whose handler updates one Customer (one owner transaction, the key recorded
in it). p50 and p99 of sequential round trips from one sender, after a warm-up:

- in-process: the owner's command worker and relay run in the sender's process (a Runner);
- across processes: the owner is `charter run --context customers --handlers
  commands_bench:register` (its command worker and relay), the sender another process;

on SQLite (stores and bus, WAL, synchronous=FULL) and on PostgreSQL + NATS JetStream.
Run through run.py: ``.venv/bin/python benchmarks/run.py --only commands [--quick]``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import charter
from charter.commands import Request
from charter.owner import Record, Transaction
from charter.system import System

HERE = Path(__file__).resolve().parent
CUSTOMERS = 100  # the records the commands rename, in turn

CHARTER_FILE = """\
charter: 1
name: {name}
bus: "{bus}"
contexts:
  customers: {{team: customer-team, store: "{customers}"}}
  orders:    {{team: order-team,    store: "{orders}"}}
entities:
  Customer:
    owner: customers
    fields:
      name:  {{type: string}}
      email: {{type: string, unique: true}}
    commands:
      Rename: {{senders: [orders], fields: [name]}}
"""


def rename(tx: Transaction, cmd: Request) -> Record:
    return tx.update("Customer", cmd.id, name=cmd.name)


def register(system: System) -> None:
    """The owner's handlers (`charter run --handlers commands_bench:register`)."""
    system.context("customers").handles("Rename")(rename)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def round_trips(system: System, ids: list[str], n: int, warmup: int) -> list[float]:
    """Seconds of each of `n` sequential sends (after `warmup` not counted)."""
    orders = system.context("orders")
    took: list[float] = []
    for i in range(warmup + n):
        start = time.perf_counter()
        orders.send("Rename", id=ids[i % len(ids)], name=f"n{i}", timeout=30)
        if i >= warmup:
            took.append(time.perf_counter() - start)
    return took


def customers(system: System) -> list[str]:
    with system.context("customers").transaction() as tx:
        return [
            tx.create("Customer", name=f"c{i}", email=f"c{i}@example.org").id
            for i in range(CUSTOMERS)
        ]


@contextmanager
def owner_process(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`charter run` for customers, serving Rename, until SIGTERM."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    log = (path.parent / "owner.log").open("wb")
    args = ["run", "-f", str(path), "--context", "customers", "--no-projectors"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "charter.cli", *args, "--handlers", "commands_bench:register"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while b"running" not in (path.parent / "owner.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((path.parent / "owner.log").read_text(errors="replace"))
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def measure(path: Path, n: int, separate: bool) -> tuple[float, float]:
    """(p50, p99) in milliseconds on the charter at `path`, fresh stores and bus."""
    system = charter.load(path)
    try:
        ids = customers(system)
        warmup = max(20, n // 10)
        if separate:
            with owner_process(path):
                took = round_trips(system, ids, n, warmup)
        else:
            register(system)
            with charter.Runner(system, ["customers"], projectors=False):
                took = round_trips(system, ids, n, warmup)
    finally:
        system.close()
    return percentile(took, 0.5) * 1000, percentile(took, 0.99) * 1000


@contextmanager
def sqlite_charter(tag: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"charter-bench-cmd-{tag}-") as tmp:
        folder = Path(tmp)
        urls = {c: f"sqlite:///{folder}/{c}.db" for c in ("customers", "orders", "bus")}
        path = folder / "charter.yaml"
        path.write_text(CHARTER_FILE.format(name=f"cmd_{tag}", **urls))
        yield path


@contextmanager
def server_charter(pg: str, nats: str, run: str, tag: str) -> Iterator[Path]:
    """Schemas of its own on PostgreSQL and a stream of its own, removed afterwards."""
    import psycopg

    from charter.buses.nats import NatsBus

    name = f"{run}_cmd_{tag}"
    schemas = {c: f"{name}_{c}" for c in ("customers", "orders")}
    with tempfile.TemporaryDirectory(prefix=f"charter-bench-cmd-{tag}-") as tmp:
        path = Path(tmp) / "charter.yaml"
        sep = "&" if "?" in pg else "?"
        urls = {c: f"{pg}{sep}schema={schema}" for c, schema in schemas.items()}
        path.write_text(CHARTER_FILE.format(name=name, bus=nats, **urls))
        try:
            yield path
        finally:
            with psycopg.connect(pg, autocommit=True) as conn:
                for schema in schemas.values():
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]
            NatsBus.delete_stream(nats, name)


def bench(pg: str | None, nats: str | None, run: str, quick: bool) -> list[tuple[str, str]]:
    """(setting, "p50 … ms, p99 … ms") for each setting measured."""
    n = 300 if quick else 2000
    rows: list[tuple[str, str]] = []
    settings: list[tuple[str, str, bool]] = [
        ("SQLite, in-process", "sqlite", False),
        ("SQLite, across processes", "sqlite", True),
    ]
    if pg and nats:
        settings += [
            ("PostgreSQL + NATS, in-process", "servers", False),
            ("PostgreSQL + NATS, across processes", "servers", True),
        ]
    for label, kind, separate in settings:
        tag = ("p" if separate else "i") + kind[0]
        place = (
            sqlite_charter(tag)
            if kind == "sqlite"
            else server_charter(pg or "", nats or "", run, tag)
        )
        with place as path:
            p50, p99 = measure(path, n, separate)
        text = f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({n} round trips)"
        rows.append((label, text))
    return rows
