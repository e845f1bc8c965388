"""`charter demo`: the shop from the essays, built and exercised in one go.

A newcomer should see, in under a minute and with nothing but SQLite files, the
three ideas charter is made of: one write store per record (other writers are
refused), derivative copies fed only by the owner's events (they converge), and
contracts (every copy's staleness measured against its window).

The same story runs on real servers: `--postgres URL` keeps every context's store in
its own schema of that database, `--nats URL` moves the events on a JetStream stream
(either alone, or both). Every run takes a fresh id (`demo_<8 hex>`) for its schemas
and stream, so demos never meet each other's data, and removes them at the end unless
the folder is kept (`Servers`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import random
import re
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from charter._sqlite import sqlite_path
from charter.boundary import driver
from charter.errors import ConstraintError, Error, OwnershipError
from charter.owner import Record, Transaction
from charter.runner import Runner
from charter.status import status
from charter.system import System
from charter.tables import history_table, states_of, status_table

# The shop from the essays. examples/shop/charter.yaml is this text, byte for byte
# (a test holds them together): examples/ is not installed, so the demo carries its own.
SHOP_CHARTER = """\
# The shop from the essays on "single source of truth". Each record has one
# owner: its single write store. Other services keep read-only copies of only
# the fields they need, each with a contract: how stale it may get (window) and
# what breaks when it gets staler (breaks). Relative sqlite:/// paths resolve
# against this file's folder.
charter: 1
name: shop
bus: sqlite:///.charter/bus.db
retention: 1h          # how long the bus keeps events that every copy has applied
contexts:
  customers: {team: customer-team, store: "sqlite:///.charter/customers.db"}
  orders:    {team: order-team,    store: "sqlite:///.charter/orders.db"}
  shipping:  {team: logistics,     store: "sqlite:///.charter/shipping.db"}
  calendar:  {team: scheduling,    store: "sqlite:///.charter/calendar.db"}
entities:
  Customer:
    owner: customers
    why: creates accounts; keeps e-mail addresses unique
    fields:
      email:         {type: string, unique: true}
      name:          {type: string}
      address:       {type: string, required: false}
      status:        {type: enum, values: [active, suspended, deleted], default: active}
      password_hash: {type: string, private: true}   # never leaves customers
  Order:
    owner: orders
    why: takes orders; remembers who ordered, as they were called at the time
    fields:
      customer_id:   {type: uuid}
      customer_name: {type: string}   # a snapshot taken when ordering, not a copy
      total:         {type: number}
  Appointment:
    owner: calendar
    why: books appointments; never two at once for one person
    fields:
      user_id:   {type: uuid}
      starts_at: {type: timestamp}
      ends_at:   {type: timestamp}
    constraints:
      - no_overlap: {per: [user_id], range: [starts_at, ends_at]}
copies:
  order_customers:
    in: orders
    of: Customer
    fields: [name, email]
    window: 5s
    breaks: order confirmations go to an outdated e-mail address
  shipping_customers:
    in: shipping
    of: Customer
    fields: [name, address]
    window: 1m
    breaks: parcels go to an old address
"""

# fmt: off
_FIRST = (
    "Ada", "Alan", "Barbara", "Claude", "Dorothy", "Edsger", "Frances", "Grace", "Hedy", "John",
    "Karen", "Leslie", "Margaret", "Niklaus", "Radia", "Shafi", "Sophie", "Tim", "Tony", "Ken",
)
_LAST = (
    "Lovelace", "Turing", "Liskov", "Shannon", "Vaughan", "Dijkstra", "Allen", "Hopper", "Lamarr",
    "Backus", "Jones", "Lamport", "Hamilton", "Wirth", "Perlman", "Goldwasser", "Wilson", "Hoare",
    "Berners-Lee", "Diffie", "Matsumoto", "Knuth", "Clarke", "Easley", "Thompson",
)
_STREETS = (
    "Mill Lane", "Station Road", "Church Street", "Harbour View", "Kingsway", "Orchard Close",
    "Canal Walk", "Market Square", "Elm Grove", "Bridge Street",
)
_TOWNS = ("Leeds", "Bristol", "Utrecht", "Lyon", "Porto", "Gent", "Aarhus", "Cork", "Graz", "Oslo")
# fmt: on
_SIZES = (1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 12, 15, 20)  # changes per transaction
_BASE = dt.datetime(2030, 1, 7, 8, 0, tzinfo=dt.UTC)


_CONTEXTS = ("customers", "orders", "shipping", "calendar")  # as in SHOP_CHARTER
_RUN = re.compile(r"demo_[0-9a-f]{8}")  # a match is confirmed by regenerating the text
_CHECK_TIMEOUT_S = 5


@dataclass(frozen=True)
class Servers:
    """Where the demo keeps its stores and its bus: SQLite files in its folder (the
    default), or PostgreSQL (`postgres`: every context in its own schema `<run>_<context>`
    of that database) and/or NATS JetStream (`nats`: one stream, named after the charter
    `shop_<run>`). `run` is fresh for every demo, so demos never collide."""

    postgres: str | None = None
    nats: str | None = None
    run: str = field(default_factory=lambda: f"demo_{secrets.token_hex(4)}")

    def __post_init__(self) -> None:
        if self.postgres is not None:
            if not self.postgres.startswith(("postgresql://", "postgres://")):
                raise Error(
                    f"--postgres '{self.postgres}' is not a PostgreSQL URL "
                    "(expected postgresql://user@host:port/database)"
                )
            if "schema" in dict(parse_qsl(urlsplit(self.postgres).query)):
                raise Error(
                    f"--postgres '{self.postgres}' names a schema; leave it out: the demo "
                    f"puts each context in a schema of its own ({self.run}_<context>)"
                )
            with driver("charter demo --postgres", self.postgres):
                importlib.import_module("charter.stores.postgres")
        if self.nats is not None:
            with driver("charter demo --nats", self.nats):
                from charter.buses.nats import parse_url
            try:
                parse_url(self.nats)
            except ValueError as exc:
                raise Error(f"--nats: {exc}") from None

    @property
    def name(self) -> str:
        """The charter's name: the NATS stream is named after it, so one per run there."""
        return f"shop_{self.run}" if self.nats else "shop"

    @property
    def stream(self) -> str:
        from charter.buses.nats import stream_name

        return stream_name(self.name)

    @property
    def schemas(self) -> list[str]:
        return [f"{self.run}_{context}" for context in _CONTEXTS] if self.postgres else []

    @property
    def conninfo(self) -> str:
        """The PostgreSQL URL for a plain client (psycopg, psql): no charter options."""
        from charter.stores.postgres import split_url

        assert self.postgres is not None
        return split_url(self.postgres)[0]

    def store(self, context: str) -> str:
        """The store URL of `context` in the charter."""
        if self.postgres is None:
            return f"sqlite:///.charter/{context}.db"
        parts = urlsplit(self.postgres)
        query = [*parse_qsl(parts.query), ("schema", f"{self.run}_{context}")]
        return urlunsplit(parts._replace(query=urlencode(query)))

    @property
    def bus(self) -> str:
        return self.nats or "sqlite:///.charter/bus.db"

    def charter(self) -> str:
        """SHOP_CHARTER with this run's store and bus URLs and name: nothing else differs."""
        text = SHOP_CHARTER

        def swap(old: str, new: str) -> None:
            nonlocal text
            assert text.count(old) == 1, f"SHOP_CHARTER holds {old!r} {text.count(old)} times"
            text = text.replace(old, new)

        if self.nats is not None:
            swap("\nname: shop\n", f"\nname: {self.name}\n")
            swap("\nbus: sqlite:///.charter/bus.db\n", f"\nbus: {json.dumps(self.bus)}\n")
        if self.postgres is not None:
            for context in _CONTEXTS:
                swap(
                    f'store: "sqlite:///.charter/{context}.db"',
                    f"store: {json.dumps(self.store(context))}",
                )
        return text

    def resumed(self, folder: Path) -> Servers:
        """This configuration in a kept folder that already holds it: the run found there,
        so the demo continues on that run's schemas and stream."""
        path = folder / "charter.yaml"
        if not (self.postgres or self.nats) or not path.is_file():
            return self
        text = path.read_text(encoding="utf-8")
        found = _RUN.search(text)
        kept = replace(self, run=found.group()) if found else self
        return kept if kept.charter() == text else self

    def check(self) -> None:
        """Fail early, with a clear message, when a server cannot be reached."""
        if self.postgres is not None:
            import psycopg

            try:
                with psycopg.connect(self.conninfo, connect_timeout=_CHECK_TIMEOUT_S):
                    pass
            except psycopg.Error as exc:
                raise Error(f"cannot connect to PostgreSQL at {self.postgres}: {exc}") from None
        if self.nats is not None:
            from nats import connect as nats_connect

            from charter.buses.nats import parse_url

            options = parse_url(self.nats)

            async def quiet(_exc: Exception) -> None:
                """The failure is reported once, below, not logged per attempt."""

            async def ping() -> None:
                client = await nats_connect(
                    servers=list(options.servers),
                    user=options.user,
                    password=options.password,
                    connect_timeout=_CHECK_TIMEOUT_S,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    error_cb=quiet,
                )
                await client.close()

            try:
                asyncio.run(ping())
            except Exception as exc:  # nats-py raises many kinds; all mean "not reachable"
                raise Error(
                    f"cannot connect to NATS at {self.nats} ({type(exc).__name__}); is "
                    "nats-server running there, with JetStream (-js)?"
                ) from None

    def remove(self) -> list[str]:
        """Drop the run's schemas and delete its stream. Returns what could not be removed
        (empty: nothing is left behind)."""
        problems: list[str] = []
        if self.postgres is not None:
            import psycopg
            from psycopg import sql

            try:
                with psycopg.connect(
                    self.conninfo, autocommit=True, connect_timeout=_CHECK_TIMEOUT_S
                ) as conn:
                    conn.execute("SET lock_timeout = '10s'")
                    for schema in self.schemas:
                        conn.execute(
                            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                                sql.Identifier(schema)
                            )
                        )
            except psycopg.Error as exc:
                problems.append(f"PostgreSQL schemas {', '.join(self.schemas)}: {exc}")
        if self.nats is not None:
            from charter.buses.nats import NatsBus

            try:
                NatsBus.delete_stream(self.nats, self.name)
            except Exception as exc:  # report it, never hide the demo's own outcome
                problems.append(f"NATS stream {self.stream}: {exc!r}")
        return problems

    def describe(self) -> str:
        """Where the stores and the bus are, for the demo's first lines."""
        if self.postgres is None:
            stores = "its own SQLite store"
        else:
            stores = f"its own PostgreSQL schema ({self.run}_<context> in {self.conninfo})"
        if self.nats is None:
            bus = "an SQLite bus"
        else:
            bus = f"a NATS JetStream bus (stream {self.stream} at {self.nats})"
        return f"each with {stores}, and {bus}"

    def leftovers(self) -> list[str]:
        """What a kept demo leaves on the servers, each with the command that removes it."""
        lines: list[str] = []
        if self.postgres is not None:
            names = ", ".join(f'"{s}"' for s in self.schemas)
            lines.append(
                f"PostgreSQL schemas {', '.join(self.schemas)}; remove them with\n"
                f"    psql '{self.conninfo}' -c 'DROP SCHEMA {names} CASCADE'"
            )
        if self.nats is not None:
            lines.append(
                f"NATS stream {self.stream}; remove it with\n"
                f"    nats --server {self.nats} stream rm -f {self.stream}"
            )
        return lines

    def flags(self) -> str:
        """The command-line options that choose this configuration."""
        return "".join(
            f" --{name} {url}"
            for name, url in (("postgres", self.postgres), ("nats", self.nats))
            if url
        )


def run_demo(
    console: Console,
    changes: int = 3000,
    folder: Path | None = None,
    *,
    postgres: str | None = None,
    nats: str | None = None,
) -> None:
    """Build the shop in `folder` (kept) or a temporary folder (removed), load it with
    `changes` changes while a Runner moves the events, then show what charter guarantees.
    `postgres` / `nats` (URLs) put the stores / the bus on those servers instead of
    SQLite files; what the demo made there is removed at the end unless `folder` is given."""
    if changes < 0:
        raise Error(f"changes must be 0 or more, not {changes}")
    servers = Servers(postgres, nats)
    servers.check()
    if folder is not None:
        servers = servers.resumed(Path(folder))
        _Demo(console, Path(folder), servers, kept=True).run(changes)
        return
    with tempfile.TemporaryDirectory(prefix="charter-demo-") as tmp:
        _Demo(console, Path(tmp), servers, kept=False).run(changes)


def write_charter(folder: Path, servers: Servers | None = None) -> Path:
    """Write the shop's charter.yaml (for `servers`: SQLite files by default) into `folder`.
    Refuses a folder that holds another system, so the demo never writes into someone's
    real stores."""
    text = (servers or Servers()).charter()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "charter.yaml"
    if path.exists():
        if path.read_text(encoding="utf-8") != text:
            raise Error(
                f"{path} already holds a different charter (another system, or a demo with "
                "other --postgres/--nats options); give the demo an empty folder"
            )
    elif (folder / ".charter").exists():
        raise Error(
            f"{folder / '.charter'} already holds stores of another system; "
            "give the demo an empty folder"
        )
    else:
        path.write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True)
class CopyCheck:
    """One copy compared row by row with its owner's current public state."""

    copy: str
    owner: str
    rows: int
    missing: int
    extra: int
    differ: int

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.differ)


def compare_copies(system: System) -> list[CopyCheck]:
    """Every copy against the owner's rows: same ids, same versions, same field values."""
    checks: list[CopyCheck] = []
    for copy in system.charter.copies.values():
        entity = system.charter.entities[copy.of]
        owner = {
            row["id"]: (row["version"], tuple(row[f] for f in copy.fields))
            for row in system.store(entity.owner).rows(entity)
        }
        held = {
            row["id"]: (row["version"], tuple(row[f] for f in copy.fields))
            for row in system.store(copy.context).copy_rows(copy)
        }
        both = owner.keys() & held.keys()
        checks.append(
            CopyCheck(
                copy.name,
                entity.owner,
                len(held),
                len(owner.keys() - held.keys()),
                len(held.keys() - owner.keys()),
                sum(1 for i in both if owner[i] != held[i]),
            )
        )
    return checks


@dataclass
class _Shop:
    """What the load generator knows about the shop, to make only valid changes."""

    rng: random.Random
    emails: set[str]
    customers: list[str] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    appointments: list[str] = field(default_factory=list)
    next_slot: dict[str, int] = field(default_factory=dict)
    serial: int = 0

    @classmethod
    def of(cls, system: System) -> _Shop:
        """Start from what the stores hold, so a kept folder can be loaded again."""
        entities = system.charter.entities
        customers = list(system.store("customers").rows(entities["Customer"]))
        shop = cls(random.Random(7), {str(row["email"]) for row in customers})
        shop.customers = [str(row["id"]) for row in customers]
        shop.orders = [str(row["id"]) for row in system.store("orders").rows(entities["Order"])]
        for row in system.store("calendar").rows(entities["Appointment"]):
            shop.appointments.append(str(row["id"]))
            starts = dt.datetime.fromisoformat(str(row["starts_at"]).replace("Z", "+00:00"))
            hour = int((starts - _BASE).total_seconds() // 3600) + 1
            user = str(row["user_id"])
            shop.next_slot[user] = max(shop.next_slot.get(user, 0), hour)
        return shop

    def name(self) -> str:
        return f"{self.rng.choice(_FIRST)} {self.rng.choice(_LAST)}"

    def email(self, name: str) -> str:
        """A fresh address; never one in use, so the load itself is never refused."""
        while True:
            self.serial += 1
            local = name.lower().replace(" ", ".").replace("-", "")
            email = f"{local}.{self.serial}@example.com"
            if email not in self.emails:
                self.emails.add(email)
                return email

    def address(self) -> str:
        rng = self.rng
        return f"{rng.randint(1, 250)} {rng.choice(_STREETS)}, {rng.choice(_TOWNS)}"

    def slot(self, user_id: str) -> tuple[dt.datetime, dt.datetime]:
        """The user's next free hour: load appointments never overlap."""
        number = self.next_slot.get(user_id, 0)
        self.next_slot[user_id] = number + 1
        start = _BASE + dt.timedelta(hours=number)
        return start, start + dt.timedelta(minutes=self.rng.choice((15, 30, 45)))

    def forget(self, items: list[str], index: int) -> str:
        """Remove items[index] in O(1) (order does not matter) and return it."""
        items[index], items[-1] = items[-1], items[index]
        return items.pop()


class _Demo:
    """The demo's story, told on one console: the shop, the load, then the seven steps."""

    def __init__(self, console: Console, folder: Path, servers: Servers, *, kept: bool) -> None:
        self.console, self.folder, self.servers, self.kept = console, folder, servers, kept

    def run(self, changes: int) -> None:
        started = time.perf_counter()
        path = write_charter(self.folder, self.servers)
        left: list[str] = []
        try:
            with System.load(path) as system:
                self.intro(system)
                runner = Runner(system).start()
                try:
                    self.load(system, runner, changes)
                    self.steps(system, runner)
                    example = self.history(system)
                finally:
                    runner.stop()
                for error in runner.errors:
                    self.console.print(f"[yellow]runner warning:[/] {escape(str(error))}")
        finally:  # after the system has closed its connections
            if not self.kept:
                left = self.servers.remove()
                for problem in left:
                    self.console.print(f"[yellow]not removed:[/] {escape(problem)}")
        self.outro(path, example, time.perf_counter() - started, removed=not left)

    # -- the shop -----------------------------------------------------------------

    def intro(self, system: System) -> None:
        charter = system.charter
        self.console.rule("[bold]charter demo: the shop from the essays[/]")
        self.console.print(
            f"{len(charter.contexts)} contexts, {escape(self.servers.describe())}, "
            f"in {escape(str(self.folder))}",
            highlight=False,
        )
        for context in charter.contexts.values():
            parts = [f"owns {e.name}" for e in charter.owned_by(context.name)]
            parts += [
                f"keeps [cyan]{c.name}[/] ({c.of}: {', '.join(c.fields)}; "
                f"window {_duration(c.window_s)})"
                for c in charter.copies_in(context.name)
            ]
            line = f"[bold]{context.name:<10}[/] team {escape(context.team):<14} "
            self.console.print(
                Padding(Text.from_markup(line + "; ".join(parts)), (0, 0, 0, 2), expand=False)
            )

    def load(self, system: System, runner: Runner, changes: int) -> None:
        """Many small transactions, as real services make them, while the runner moves
        every committed event to the copies in the background."""
        self.console.print()
        self.console.print(
            f"[bold]Making {changes:,} changes[/] in transactions of 1-20 changes, while a "
            "runner relays events and feeds the copies in background threads",
            highlight=False,
        )
        shop = _Shop.of(system)
        order_customers = system.context("orders").copy("order_customers")
        made = transactions = 0
        started = time.perf_counter()
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[lag]}"),
        )
        with Progress(*columns, console=self.console) as progress:
            task = progress.add_task("changes", total=changes, lag="")
            next_look = 0.0
            while made < changes:
                size = min(changes - made, shop.rng.choice(_SIZES))
                kind = shop.rng.random()
                if len(shop.customers) < 20 or kind < 0.72:
                    actor = shop.rng.choice(_CUSTOMER_ACTORS)  # who: kept in the history
                    with system.context("customers").transaction(actor=actor) as tx:
                        _customer_changes(tx, shop, size)
                elif kind < 0.88:
                    wanted = [shop.rng.choice(shop.customers) for _ in range(size)]
                    known = [c for c in (order_customers.get(i) for i in wanted) if c]
                    if not known:  # the copy has not caught up with any of them yet
                        continue
                    size = len(known)
                    with system.context("orders").transaction() as tx:
                        _order_changes(tx, shop, known)
                else:
                    with system.context("calendar").transaction() as tx:
                        _calendar_changes(tx, shop, size)
                made += size
                transactions += 1
                progress.advance(task, size)
                now = time.perf_counter()
                if now >= next_look:  # the contract, measured while it is being tested
                    behind = sum(row.lag_events for row in status(system))
                    progress.update(task, lag=f"copies behind: {behind:,} events")
                    next_look = now + 0.25
            progress.update(task, lag="")
        elapsed = time.perf_counter() - started
        synced = runner.wait_until_synced(timeout=30)
        caught_up = time.perf_counter() - started - elapsed
        rate = made / elapsed if elapsed else 0.0
        self.console.print(
            f"{made:,} changes in {transactions:,} transactions in {elapsed:.1f} s "
            f"({rate:,.0f} changes/s); "
            + (
                f"the copies caught up {caught_up:.2f} s after the last commit"
                if synced
                else "[red]the copies did not catch up within 30 s[/]"
            ),
            highlight=False,
        )

    # -- the steps ------------------------------------------------------------------

    def steps(self, system: System, runner: Runner) -> None:
        customers = system.context("customers")
        with customers.transaction() as tx:
            ada = tx.create(
                "Customer",
                email=f"ada.{secrets.token_hex(3)}@example.com",
                name="Ada Lovelace",
                password_hash=_fake_hash(),
            )
        runner.wait_until_synced(timeout=30)

        with self.step(
            1,
            "orders tries to write a Customer",
            "a record has one write store; if orders could change customers too, two services "
            "would each hold 'the truth'. charter refuses and says whom to ask.",
        ):
            writes: list[tuple[str, Callable[[Transaction], object]]] = [
                (
                    'tx.create("Customer", email="eve@example.com", …)',
                    lambda tx: tx.create(
                        "Customer", email="eve@example.com", name="Eve", password_hash="x"
                    ),
                ),
                (
                    f'tx.update("Customer", "{ada.id}", name="Ada King")',
                    lambda tx: tx.update("Customer", ada.id, name="Ada King"),
                ),
            ]
            for attempt, write in writes:
                self.attempt(
                    f"orders: {attempt}", partial(_in, system, "orders", write), OwnershipError
                )

        with self.step(
            2,
            "The same person booked twice at once",
            "invariants live with the owner: only calendar sees all of a person's "
            "appointments, so only calendar can promise no double booking.",
        ):
            start = _BASE - dt.timedelta(days=1)
            with system.context("calendar").transaction() as tx:
                tx.create(
                    "Appointment",
                    user_id=ada.id,
                    starts_at=start,
                    ends_at=start + dt.timedelta(hours=1),
                )
            self.say(
                f"calendar: booked Ada {start:%Y-%m-%d %H:%M}-"
                f"{start + dt.timedelta(hours=1):%H:%M}",
            )
            later = start + dt.timedelta(minutes=30)
            self.attempt(
                f"calendar: book Ada {later:%H:%M}-{later + dt.timedelta(hours=1):%H:%M} that day",
                partial(
                    _in,
                    system,
                    "calendar",
                    lambda tx: tx.create(
                        "Appointment",
                        user_id=ada.id,
                        starts_at=later,
                        ends_at=later + dt.timedelta(hours=1),
                    ),
                ),
                ConstraintError,
            )

        with self.step(
            3,
            "A raw SQL write to a copy, past charter",
            "a copy is derivative: it changes only from its owner's events. The database "
            "itself refuses other writers, so 'just fix the table' cannot start a second truth.",
        ):
            copy = system.charter.copies["order_customers"]
            url = system.charter.contexts[copy.context].store
            if url.startswith("sqlite:///"):
                self.raw_sqlite(url, copy.table, ada.id)
            else:
                self.raw_postgres(url, copy.context, copy.table, ada.id)

        with self.step(
            4,
            "A second account with an e-mail already in use",
            "uniqueness can only be checked where all the records are: in the owner's store. "
            "No copy could promise it.",
        ):
            self.attempt(
                f"customers: register 'Ada Byron' with {ada.email}",
                lambda: _in(
                    system,
                    "customers",
                    lambda tx: tx.create(
                        "Customer", email=ada.email, name="Ada Byron", password_hash=_fake_hash()
                    ),
                ),
                ConstraintError,
            )

        with self.step(
            5,
            "The copies converge",
            "copies may lag, but only within their contract; once the owner is quiet, every "
            "copy equals the owner's current public state, versions included.",
        ):
            synced = runner.wait_until_synced(timeout=30)
            if not synced:
                self.say("[bold red]the copies did not catch up within 30 s[/]")
            for check in compare_copies(system):
                if check.equal:
                    self.say(
                        f"[cyan]{check.copy}[/]: {_count(check.rows, 'row')}, all equal to "
                        f"{check.owner}' current state",
                    )
                else:
                    self.say(
                        f"[bold red]{check.copy}: {_count(check.rows, 'row')}; {check.missing} "
                        f"missing, {check.extra} extra, {check.differ} differ[/]",
                    )
            self.private_and_snapshots(system)

        with self.step(
            6,
            "Every copy against its contract",
            "staleness is measured, not hoped for: each copy's lag in events and seconds, "
            "against the window it promised, and what breaks beyond it.",
        ):
            self.console.print(status_table(status(system)))
            for copy in system.charter.copies.values():
                self.say(
                    f"[cyan]{copy.name}[/] promises {_duration(copy.window_s)}; "
                    f"beyond it, {escape(copy.breaks)}",
                )

    def raw_sqlite(self, url: str, table: str, customer: str) -> None:
        """The careless script, on SQLite: the plain sqlite3 module, no charter."""
        path = _file(url)
        statement = f"UPDATE {table} SET email = 'mallory@example.com' WHERE id = ?"
        shown = statement.replace("?", f"'{customer}'")
        try:
            self.say(f'→ sqlite3 {escape(_relative(path, self.folder))} "{escape(shown)}"')
            with closing(sqlite3.connect(path, timeout=10)) as conn, conn:
                conn.execute(statement, (customer,))
            self.say("[bold red]NOT refused: the copy was changed[/]")
        except sqlite3.DatabaseError as exc:
            self.say(f"[green]refused by SQLite[/] ({type(exc).__name__}): {escape(str(exc))}")

    def raw_postgres(self, url: str, context: str, table: str, customer: str) -> None:
        """The careless script, on PostgreSQL: plain psycopg, in the copy's schema."""
        import psycopg
        from psycopg import sql

        from charter.stores.postgres import split_url

        conninfo, schema_option, _ = split_url(url)
        schema = schema_option or context
        shown = (
            f"SET search_path TO {schema}; "
            f"UPDATE {table} SET email = 'mallory@example.com' WHERE id = '{customer}'"
        )
        self.say(f'→ psql {escape(conninfo)} -c "{escape(shown)}"')
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
                conn.execute(
                    sql.SQL("UPDATE {} SET email = 'mallory@example.com' WHERE id = %s").format(
                        sql.Identifier(table)
                    ),
                    (customer,),
                )
            self.say("[bold red]NOT refused: the copy was changed[/]")
        except psycopg.Error as exc:
            message = exc.diag.message_primary or str(exc)
            verdict = (  # the guard raises insufficient_privilege; anything else is no answer
                "[green]refused by PostgreSQL[/]"
                if isinstance(exc, psycopg.errors.InsufficientPrivilege)
                else "[bold red]failed in PostgreSQL[/]"
            )
            self.say(f"{verdict} ({type(exc).__name__}): {escape(message)}")

    def private_and_snapshots(self, system: System) -> None:
        """The other half of 'only the fields they need': private fields stay home, and a
        snapshot is not a copy."""
        customers = system.store("customers")
        events = leaked = 0
        position = 0
        while batch := customers.outbox(position, 5000):
            position = batch[-1].seq
            for row in batch:
                if row.entity == "Customer":
                    events += 1
                    leaked += b'"password_hash"' in row.body
        self.say(
            f"password_hash (private) is in {leaked:,} of {events:,} Customer events "
            "and in no copy",
        )
        entity = system.charter.entities["Customer"]
        names = {str(r["id"]): r["name"] for r in customers.rows(entity)}
        order = system.charter.entities["Order"]
        rows = list(system.store("orders").rows(order))
        renamed = sum(
            1
            for r in rows
            if r["customer_id"] in names and names[r["customer_id"]] != r["customer_name"]
        )
        self.say(
            f"{renamed:,} of {len(rows):,} orders show a name the customer has since changed: "
            "customer_name is a snapshot taken when ordering, on purpose, not a copy",
        )

    def history(self, system: System) -> str | None:
        """Step 7, and the id the closing hint names: the customer with the longest history."""
        entity = system.charter.entities["Customer"]
        store = system.store("customers")
        best = max(store.rows(entity), key=lambda r: int(r["version"]), default=None)
        if best is None:
            return None
        with self.step(
            7,
            "The owner's history of one customer",
            "the owner keeps every event it published: 'who changed this, when' has one "
            "answer, and a bus that lost events can be refilled from it.",
        ):
            rows = store.history("Customer", best["id"])
            table = history_table(
                rows,
                states_of(rows),
                title=f"Customer {best['id']} (now {escape(str(best['name']))})",
                title_justify="left",
                box=box.SIMPLE_HEAD,
            )
            self.console.print(table)
        return str(best["id"])

    def outro(self, path: Path, customer: str | None, seconds: float, *, removed: bool) -> None:
        self.console.print()
        self.console.rule(f"done in {seconds:.1f} s")
        who = customer or "<id>"
        if self.kept:
            self.console.print(
                f"The shop is kept in {escape(str(self.folder))}. Try next:\n"
                f"  charter status -f {escape(str(path))}\n"
                f"  charter history -f {escape(str(path))} Customer {who}\n"
                f"  charter run -f {escape(str(path))}   (and write to it from Python; "
                "see examples/shop)",
                highlight=False,
            )
            leftovers = self.servers.leftovers()
            if leftovers:
                self.console.print(
                    "Kept on the servers too (--keep), until you remove them along with "
                    f"{escape(str(self.folder))}:\n"
                    + "\n".join(f"  {escape(line)}" for line in leftovers),
                    highlight=False,
                )
            return
        where = ["in a temporary folder, now removed"]
        if removed and self.servers.postgres:
            where.append(f"its PostgreSQL schemas {self.servers.run}_* dropped")
        if removed and self.servers.nats:
            where.append(f"its NATS stream {self.servers.stream} deleted")
        self.console.print(
            f"The shop was built {', '.join(where)}. Keep it with "
            f"`charter demo --keep ./shop{escape(self.servers.flags())}`, then try "
            "`charter status -f shop/charter.yaml` and "
            "`charter history -f shop/charter.yaml Customer <id>`.",
            highlight=False,
        )

    # -- presentation -----------------------------------------------------------------

    @contextmanager
    def step(self, number: int, title: str, why: str) -> Iterator[None]:
        """A titled step with the one line that says why it matters; its lines follow."""
        self.console.print()
        self.console.print(f"[bold]{number}. {escape(title)}[/]", highlight=False)
        self.say(f"[dim]why:[/] {escape(why)}")
        yield

    def say(self, markup: str) -> None:
        """One indented line of a step; wrapped lines keep the indent."""
        self.console.print(Padding(Text.from_markup(markup), (0, 0, 0, 3), expand=False))

    def attempt(self, what: str, action: Callable[[], object], expected: type[Error]) -> None:
        """Try something charter must refuse, and show how it refuses."""
        self.say(f"→ {escape(what)}")
        try:
            action()
        except expected as exc:
            self.say(f"[green]refused[/] ({type(exc).__name__}): {escape(str(exc))}")
        else:
            self.say(f"[bold red]NOT refused: expected {expected.__name__}[/]")


def _customer_changes(tx: Transaction, shop: _Shop, size: int) -> None:
    """Mostly sign-ups and people moving house or changing name or e-mail; a few leave."""
    rng = shop.rng
    for _ in range(size):
        roll = rng.random()
        if len(shop.customers) < 20 or roll < 0.36:
            name = shop.name()
            created = tx.create(
                "Customer",
                email=shop.email(name),
                name=name,
                address=shop.address() if rng.random() < 0.7 else None,
                password_hash=_fake_hash(),
            )
            shop.customers.append(created.id)
        elif roll < 0.975:
            customer = rng.choice(shop.customers)
            what = rng.random()
            if what < 0.4:
                tx.update("Customer", customer, address=shop.address())
            elif what < 0.7:
                current = tx.get("Customer", customer)
                name = current.name if current else shop.name()
                tx.update("Customer", customer, email=shop.email(name))
            elif what < 0.95:
                tx.update("Customer", customer, name=shop.name())
            else:
                tx.update("Customer", customer, status="suspended")
        else:
            index = rng.randrange(len(shop.customers))
            tx.delete("Customer", shop.forget(shop.customers, index))


def _order_changes(tx: Transaction, shop: _Shop, customers: list[Record]) -> None:
    """Orders for customers as the order_customers copy knows them; now and then one is
    cancelled."""
    for customer in customers:
        if shop.orders and shop.rng.random() < 0.04:
            tx.delete("Order", shop.forget(shop.orders, shop.rng.randrange(len(shop.orders))))
            continue
        order = tx.create(
            "Order",
            customer_id=customer.id,
            customer_name=customer.name,  # the name as it is now: a snapshot
            total=round(shop.rng.uniform(4, 400), 2),
        )
        shop.orders.append(order.id)


def _calendar_changes(tx: Transaction, shop: _Shop, size: int) -> None:
    """Bookings in each person's next free hour; now and then one is cancelled."""
    for _ in range(size):
        if shop.appointments and shop.rng.random() < 0.05:
            index = shop.rng.randrange(len(shop.appointments))
            tx.delete("Appointment", shop.forget(shop.appointments, index))
            continue
        user = shop.rng.choice(shop.customers)
        starts, ends = shop.slot(user)
        booked = tx.create("Appointment", user_id=user, starts_at=starts, ends_at=ends)
        shop.appointments.append(booked.id)


_CUSTOMER_ACTORS = ("signup-form", "support:grace", "support:alan", "self-service")


def _in(system: System, context: str, write: Callable[[Transaction], object]) -> None:
    with system.context(context).transaction() as tx:
        write(tx)


def _fake_hash() -> str:
    """Demo data only: real code stores a slow salted hash (see examples/shop/customers.py)."""
    return "scrypt$" + secrets.token_hex(16)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def _file(url: str) -> Path:
    """The database file of a sqlite:/// URL. sqlite_path() keeps the URL's leading '//'
    ('//tmp/x.db'), which works but reads oddly and defeats relative_to()."""
    path, _ = sqlite_path(url)
    text = str(path)
    return Path(text[1:]) if text.startswith("//") else path


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"
