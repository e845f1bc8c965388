"""Three-step sagas per second (charter.sagas), beside DBOS Transact running the same
three-step workflow on the same PostgreSQL server, in one run, printed as ratios:

- charter on SQLite: four contexts' stores and the bus in SQLite files (WAL,
  synchronous=FULL); the saga, orchestrated by `shop`, reserves one item of stock
  (inventory), takes a payment (payments) and books a parcel (shipping), each step a
  command to its owner, handled once per key in an owner transaction that records the key,
  and each move of the run an owner update of its record in shop's store (with its event in
  the outbox);
- charter on PostgreSQL + NATS: the same, each context in a schema of its own, commands
  on JetStream;
- DBOS Transact (the `dbos` package) in a database of its own on the same server: a
  workflow of three @DBOS.step functions, each one transaction on a table of the same
  shape (the stock decremented if any is left, a payment inserted, a parcel inserted),
  run by THREADS client threads (DBOS runs a workflow called directly in the caller's
  thread; several thread counts are tried and the best counts);
- the raw floor: the same three statements with plain psycopg in as many threads, nothing
  durable about the progress (what the server does for this work without any saga).

Everything runs in this one process (the owners' command workers, relays and the
orchestrator in a charter Runner's threads). Each figure is N runs started one by one,
from the first start until the last has completed, after a warm-up. Run:

    .venv/bin/python benchmarks/sagas.py [--quick] [--pg URL] [--nats URL]
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import charter
from charter.commands import Request
from charter.owner import Record, Transaction
from charter.sagas import Saga, Step
from charter.sagas.state import ACTIVE
from charter.system import System

PG = "postgresql://postgres@127.0.0.1:5432/test"
NATS = "nats://127.0.0.1:4222"
STOCKS = 100  # the stock records the reservations spread over
# Commands each owner handles at once (Runner concurrency): on SQLite one writer at a
# time, so one (a batch in one transaction); on PostgreSQL round trips overlap.
CONCURRENCY = {"sqlite": 1, "servers": 8}
THREADS = (8, 16)  # DBOS: client threads, each calling the workflow; the better counts
CONTEXTS = ("shop", "inventory", "payments", "shipping")

CHARTER_FILE = """\
charter: 1
name: {name}
bus: "{bus}"
contexts:
  shop:      {{team: shop,      store: "{shop}"}}
  inventory: {{team: warehouse, store: "{inventory}"}}
  payments:  {{team: finance,   store: "{payments}"}}
  shipping:  {{team: logistics, store: "{shipping}"}}
entities:
  Stock:
    owner: inventory
    fields: {{available: {{type: integer}}}}
    commands:
      Reserve: {{senders: [shop]}}
      Release: {{senders: [shop]}}
  Payment:
    owner: payments
    fields: {{run: {{type: string, unique: true}}, amount: {{type: number}}}}
    commands:
      Pay:    {{senders: [shop], fields: [run, amount]}}
      Refund: {{senders: [shop]}}
  Parcel:
    owner: shipping
    fields: {{run: {{type: string, unique: true}}}}
    commands:
      Ship: {{senders: [shop], fields: [run]}}
sagas:
  Buy: {{in: shop}}
"""

BUY = Saga(
    "Buy",
    [
        Step(
            "Reserve",
            lambda s: {"id": s.stock},
            undo="Release",
            undo_args=lambda s: {"id": s.stock},
        ),
        Step("Pay", lambda s: {"run": s.saga_id, "amount": 10.0}, undo="Refund"),
        Step("Ship", lambda s: {"run": s.saga_id}),
    ],
    timeout=600,
    step_timeout=30,
)


def reserve(tx: Transaction, cmd: Request) -> dict[str, int]:
    stock = tx.get("Stock", cmd.id)
    assert stock is not None
    if stock.available < 1:
        raise charter.ConstraintError("sold out")
    return {"left": tx.update("Stock", cmd.id, available=stock.available - 1).available}


def release(tx: Transaction, cmd: Request) -> dict[str, int]:
    stock = tx.get("Stock", cmd.id)
    assert stock is not None
    return {"left": tx.update("Stock", cmd.id, available=stock.available + 1).available}


def pay(tx: Transaction, cmd: Request) -> Record:
    return tx.create("Payment", run=cmd.run, amount=cmd.amount)


def refund(tx: Transaction, cmd: Request) -> None:
    tx.delete("Payment", cmd.id)


def ship(tx: Transaction, cmd: Request) -> Record:
    return tx.create("Parcel", run=cmd.run)


def register(system: System) -> None:
    system.context("inventory").handles("Reserve")(reserve)
    system.context("inventory").handles("Release")(release)
    system.context("payments").handles("Pay")(pay)
    system.context("payments").handles("Refund")(refund)
    system.context("shipping").handles("Ship")(ship)
    BUY.register(system)


@contextmanager
def charter_runner(path: Path, warmup: int, concurrency: int) -> Iterator[Callable[[int], float]]:
    """A running system on the charter at `path`, warmed up; yields measure(n): sagas
    completed per second, `n` started one by one, until the last has completed."""
    system = charter.load(path)
    try:
        register(system)
        with system.context("inventory").transaction() as tx:
            stocks = [tx.create("Stock", available=10**9).id for _ in range(STOCKS)]
        with charter.Runner(system, projectors=False, concurrency=concurrency):
            _charter_runs(system, stocks, warmup)

            def measure(n: int) -> float:
                began = time.perf_counter()
                _charter_runs(system, stocks, n)
                return n / (time.perf_counter() - began)

            yield measure
        stock = system.context("inventory").get("Stock", stocks[0])
        assert stock is not None and stock.available < 10**9
    finally:
        system.close()


def _charter_runs(system: System, stocks: list[str], n: int) -> None:
    for i in range(n):
        BUY.start(system, stock=stocks[i % len(stocks)])
    shop = system.context("shop")
    while any(shop.filter("Buy", status=s) for s in ACTIVE):
        time.sleep(0.002)
    parked = shop.filter("Buy", status="compensated") + shop.filter("Buy", status="parked")
    assert not parked, parked[0]


@contextmanager
def sqlite_charter() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="charter-bench-sagas-") as tmp:
        folder = Path(tmp)
        urls = {c: f"sqlite:///{folder}/{c}.db" for c in (*CONTEXTS, "bus")}
        path = folder / "charter.yaml"
        path.write_text(CHARTER_FILE.format(name="sagas_bench", **urls))
        yield path


@contextmanager
def server_charter(pg: str, nats: str) -> Iterator[Path]:
    import psycopg

    from charter.buses.nats import NatsBus

    name = f"bench_{secrets.token_hex(4)}_sagas"
    schemas = {c: f"{name}_{c}" for c in CONTEXTS}
    with tempfile.TemporaryDirectory(prefix="charter-bench-sagas-") as tmp:
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


# -- DBOS Transact ---------------------------------------------------------------------------


@contextmanager
def dbos_runner(
    pg: str, warmup: int, threads: tuple[int, ...]
) -> Iterator[tuple[Callable[[int], float], Callable[[int], float]]]:
    """DBOS Transact launched on a database of its own on `pg`'s server (dropped
    afterwards), warmed up; yields measure(n): workflows completed per second at the best
    of the thread counts, and floor(n): the same statements without DBOS."""
    import psycopg
    from dbos import DBOS, DBOSConfig
    from psycopg_pool import ConnectionPool

    database = f"bench_{secrets.token_hex(4)}_dbos"
    server = pg.rsplit("/", 1)[0]
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')  # type: ignore[arg-type]
    url = f"{server}/{database}"
    pool = ConnectionPool(url, min_size=4, max_size=max(threads) + 4, open=True)
    try:
        with pool.connection() as conn:
            conn.execute("CREATE TABLE stock (id int PRIMARY KEY, available bigint NOT NULL)")
            conn.execute("CREATE TABLE payment (run text PRIMARY KEY, amount float8 NOT NULL)")
            conn.execute("CREATE TABLE parcel (run text PRIMARY KEY)")
            conn.execute(
                "INSERT INTO stock SELECT g, 1000000000 FROM generate_series(0, %s) g",
                (STOCKS - 1,),
            )

        @DBOS.step()
        def reserve_step(stock: int) -> int:
            with pool.connection() as conn:
                row = conn.execute(
                    "UPDATE stock SET available = available - 1 WHERE id = %s AND available >= 1 "
                    "RETURNING available",
                    (stock,),
                ).fetchone()
            if row is None:
                raise RuntimeError("sold out")
            return int(row[0])

        @DBOS.step()
        def pay_step(run: str) -> None:
            with pool.connection() as conn:
                conn.execute("INSERT INTO payment VALUES (%s, 10.0)", (run,))

        @DBOS.step()
        def ship_step(run: str) -> None:
            with pool.connection() as conn:
                conn.execute("INSERT INTO parcel VALUES (%s)", (run,))

        @DBOS.workflow()
        def buy(stock: int) -> None:
            run = DBOS.workflow_id or str(uuid.uuid4())
            reserve_step(stock)
            pay_step(run)
            ship_step(run)

        config: DBOSConfig = {
            "name": "charter-bench",
            "system_database_url": url,
            "log_level": "WARNING",
            "sys_db_pool_size": max(threads) + 4,
        }
        DBOS(config=config)
        DBOS.launch()
        try:
            _threaded(buy, warmup, threads[0])
            best_at: list[int] = []

            def measure(n: int) -> float:
                best, at = 0.0, 0
                for count in threads:
                    began = time.perf_counter()
                    _threaded(buy, n, count)
                    rate = n / (time.perf_counter() - began)
                    if rate > best:
                        best, at = rate, count
                best_at.append(at)
                return best

            def floor(n: int) -> float:
                """The same three statements with plain psycopg, nothing durable about the
                progress: the raw limit of the server for this work."""

                def plain(stock: int) -> None:
                    run = str(uuid.uuid4())
                    with pool.connection() as conn:
                        conn.execute(
                            "UPDATE stock SET available = available - 1 WHERE id = %s "
                            "AND available >= 1",
                            (stock,),
                        )
                    with pool.connection() as conn:
                        conn.execute("INSERT INTO payment VALUES (%s, 10.0)", (run,))
                    with pool.connection() as conn:
                        conn.execute("INSERT INTO parcel VALUES (%s)", (run,))

                began = time.perf_counter()
                _threaded(plain, n, max(threads))
                return n / (time.perf_counter() - began)

            yield measure, floor
        finally:
            DBOS.destroy(destroy_registry=True)
    finally:
        pool.close()
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')  # type: ignore[arg-type]


def _threaded(workflow: Callable[[int], None], n: int, threads: int) -> None:
    counter = iter(range(n))
    lock = threading.Lock()
    failed: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                workflow(i % STOCKS)
            except BaseException as exc:
                failed.append(exc)
                return

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failed:
        raise failed[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--pg", default=os.environ.get("CHARTER_BENCH_PG", PG))
    parser.add_argument("--nats", default=os.environ.get("CHARTER_BENCH_NATS", NATS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds, taking turns")
    args = parser.parse_args(argv)
    n = 300 if args.quick else 1000
    warmup = 50 if args.quick else 100
    load = os.getloadavg()[0]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    python = sys.version.split()[0]
    print(
        f"sagas of three steps, {n} runs a round ({warmup} warm-up); {machine}, "
        f"load average {load:.1f}, Python {python}",
        flush=True,
    )
    sqlite: list[float] = []
    servers: list[float] = []
    dbos: list[float] = []
    raw: list[float] = []
    with (
        sqlite_charter() as lite_path,
        server_charter(args.pg, args.nats) as pg_path,
        charter_runner(lite_path, warmup, CONCURRENCY["sqlite"]) as on_sqlite,
        charter_runner(pg_path, warmup, CONCURRENCY["servers"]) as on_servers,
        dbos_runner(args.pg, warmup, THREADS) as (on_dbos, on_floor),
    ):
        for number in range(args.rounds):  # taking turns, so the load is shared out
            sqlite.append(on_sqlite(n))
            servers.append(on_servers(n))
            dbos.append(on_dbos(n))
            raw.append(on_floor(n))
            print(
                f"round {number + 1}: charter SQLite {sqlite[-1]:.0f}/s, charter PostgreSQL + "
                f"NATS {servers[-1]:.0f}/s, DBOS {dbos[-1]:.0f}/s, raw {raw[-1]:.0f}/s",
                flush=True,
            )
    mid = statistics.median
    pg_ratios = [c / d for c, d in zip(servers, dbos, strict=True)]
    lite_ratios = [c / d for c, d in zip(sqlite, dbos, strict=True)]
    print(f"charter, SQLite:            {mid(sqlite):8.0f} sagas/s (median of {args.rounds})")
    print(f"charter, PostgreSQL + NATS: {mid(servers):8.0f} sagas/s")
    print(f"DBOS Transact, PostgreSQL:  {mid(dbos):8.0f} workflows/s (best of {THREADS} threads)")
    print(
        f"raw PostgreSQL floor:       {mid(raw):8.0f} /s (the three statements, plain psycopg, "
        f"{max(THREADS)} threads, no saga state); charter PostgreSQL + NATS "
        f"{mid(servers) / mid(raw):.2f}x of it, DBOS {mid(dbos) / mid(raw):.2f}x"
    )
    each = ", ".join(f"{r:.2f}" for r in pg_ratios)
    print(
        f"ratios to DBOS (median of the rounds' ratios): SQLite {mid(lite_ratios):.2f}x, "
        f"PostgreSQL + NATS {mid(pg_ratios):.2f}x (each round {each}; "
        f"target: at least 1.00x); load average {os.getloadavg()[0]:.1f} after"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
