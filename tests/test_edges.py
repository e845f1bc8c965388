"""Errors at the edges (G8): a bad URL is reported where it is written; a server that is
down, or goes away, reaches the user as a charter error that names the store or bus, its
server and what to try, never as a driver's traceback; a failing worker is reported once,
then counted."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

import charter
from charter import model, urls
from charter._sqlite import sqlite_path
from charter.buses.nats import parse_url
from charter.errors import CharterError, Error, UnavailableError
from charter.reports import Reports
from charter.stores.postgres import split_url
from tests import pg_server
from tests.backends import CONTEXTS, POSTGRES
from tests.conftest import SHOP, assert_converged, charter_command, edit
from tests.nats_servers import free_ports
from tests.test_apply import apply, pg_shop  # noqa: F401 (pg_shop: a fixture)

MINIMAL = """\
charter: 1
name: edge
bus: "{bus}"
contexts:
  customers: {{team: a, store: "{customers}"}}
  orders: {{team: b, store: "{orders}"}}
entities:
  Customer:
    owner: customers
    fields:
      name: {{type: string}}
copies:
  order_customers: {{in: orders, of: Customer, fields: [name], window: 5s}}
"""


def write(folder: Path, **given: str) -> Path:
    found = {
        "bus": f"sqlite:///{folder}/bus.db",
        "customers": f"sqlite:///{folder}/c.db",
        "orders": f"sqlite:///{folder}/o.db",
    }
    path = folder / "charter.yaml"
    path.write_text(MINIMAL.format(**{**found, **given}))
    return path


# -- URLs, checked at load time ---------------------------------------------------------

BAD = [
    ("bus", "postgresql://127.0.0.1/test", 3, "cannot be a bus: PostgreSQL keeps"),
    ("customers", "nats://127.0.0.1:4222", 5, "cannot be a store: NATS carries"),
    ("bus", "kafka://broker:9092", 3, "is not a URL charter knows"),
    ("orders", "sqlite:///o.db?synchronous=maybe", 6, "synchronous=maybe is not a setting"),
    ("orders", "sqlite:///o.db?journal=wal", 6, "unknown option 'journal'"),
    ("customers", "postgresql://u:secret@h/db?pool=abc", 5, "pool=abc is not a number"),
    ("customers", "postgresql://u:secret@h/db?schema=a-b", 5, "schema 'a-b' is not a plain"),
    ("customers", "postgresql://u:secret@h/db?bogus=1", 5, 'invalid URI query parameter: "bogus"'),
    ("customers", "postgresql://u:secret@h:port/db", 5, "the port is not a number"),
    ("bus", "nats://127.0.0.1:4222?replicas=0", 3, "replicas=0 is not a whole number"),
    ("bus", "nats://127.0.0.1:4222?replicas=7", 3, "at most 5 replicas"),
    ("bus", "nats://127.0.0.1:4222?partition=4", 3, "unknown option 'partition'"),
    ("bus", "nats://?replicas=3", 3, "names no server"),
]


@pytest.mark.parametrize(("key", "url", "line", "message"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_url_is_reported_with_its_line(
    tmp_path: Path, key: str, url: str, line: int, message: str
) -> None:
    path = write(tmp_path, **{key: url})
    with pytest.raises(CharterError) as caught:
        model.load(path)
    [problem] = caught.value.problems
    assert problem.line == line and message in problem.message, problem
    assert problem.hint
    assert "secret" not in str(caught.value)  # a password is never printed


def test_good_urls_load(tmp_path: Path) -> None:
    good = {
        "bus": "nats://a:4222,b:4223?replicas=3&partitions=8",
        "customers": "postgresql://u:p@h:5432/db?schema=s_1&pool=4&sslmode=disable"
        "&connect_timeout=3",
        "orders": "sqlite:///o.db?synchronous=normal",
    }
    model.load(write(tmp_path, **good))
    model.load(write(tmp_path, bus="memory://", customers="memory://", orders="memory://x"))


@pytest.mark.parametrize(
    ("url", "role"),
    [
        ("sqlite:///x.db?synchronous=normal", "store"),
        ("sqlite:///x.db?synchronous=sometimes", "store"),
        ("postgresql://h/db?schema=x&pool=3", "store"),
        ("postgresql://h/db?pool=zero", "store"),
        ("nats://h:1?replicas=3&partitions=2", "bus"),
        ("nats://h:1?replicas=6", "bus"),
        ("nats://h:1?replicas=x", "bus"),
        ("nats://h:1?lanes=2", "bus"),
    ],
)
def test_the_loader_and_the_adapters_agree_on_a_url(url: str, role: str) -> None:
    """What the loader lets through, the adapter can open, and the other way round."""
    parse = {"sqlite": sqlite_path, "postgresql": split_url, "nats": parse_url}
    try:
        parse[url.partition(":")[0]](url)  # type: ignore[operator]
        adapter_ok = True
    except ValueError:
        adapter_ok = False
    assert (urls.problems(url, role) == []) == adapter_ok


# -- stopped servers: every command ------------------------------------------------------

COMMANDS = [
    ["check"],
    ["run", "--once"],
    ["run"],
    ["status"],
    ["status", "--json"],
    ["history", "Customer", "0190d1c4-0000-7000-8000-000000000000"],
    ["parked"],
    ["apply", "--dry-run"],
]


def _run(path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        charter_command(*args, "-f", str(path)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_against_a_stopped_postgresql(tmp_path: Path, args: list[str]) -> None:
    """Nothing listens on the port: to a client that is a stopped server."""
    [port] = free_ports(1)
    url = f"postgresql://postgres:secret@127.0.0.1:{port}/test"
    path = write(tmp_path, customers=f"{url}?schema=c", orders=f"{url}?schema=o")
    done = _run(path, args)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert "secret" not in done.stdout + done.stderr
    assert f"is PostgreSQL running at 127.0.0.1:{port}?" in done.stderr, done.stderr
    if args == ["check"]:  # the file is valid; a store out of reach is a note
        assert done.returncode == 0 and "note" in done.stderr
        assert "not customers, orders: out of reach" in " ".join(done.stdout.split())
    else:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "the store of context '" in done.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_against_a_stopped_nats(tmp_path: Path, args: list[str]) -> None:
    [port] = free_ports(1)
    path = write(tmp_path, bus=f"nats://127.0.0.1:{port}")
    done = _run(path, args)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    if args[0] in ("run", "status"):  # the commands that need the bus
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"the bus (nats://127.0.0.1:{port})" in done.stderr
        assert f"is nats-server running at 127.0.0.1:{port}?" in done.stderr, done.stderr
    else:
        assert done.returncode in (0, 1) and "the bus" not in done.stderr, done.stderr


# -- a running writer while PostgreSQL restarts ------------------------------------------


def test_a_postgresql_restart_raises_charter_errors_and_the_writer_recovers(
    tmp_path: Path,
) -> None:
    """Stop a server of our own under a writer and a runner, start it again: every error
    the API raised meanwhile is a charter error, the writer commits again soon after, the
    runner said each failure once and that it works again, and the copies converge."""
    outage_s = 4.0
    with pg_server.server() as pg:
        stores = {c: f"{pg.url}?schema=r_{c}" for c in CONTEXTS}
        path = tmp_path / "charter.yaml"
        path.write_text(SHOP.format(name="restart", bus=f"sqlite:///{tmp_path}/bus.db", **stores))
        errors: list[BaseException] = []
        commits: list[float] = []
        stop = threading.Event()
        with charter.load(path) as shop:
            runner = charter.Runner(shop).start()

            def writer() -> None:
                n = 0
                while not stop.is_set():
                    try:
                        with shop.context("customers").transaction() as tx:
                            tx.create("Customer", email=f"c{n}@x", name="C", password_hash="h")
                        n += 1
                        commits.append(time.monotonic())
                    except Exception as exc:
                        errors.append(exc)
                        time.sleep(0.02)
                    time.sleep(0.005)

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                while len(commits) < 20:
                    time.sleep(0.01)
                pg.stop()  # fast: open sessions are terminated (AdminShutdown)
                time.sleep(outage_s)
                pg.start()
                back = time.monotonic()
                while not any(c > back for c in commits) and time.monotonic() < back + 60:
                    time.sleep(0.01)
            finally:
                stop.set()
                thread.join()
            first = next((c for c in commits if c > back), None)
            assert first is not None, "the writer never committed again"
            print(f"\nfirst commit {first - back:.2f} s after PostgreSQL was back")
            leaked = [e for e in errors if not isinstance(e, Error)]
            assert not leaked, leaked[:3]
            assert any(isinstance(e, UnavailableError) for e in errors)
            assert runner.wait_until_synced(60)
            runner.stop()
            lines = runner.reports.take()
            print("\n".join(line[:160] for line in lines))
            assert any("relay of 'customers': working again" in line for line in lines)
            said = [line for line in lines if line.startswith("relay of 'customers':")]
            assert len(said) <= 6, said  # each kind of failure once, not on every try
            assert not [e for e in runner.errors if not isinstance(e, Error)]
            assert_converged(shop)


# -- reports ------------------------------------------------------------------------------


def test_a_repeating_failure_is_said_once_then_counted() -> None:
    reports = Reports(every=60)
    down = UnavailableError("the store of context 'x': cannot connect (position 17)")
    assert reports.failed("relay of 'x'", down, now=0.0)
    for second in range(1, 120):  # 100 tries a second would be the same
        again = UnavailableError(str(down).replace("17", str(second)))
        assert not reports.failed("relay of 'x'", again, now=second / 2)
    assert reports.take(now=59.0) == ["relay of 'x': " + str(down)]
    [count] = reports.take(now=60.0)
    assert count.startswith("relay of 'x': again 119 times in the last 60 s: ")
    assert reports.take(now=61.0) == []
    reports.worked("relay of 'x'", now=70.0)
    [worked] = reports.take(now=70.0)
    assert worked == "relay of 'x': working again, after 120 failed tries in 70.0 s"
    assert reports.failed("relay of 'x'", down, now=71.0)  # news again


# -- charter check against the stores; status meanwhile -----------------------------------


@pytest.mark.processes
def test_check_finds_what_run_would_refuse_and_changes_nothing(shop_file: Path) -> None:
    with charter.load(shop_file) as shop:
        with shop.context("customers").transaction() as tx:
            tx.create("Customer", email="ada@x", name="Ada", password_hash="h")
        charter.Runner(shop).drain()
    edit(shop_file, "name:    {type: string}", "name:    {type: integer}")
    done = _run(shop_file, ["check"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Customer.name changed type from string to integer" in done.stderr
    assert f"{shop_file}:" in done.stderr and "Traceback" not in done.stderr
    again = _run(shop_file, ["check"])  # nothing was changed by the first check
    assert again.stderr == done.stderr
    offline = _run(shop_file, ["check", "--offline"])
    assert offline.returncode == 0 and "checked the file only" in offline.stdout
    # status still reports the copies whose stores are fine, and the broken one's error
    status = _run(shop_file, ["status"])
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert "UNKNOWN" in status.stdout and "changed type from string to integer" in status.stderr
    text = shop_file.read_text().replace("name:    {type: integer}", "name:    {type: string}")
    shop_file.write_text(text)
    assert _run(shop_file, ["check"]).returncode == 0
    assert _run(shop_file, ["status"]).returncode == 0


# -- under a context's own roles (charter apply) ----------------------------------------


def _as_projector_of(path: Path, system: str, context: str) -> Path:
    """The charter as the projector of `context` holds it: its own role for every store."""
    text = path.read_text().replace(
        "postgresql://postgres@", f"postgresql://{system}_{context}_projector@"
    )
    mine = path.with_name(f"{context}.yaml")
    mine.write_text(text)
    return mine


def test_status_and_parked_under_a_contexts_own_roles(
    pg_shop: tuple[Path, str, str],  # noqa: F811 (the fixture)
) -> None:
    path, system, _ = pg_shop
    apply(path)
    with charter.load(path) as shop:
        with shop.context("customers").transaction() as tx:
            tx.create("Customer", email="ada@x", name="Ada", password_hash="h")
        charter.Runner(shop).drain()
    orders = _as_projector_of(path, system, "orders")
    mine = _run(orders, ["status", "--context", "orders", "--json"])
    assert mine.returncode == 0, mine.stderr
    rows = json.loads(mine.stdout)
    assert [(r["copy"], r["state"]) for r in rows] == [("order_customers", "OK")]
    parked = _run(orders, ["parked", "--context", "orders"])
    assert parked.returncode == 0, parked.stderr
    every = _run(orders, ["status"])  # all copies: what its role may not read is a message
    assert every.returncode == 1 and "Traceback" not in every.stderr
    assert "permission denied" in every.stderr and "shipping_customers" in every.stderr
    everything = _run(orders, ["parked"])
    assert everything.returncode == 1 and "Traceback" not in everything.stderr
    assert "shipping_customers: the store of context 'shipping'" in " ".join(
        everything.stderr.split()
    )


def test_a_projector_waiting_for_its_first_fill_says_so_once(
    pg_shop: tuple[Path, str, str],  # noqa: F811 (the fixture)
) -> None:
    """No owner's relay runs: the projector asks for a fill and waits. It says so once, by
    name, and leaves no connection pool behind per try."""
    path, system, _ = pg_shop
    apply(path)
    orders = _as_projector_of(path, system, "orders")
    process = subprocess.Popen(
        charter_command("run", "--context", "orders", "--no-relays", "-f", str(orders)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)  # ~300 polls at the default 10 ms
    with psycopg.connect(POSTGRES) as conn:
        [(sessions,)] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
            (f"{system}_orders_projector",),
        ).fetchall()
    assert sessions <= 3, f"{sessions} sessions: a connection pool left behind per try"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    waits = [line for line in err.splitlines() if "needs a first fill" in line]
    assert len(waits) == 1, err
    assert "projector of copy 'order_customers'" in waits[0]
    assert "ConnectionPool" not in err and "Exception ignored" not in err, err
