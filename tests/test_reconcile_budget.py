"""`charter reconcile --budget` bounds the whole check, its first pass too: that pass digests
every row of both tables in one query each, and a budget smaller than it stops it inside the
database (SQLite's progress handler, PostgreSQL's statement_timeout), the report saying it
is not complete and what was left, never a traceback. Tables of a few hundred thousand rows
(loaded past charter with the databases' own tools, for speed) make the pass take seconds;
the bound is asserted loosely (five times the budget, plus slack), against that pass."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

import charter
from charter import clock, reconcile
from charter.errors import OutOfTimeError
from charter.system import System
from tests.backends import Backend, MemoryBackend, PostgresBackend, SQLiteBackend
from tests.conftest import SHOP, charter_command

BUDGET_S = 0.1
SLACK_S = 1.0  # a loaded machine: opening, id_range, the cancel reaching the server
ROWS = {"sqlite": 600_000, "postgres+sqlite": 1_000_000}  # each pass well over a second

# UUIDv7-shaped ids, 86 ms apart (a day for a million), the row number in their last part
_PG_ROWS = """
SET session_replication_role = replica;
INSERT INTO "{s}_customers".customer (id, version, email, name, address, status, password_hash)
SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7000-8000-' || lpad(to_hex(i), 12, '0'),
       1, 'c' || i || '@x.org', 'C' || i, NULL, 'active', 'h'
FROM (SELECT i, lpad(to_hex(1767225600000 + i * 86), 12, '0') AS h
      FROM generate_series(1, {n}) AS i) AS made;
INSERT INTO "{s}_orders".order_customers (id, version, name, email, synced_at)
SELECT id, version, name, email, '2026-01-01T00:00:00Z' FROM "{s}_customers".customer;
ANALYZE "{s}_customers".customer;
ANALYZE "{s}_orders".order_customers;
"""
_SQLITE_ROWS = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}),
made AS (SELECT i, printf('%012x', 1767225600000 + i * 86) AS h FROM n)
SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7000-8000-' || printf('%012x', i) AS id,
       i FROM made
"""


@pytest.fixture(params=[SQLiteBackend(), PostgresBackend("sqlite")], ids=lambda b: b.name)
def big(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, System]]:
    """A shop whose Customer table and order_customers copy hold the same ROWS rows."""
    backend: Backend = request.param
    urls = backend.urls(tmp_path)
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(**urls))
    system = charter.load(path)
    try:
        for context in system.charter.contexts:
            system.store(context)  # the tables exist
        rows = ROWS[backend.name]
        if isinstance(backend, PostgresBackend):
            with psycopg.connect(urls["customers"].partition("?")[0], autocommit=True) as conn:
                conn.execute(_PG_ROWS.format(s=urls["prefix"], n=rows))
        else:
            _load_sqlite(tmp_path, rows)
        yield path, system
    finally:
        system.close()
        backend.cleanup(urls)


def _load_sqlite(folder: Path, rows: int) -> None:
    made = _SQLITE_ROWS.format(n=rows)
    for name, sql in (
        (
            "customers",
            "INSERT INTO customer (id, version, email, name, address, status, password_hash) "
            f"SELECT id, 1, 'c' || i || '@x.org', 'C' || i, NULL, 'active', 'h' FROM ({made})",
        ),
        (
            "orders",
            "INSERT INTO order_customers (id, version, name, email, synced_at) "
            f"SELECT id, 1, 'C' || i, 'c' || i || '@x.org', '2026-01-01T00:00:00Z' FROM "
            f"({made})",
        ),
    ):
        with closing(sqlite3.connect(folder / f"{name}.db")) as conn:
            conn.execute("PRAGMA cache_size=-8191")  # charter's mark: past the guard
            conn.execute(sql)
            conn.commit()


def test_a_tiny_budget_stops_the_first_pass_and_says_what_was_left(
    big: tuple[Path, System],
) -> None:
    path, system = big
    entity, copy = system.charter.entities["Customer"], system.charter.copies["order_customers"]
    fields = [entity.fields[name] for name in copy.fields]
    owner = system.store("customers")
    began = time.monotonic()
    whole = owner.digest(entity, fields, "", 6)  # what one side's first pass costs
    pass_s = time.monotonic() - began
    bound = 5 * BUDGET_S + SLACK_S
    assert sum(d.count for d in whole.values()) == ROWS[_name(path)]
    # big enough to prove something: a pass several budgets long (not `bound`: on a quiet
    # machine PostgreSQL digests a million rows in well under a second)
    assert pass_s > 3 * BUDGET_S, f"the table is too small: a pass took {pass_s:.2f}s"

    began = time.monotonic()
    with pytest.raises(OutOfTimeError):  # the store's own word for it
        owner.digest(entity, fields, "", 6, clock.monotonic() + BUDGET_S)
    stopped_s = time.monotonic() - began
    assert stopped_s < min(bound, 0.7 * pass_s), f"stopped {stopped_s:.2f}s, a pass {pass_s:.2f}s"
    assert owner.digest(entity, fields, "", 6) == whole  # the store is fine after a stop

    # the stores open (as in `charter run`'s reconciler): the pass starts, and must stop
    report = reconcile.check(system, copy, budget_s=BUDGET_S)
    assert not report.error and not report.complete and report.left == 1, report
    assert report.ranges == 0 and report.findings == [], report  # nothing compared yet
    assert report.took_s < bound, f"the check took {report.took_s:.2f}s, a pass {pass_s:.2f}s"

    done = subprocess.run(
        charter_command(
            "reconcile",
            "-f",
            str(path),
            "--full",
            "--json",
            "--budget",
            f"{BUDGET_S}s",
            "order_customers",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 5, done.stdout + done.stderr  # a check stopped before the end
    (doc,) = json.loads(done.stdout)
    assert doc["complete"] is False and doc["left"] >= 1, doc
    assert doc["error"] is None and doc["drift"] == 0, doc
    assert doc["took_s"] < bound, f"the command's check took {doc['took_s']}s, a pass {pass_s:.2f}s"


def _name(path: Path) -> str:
    return "postgres+sqlite" if "postgresql://" in path.read_text() else "sqlite"


def test_the_budget_bounds_the_classification_of_what_was_found(tmp_path: Path) -> None:
    """Every difference found is read again to be classified, a few reads each side: with
    thousands found, that too stops at the budget, and the ids left unread are counted as
    left (a range of one id each), the check not complete. On a clock that moves 1 ms each
    time it is read, so that no timing decides it."""
    backend = MemoryBackend()
    urls = backend.urls(tmp_path)
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(**urls))
    system = charter.load(path)
    try:
        with system.context("customers").transaction() as tx:
            for n in range(1500):
                tx.create("Customer", email=f"c{n}@x.org", name=f"C{n}", password_hash="h")
        copy = system.charter.copies["order_customers"]  # never run: every id is missing
        system.store("orders")
        ticks = itertools.count()
        source = clock.Source(time.time_ns, lambda: next(ticks) / 1000, clock.randbits)
        with clock.installed(source):
            report = reconcile.check(system, copy, budget_s=0.5)
            roomy = reconcile.check(system, copy, budget_s=3600.0)
        assert roomy.complete and len(roomy.findings) == 1500, roomy.counts
        assert not report.complete and not report.error, report.counts
        assert 0 < len(report.findings) < 1500 and report.left == 1500 - len(report.findings)
    finally:
        system.close()
        backend.cleanup(urls)
