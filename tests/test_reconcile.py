"""G6 drift found and repaired, on every pair of stores (the owner's and the copy's:
SQLite and SQLite, PostgreSQL and PostgreSQL, one of each, and memory): drift planted past
charter with each database's own tools (SQLite with the guard bypassed, PostgreSQL as a
superuser with the guard trigger disabled) is found in its exact kind, in flight is never
drift, and `charter reconcile` says so, exiting 0 or 5."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import charter
from charter import clock, digests, reconcile
from charter.cli import main
from charter.reconcile import compare
from charter.runner import Runner
from charter.stores.memory import MemoryStore
from charter.system import System
from tests.backends import CONTEXTS, MemoryBackend, PostgresBackend, SQLiteBackend
from tests.conftest import SHOP

SQLITE, POSTGRES, MEMORY = SQLiteBackend(), PostgresBackend("sqlite"), MemoryBackend()
# (owner's backend, copy's backend); the bus is SQLite (memory with memory)
PAIRS = {
    "sqlite/sqlite": (SQLITE, SQLITE),
    "postgres/postgres": (POSTGRES, POSTGRES),
    "sqlite/postgres": (SQLITE, POSTGRES),
    "postgres/sqlite": (POSTGRES, SQLITE),
    "memory/memory": (MEMORY, MEMORY),
}
OWNERS = ("customers", "calendar")  # these contexts are on the owner's backend


@pytest.fixture(params=list(PAIRS), ids=list(PAIRS))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    owner, copies = PAIRS[request.param]
    mine, theirs = owner.urls(tmp_path / "owner"), copies.urls(tmp_path / "copies")
    urls = {ctx: (mine if ctx in OWNERS else theirs)[ctx] for ctx in CONTEXTS}
    urls["bus"] = mine["bus"] if owner is MEMORY else f"sqlite:///{tmp_path}/bus.db"
    urls["name"] = mine["name"]
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(**urls))
    yield path, urls
    owner.cleanup(mine)
    copies.cleanup(theirs)


@pytest.fixture
def shop(pair: tuple[Path, dict[str, str]]) -> Iterator[System]:
    system = charter.load(pair[0])
    yield system
    system.close()


def customers(system: System, count: int) -> list[str]:
    """`count` new customers (C0 <c0@x.org>, … the first time), in one transaction."""
    ids = []
    with system.context("customers").transaction() as tx:
        start = len(list(system.store("customers").rows(system.charter.entities["Customer"])))
        for n in range(start, start + count):
            made = tx.create("Customer", email=f"c{n}@x.org", name=f"C{n}", password_hash="h")
            ids.append(made.id)
    return ids


def rename(system: System, entity_id: str, name: str) -> None:
    with system.context("customers").transaction() as tx:
        tx.update("Customer", entity_id, name=name)


def plant(system: System, copy: str, sql: str) -> None:
    """Change a copy past charter, with its database's own tools: SQLite with the guard
    bypassed (charter's connection mark), PostgreSQL as a superuser with triggers off."""
    url = system.charter.contexts[system.charter.copies[copy].context].store
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            conn.execute("PRAGMA cache_size=-8191")  # what the guard looks for
            conn.executescript(sql)
            conn.commit()
        finally:
            conn.close()
    elif url.startswith("postgresql://"):
        base, _, schema = url.partition("?schema=")
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute("SET session_replication_role = replica")  # no triggers
            conn.execute(sql)  # type: ignore[arg-type]
    else:
        pytest.skip("memory: planted through the store below")


def memory_rows(system: System, copy: str) -> dict[str, dict[str, object]]:
    store = system.store(system.charter.copies[copy].context)
    inner = getattr(store, "_store", store)  # under charter.boundary's guard
    assert isinstance(inner, MemoryStore)
    return inner._data.copies[copy]


@contextmanager
def later(seconds: float) -> Iterator[None]:
    """Run the block `seconds` from now (wall time; monotonic time as it is)."""
    shift = int(seconds * 1e9)
    source = clock.Source(lambda: time.time_ns() + shift, time.monotonic, clock.randbits)
    with clock.installed(source):
        yield


def found(system: System, copy: str = "order_customers") -> dict[str, list[str]]:
    report = reconcile.check(system, system.charter.copies[copy])
    assert not report.error, report.error
    kinds: dict[str, list[str]] = {}
    for finding in report.findings:
        kinds.setdefault(finding.kind, []).append(finding.id)
    return {kind: sorted(ids) for kind, ids in kinds.items()}


def is_memory(system: System) -> bool:
    return system.charter.contexts["orders"].store.startswith("memory://")


def test_a_copy_equal_to_its_owner_is_clean(shop: System) -> None:
    customers(shop, 20)
    Runner(shop).drain()
    report = reconcile.check(shop, shop.charter.copies["order_customers"])
    assert report.clean and report.findings == [] and report.complete
    assert (report.owner, report.team, report.context) == ("customers", "customer-team", "orders")
    empty = reconcile.check(shop, shop.charter.copies["shipping_customers"])
    assert empty.clean


def test_every_kind_of_drift_is_found_in_its_exact_kind(shop: System) -> None:
    ids = customers(shop, 12)
    Runner(shop).drain()
    for n in (2, 3):
        rename(shop, ids[n], f"renamed {n}")  # version 2 at the owner
    Runner(shop).drain()
    extra = "01900000-0000-7000-8000-0000000000ee"
    gone, changed, rolled, ahead, also_ahead = ids[0], ids[1], ids[2], ids[4], ids[5]
    if is_memory(shop):
        rows = memory_rows(shop, "order_customers")
        del rows[gone]
        rows[changed]["name"] = "written past charter"
        rows[rolled]["version"] = 1
        rows[ahead]["version"] = 9
        rows[also_ahead]["version"] = 2
        rows[extra] = {**rows[ids[6]], "id": extra}
    else:
        plant(
            shop,
            "order_customers",
            f"DELETE FROM order_customers WHERE id = '{gone}';"
            f"UPDATE order_customers SET name = 'written past charter' WHERE id = '{changed}';"
            f"UPDATE order_customers SET version = 1 WHERE id = '{rolled}';"
            f"UPDATE order_customers SET version = 9 WHERE id = '{ahead}';"
            f"UPDATE order_customers SET version = 2 WHERE id = '{also_ahead}';"
            "INSERT INTO order_customers (id, version, name, email, synced_at) "
            f"VALUES ('{extra}', 1, 'nobody', 'n@x.org', '2024-01-01T00:00:00.000000Z');",
        )
    with later(3600):  # an hour on: every change is beyond the copy's window
        kinds = found(shop)
    assert kinds == {
        "missing": [gone],
        "divergent": [changed],
        "stale": [rolled],
        "ahead": sorted([ahead, also_ahead]),
        "extra": [extra],
    }
    report = reconcile.check(shop, shop.charter.copies["order_customers"])
    (divergent,) = [f for f in report.findings if f.kind == "divergent"]
    assert divergent.owner_values == {"name": "C1", "email": "c1@x.org"}
    assert divergent.copy_values == {"name": "written past charter", "email": "c1@x.org"}


def test_what_is_on_its_way_is_in_flight_not_drift(shop: System) -> None:
    ids = customers(shop, 5)
    Runner(shop).drain()
    rename(shop, ids[0], "newer")  # not relayed yet
    fresh = customers(shop, 1)
    with shop.context("customers").transaction() as tx:
        tx.delete("Customer", ids[1])
    kinds = found(shop)
    assert kinds == {"in_flight": sorted([ids[0], ids[1], fresh[0]])}
    report = reconcile.check(shop, shop.charter.copies["order_customers"])
    assert report.clean and not report.drift
    with later(3600):
        assert found(shop) == {
            "stale": [ids[0]],
            "extra": [ids[1]],
            "missing": [fresh[0]],
        }
    Runner(shop).drain()
    assert found(shop) == {}


def test_a_copy_restored_from_an_older_file_or_schema_is_behind(
    shop: System, pair: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    if is_memory(shop):
        pytest.skip("memory: no file or schema to restore")
    ids = customers(shop, 6)
    Runner(shop).drain()
    url = shop.charter.contexts["orders"].store
    backup = _backup(url, tmp_path)
    rename(shop, ids[0], "after the backup")
    later_ids = customers(shop, 2)
    Runner(shop).drain()
    shop.close()
    _restore(url, backup)
    system = charter.load(pair[0])
    try:
        with later(3600):
            report = reconcile.check(system, system.charter.copies["order_customers"])
            assert {k: sorted(report.ids(k)) for k in report.counts} == {
                "stale": [ids[0]],
                "missing": sorted(later_ids),
            }
            reconcile.repair(system, report)
        Runner(system, ["orders"], relays=False).drain()
        with later(3600):
            assert found(system) == {}
    finally:
        system.close()


COPY_TABLES = ("order_customers", "charter_checkpoint", "charter_tombstone")
OWNER_TABLES = ("customer", "charter_outbox", "charter_relay")
PG_OWNER_TABLES = ("customer", "charter_outbox", "charter_pending")


def _backup(url: str, folder: Path, tables: tuple[str, ...] = COPY_TABLES) -> str:
    if url.startswith("sqlite:///"):
        target = folder / f"backup-{tables[0]}.db"
        _sqlite_copy(url.removeprefix("sqlite:///"), str(target))
        return str(target)
    base, _, schema = url.partition("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_backup" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}_backup"')
        for table in tables:
            conn.execute(  # type: ignore[call-overload]
                f'CREATE TABLE "{schema}_backup"."{table}" AS TABLE "{schema}"."{table}"'
            )
    return f"{schema}_backup"


def _sqlite_copy(source: str, target: str) -> None:
    """The whole file `source` over `target`, with SQLite's own backup (as an operator
    restoring a backup would: the guard is on tables, not files)."""
    conn, into = sqlite3.connect(source), sqlite3.connect(target)
    try:
        conn.backup(into)
    finally:
        conn.close()
        into.close()


def _restore(url: str, backup: str, tables: tuple[str, ...] = COPY_TABLES) -> None:
    if url.startswith("sqlite:///"):
        _sqlite_copy(backup, url.removeprefix("sqlite:///"))
        return
    base, _, schema = url.partition("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for table in tables:
            conn.execute(f'DELETE FROM "{schema}"."{table}"')  # type: ignore[call-overload]
            conn.execute(  # type: ignore[call-overload]
                f'INSERT INTO "{schema}"."{table}" SELECT * FROM "{backup}"."{table}"'
            )
        conn.execute(f'DROP SCHEMA "{backup}" CASCADE')


def test_ranges_are_cut_and_only_small_ones_read(
    shop: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With small parts, a big table is cut several times and only the differing leaf is
    read as rows; the rest is compared by digests alone."""
    monkeypatch.setattr(compare, "FIRST_PARTS", 4)
    monkeypatch.setattr(compare, "PARTS", 4)
    monkeypatch.setattr(compare, "LEAF", 8)
    ids = customers(shop, 300)
    Runner(shop).drain()
    if is_memory(shop):
        del memory_rows(shop, "order_customers")[ids[150]]
    else:
        plant(shop, "order_customers", f"DELETE FROM order_customers WHERE id = '{ids[150]}'")
    with later(3600):
        report = reconcile.check(shop, shop.charter.copies["order_customers"])
    assert [(f.kind, f.id) for f in report.findings] == [("missing", ids[150])]
    assert report.rows <= 2 * 8  # one leaf, both sides
    assert report.ranges > 4


def test_a_level_of_the_search_is_one_query_a_side_whatever_the_differences(
    shop: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty differences under several groups cost one digest query a side for each level
    of the descent and one read of the rows, not a query for each differing group."""
    monkeypatch.setattr(compare, "FIRST_PARTS", 4)
    monkeypatch.setattr(compare, "PARTS", 4)
    monkeypatch.setattr(compare, "LEAF", 2)
    ids = customers(shop, 200)
    Runner(shop).drain()
    picked = ids[::10]
    if is_memory(shop):
        for entity_id in picked:
            memory_rows(shop, "order_customers")[entity_id]["name"] = "past charter"
    else:
        listed = ", ".join(f"'{i}'" for i in picked)
        plant(
            shop, "order_customers", f"UPDATE order_customers SET name = 'x' WHERE id IN ({listed})"
        )
    calls: dict[str, list[tuple[str, int]]] = {}
    for context in ("customers", "orders"):
        store = shop.store(context)
        noted = calls[context] = []
        for name in ("digest_under", "digest_rows"):
            monkeypatch.setattr(store, name, _counted(getattr(store, name), noted, name))
    with later(3600):
        report = reconcile.check(shop, shop.charter.copies["order_customers"])
    assert sorted(f.id for f in report.findings) == sorted(picked)
    for noted in calls.values():
        levels = [length for name, length in noted if name == "digest_under"]
        assert len(levels) >= 2 and len(set(levels)) == len(levels)  # one query a level
        assert noted.count(("digest_rows", 0)) == 1  # every differing row in one read


def _counted(ask: Any, calls: list[tuple[str, int]], name: str) -> Any:
    """`ask`, each call noted as (name, the length asked for: 0 for a read)."""

    def counted(*args: Any) -> Any:
        calls.append((name, args[3] if name == "digest_under" else 0))
        return ask(*args)

    return counted


def test_two_postgresql_sides_digest_by_their_own_hash_unless_a_column_differs(
    shop: System,
) -> None:
    """Two PostgreSQL sides digest groups by PostgreSQL's own hash (a fifth of the md5's
    cost), any other pair by charter's encoding; a copy's column altered past charter to
    another type turns the native hash off (its values would hash otherwise), and either
    way a value written past charter at the same version is found."""
    ids = customers(shop, 30)
    Runner(shop).drain()
    copy = shop.charter.copies["order_customers"]
    entity = shop.charter.entities["Customer"]
    both = {shop.charter.contexts[c].store.split(":")[0] for c in ("customers", "orders")}

    def native() -> bool:
        sides = compare.Sides(shop.store("customers"), entity, shop.store("orders"), copy)
        try:
            return sides.native
        finally:
            sides.close()

    assert native() == (both == {"postgresql"})
    change = f"UPDATE order_customers SET email = 'past@x.org' WHERE id = '{ids[7]}';"
    if is_memory(shop):
        memory_rows(shop, "order_customers")[ids[7]]["email"] = "past@x.org"
    else:
        plant(shop, "order_customers", change)
    with later(3600):
        assert found(shop) == {"divergent": [ids[7]]}
    if both == {"postgresql"}:
        plant(shop, "order_customers", "ALTER TABLE order_customers ALTER email TYPE varchar")
        assert not native()
        with later(3600):
            assert found(shop) == {"divergent": [ids[7]]}


def test_the_command_reports_drift_and_exits_5(
    shop: System, pair: tuple[Path, dict[str, str]]
) -> None:
    if is_memory(shop):
        pytest.skip("memory: a command in this process sees its own empty system")
    ids = customers(shop, 4)
    Runner(shop).drain()
    args = ["reconcile", "-f", str(pair[0])]
    clean = CliRunner().invoke(main, args)
    assert clean.exit_code == 0, clean.output
    assert "order_customers" in clean.output and "OK" in clean.output
    plant(shop, "order_customers", f"DELETE FROM order_customers WHERE id = '{ids[0]}'")
    args.append("--full")  # planted with triggers off (PostgreSQL): no bucket saw it
    with later(3600):
        drift = CliRunner().invoke(main, [*args, "--json", "order_customers"])
    assert drift.exit_code == 5, drift.output
    (doc,) = json.loads(drift.output)
    assert (doc["copy"], doc["owner"], doc["team"], doc["drift"]) == (
        "order_customers",
        "customers",
        "customer-team",
        1,
    )
    assert doc["counts"] == {"missing": 1} and doc["findings"][0]["id"] == ids[0]
    with later(3600):
        table = CliRunner().invoke(main, args)
    assert table.exit_code == 5 and "missing" in table.output and ids[0] in table.output
    unknown = CliRunner().invoke(main, [*args, "no_such_copy"])
    assert unknown.exit_code == 1 and "no copy 'no_such_copy'" in unknown.output
    bad = CliRunner().invoke(main, [*args, "--budget", "soon"])
    assert bad.exit_code == 2 and "not a duration" in bad.output


def plant_every_kind(system: System) -> dict[str, list[str]]:
    """Drift of every kind in order_customers, planted past charter: the ids by kind."""
    ids = customers(system, 12)
    Runner(system).drain()
    for n in (2, 3):
        rename(system, ids[n], f"renamed {n}")  # version 2 at the owner
    with system.context("customers").transaction() as tx:
        tx.delete("Customer", ids[7])
    Runner(system).drain()
    extra = "01900000-0000-7000-8000-0000000000ee"
    gone, changed, rolled, ahead, kept = ids[0], ids[1], ids[2], ids[4], ids[7]
    if is_memory(system):
        rows = memory_rows(system, "order_customers")
        del rows[gone]
        rows[changed]["name"] = "written past charter"
        rows[rolled]["version"] = 1
        rows[ahead]["version"] = 9
        rows[extra] = {**rows[ids[6]], "id": extra}
        rows[kept] = {**rows[ids[6]], "id": kept, "version": 1}
    else:
        row = "(id, version, name, email, synced_at) VALUES ('{}', 1, 'x', 'x@x.org', 'then')"
        plant(
            system,
            "order_customers",
            f"DELETE FROM order_customers WHERE id = '{gone}';"
            f"UPDATE order_customers SET name = 'written past charter' WHERE id = '{changed}';"
            f"UPDATE order_customers SET version = 1 WHERE id = '{rolled}';"
            f"UPDATE order_customers SET version = 9 WHERE id = '{ahead}';"
            f"INSERT INTO order_customers {row.format(extra)};"
            f"INSERT INTO order_customers {row.format(kept)};",  # deleted at the owner
        )
    return {
        "missing": [gone],
        "divergent": [changed],
        "stale": [rolled],
        "ahead": [ahead],
        "extra": sorted([extra, kept]),
    }


def owner_state(system: System) -> tuple[int, list[tuple[str, int]]]:
    store, entity = system.store("customers"), system.charter.entities["Customer"]
    return len(store.outbox(0, 10_000)), [(r["id"], r["version"]) for r in store.rows(entity)]


def test_repair_mends_every_kind_through_the_projector_and_never_writes_the_owner(
    shop: System,
) -> None:
    planted = plant_every_kind(shop)
    before = owner_state(shop)
    copy = shop.charter.copies["order_customers"]
    with later(3600):
        report = reconcile.check(shop, copy)
        assert {k: sorted(report.ids(k)) for k in report.counts} == planted
        done = reconcile.repair(shop, report)  # ahead is left to the operator
        assert found(shop) == planted  # nothing changes until the copy's projector runs
    assert done.published == {"missing": 1, "divergent": 1, "stale": 1, "extra": 2}
    assert [(f.kind, f.id) for f in done.left] == [("ahead", planted["ahead"][0])]
    Runner(shop, ["orders"]).drain()  # the copy's context only: its projector mends it
    with later(3600):
        assert found(shop) == {"ahead": planted["ahead"]}
        again = reconcile.check(shop, copy)
        accepted = reconcile.repair(shop, again, accept_owner=True)
    assert accepted.published == {"ahead": 1}
    Runner(shop, ["orders"]).drain()
    with later(3600):
        assert found(shop) == {}
    assert owner_state(shop) == before  # the owner's store: not one write
    rows = {r["id"]: r for r in shop.store("orders").copy_rows(copy)}
    assert rows[planted["ahead"][0]]["version"] == 1
    assert rows[planted["divergent"][0]]["name"] == "C1"
    rename(shop, planted["ahead"][0], "after the repair")  # the owner goes on from there
    Runner(shop).drain()
    assert found(shop) == {}


def test_the_command_repairs_and_checks_again(
    shop: System, pair: tuple[Path, dict[str, str]]
) -> None:
    if is_memory(shop):
        pytest.skip("memory: a command in this process sees its own empty system")
    planted = plant_every_kind(shop)
    args = ["reconcile", "-f", str(pair[0]), "order_customers", "--budget", "20s"]
    with Runner(shop, ["orders"]).start(), later(3600):  # the copy's projector, running
        result = CliRunner().invoke(main, [*args, "--repair", "--json"])
        assert result.exit_code == 5, result.output  # the copy ahead is left
        (doc,) = json.loads(result.output)
        assert doc["before"]["drift"] == 6 and doc["repair"]["applied"]
        assert doc["repair"]["left"] == planted["ahead"] and doc["counts"] == {"ahead": 1}
        told = CliRunner(env={"COLUMNS": "1000"}).invoke(main, [*args, "--repair"])
        assert told.exit_code == 5, told.output  # what is left, and how to move it back
        assert "(ahead) (the owner went back: `--repair --accept-owner`" in told.output
        assert "checked again: still 1 drifted: 1 ahead" in told.output, told.output
        accepted = CliRunner().invoke(main, [*args, "--repair", "--accept-owner"])
        assert accepted.exit_code == 0, accepted.output
        assert "checked again: clean" in accepted.output
    alone = CliRunner().invoke(main, [*args, "--accept-owner"])
    assert alone.exit_code == 2 and "only with --repair" in alone.output


def test_an_owner_restored_from_an_older_backup_leaves_its_copy_ahead(
    shop: System, pair: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """What the copy holds past the owner's backup is ahead (versions) or extra (ids the
    owner no longer has): reported, and moved back only when the operator accepts it."""
    if is_memory(shop):
        pytest.skip("memory: no file or schema to restore")
    ids = customers(shop, 4)
    Runner(shop).drain()
    url = shop.charter.contexts["customers"].store
    tables = OWNER_TABLES if url.startswith("sqlite:///") else PG_OWNER_TABLES
    backup = _backup(url, tmp_path, tables)
    rename(shop, ids[0], "lost with the owner's disk")
    lost = customers(shop, 1)
    Runner(shop).drain()
    shop.close()
    _restore(url, backup, tables)
    system = charter.load(pair[0])
    try:
        with later(3600):
            report = reconcile.check(system, system.charter.copies["order_customers"])
            assert {k: report.ids(k) for k in report.counts} == {"extra": lost, "ahead": [ids[0]]}
            assert reconcile.repair(system, report).published == {"extra": 1}
            Runner(system, ["orders"], relays=False).drain()
            assert found(system) == {"ahead": [ids[0]]}
            again = reconcile.check(system, system.charter.copies["order_customers"])
            reconcile.repair(system, again, accept_owner=True)
            Runner(system, ["orders"], relays=False).drain()
            assert found(system) == {}
    finally:
        system.close()


def test_events_a_nats_stream_lost_are_found_and_repaired(tmp_path: Path) -> None:
    """A NATS purge (what a bus that acknowledged events and lost them leaves): the copy
    never gets them; reconciliation finds the ids missing or stale, and repairs them."""
    import asyncio

    import nats

    from charter.buses.nats.subjects import stream_name

    backend = PostgresBackend("nats")
    urls = backend.urls(tmp_path)
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(**urls))
    system = charter.load(path)
    try:
        ids = customers(system, 5)
        Runner(system).drain()
        rename(system, ids[0], "never arrives")
        fresh = customers(system, 2)
        Runner(system, ["customers"], projectors=False).drain()  # relayed, not applied

        async def purge() -> None:
            conn = await nats.connect("nats://127.0.0.1:4222")
            try:
                await conn.jetstream().purge_stream(stream_name(urls["name"]))
            finally:
                await conn.close()

        asyncio.run(purge())
        Runner(system).drain()
        with later(3600):
            report = reconcile.check(system, system.charter.copies["order_customers"])
            assert {k: sorted(report.ids(k)) for k in report.counts} == {
                "stale": [ids[0]],
                "missing": sorted(fresh),
            }
            reconcile.repair(system, report)
            Runner(system).drain()
            assert found(system) == {}
    finally:
        system.close()
        backend.cleanup(urls)


def test_a_delete_the_owner_lost_leaves_its_copy_ahead_until_accepted(
    shop: System, pair: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The owner restored from a backup older than a delete its copy applied: the copy,
    holding only the tombstone, is ahead (not missing, which a repair could never mend:
    the tombstone refuses the owner's older version), and --accept-owner brings it back."""
    if is_memory(shop):
        pytest.skip("memory: no file or schema to restore")
    ids = customers(shop, 3)
    Runner(shop).drain()
    url = shop.charter.contexts["customers"].store
    tables = OWNER_TABLES if url.startswith("sqlite:///") else PG_OWNER_TABLES
    backup = _backup(url, tmp_path, tables)
    with shop.context("customers").transaction() as tx:
        tx.delete("Customer", ids[1])
    Runner(shop).drain()
    shop.close()
    _restore(url, backup, tables)
    system = charter.load(pair[0])
    try:
        with later(3600):
            report = reconcile.check(system, system.charter.copies["order_customers"])
            (finding,) = report.findings
            assert (finding.kind, finding.id) == ("ahead", ids[1])
            assert (finding.owner_version, finding.copy_version) == (1, 2)
            assert reconcile.repair(system, report).published == {}
            assert reconcile.repair(system, report, accept_owner=True).published == {"ahead": 1}
            Runner(system, ["orders"], relays=False).drain()
            assert found(system) == {}
        rows = {
            r["id"]: r["version"]
            for r in system.store("orders").copy_rows(system.charter.copies["order_customers"])
        }
        assert rows[ids[1]] == 1
    finally:
        system.close()


def _kept(system: System, context: str, table: object, fields: list[object]) -> None:
    """The buckets a store keeps, and their upper level, equal the digest recomputed from
    its rows."""
    store = system.store(context)
    length = store.bucket_length(table, fields)  # type: ignore[arg-type]
    assert length is not None
    store.refresh_buckets(table, fields, length)  # type: ignore[arg-type]
    kept = store.bucket_digest(table, fields, [""], length)  # type: ignore[arg-type]
    assert kept == store.digest(table, fields, "", length)  # type: ignore[arg-type]
    ends = store.id_range(table)  # type: ignore[arg-type]
    top = digests.upper_length(ends[0] if ends else "", length)
    upper = store.bucket_digest(table, fields, [""], top)  # type: ignore[arg-type]
    assert upper == store.digest(table, fields, "", top)  # type: ignore[arg-type]


def test_incremental_digests_stay_equal_to_a_full_recomputation(shop: System) -> None:
    """Buckets kept by each database as rows change (triggers, in each write's own
    transaction): after owner writes and copy applies of every kind they equal a digest
    recomputed from the rows, and an incremental check finds what a full one finds."""
    copy = shop.charter.copies["order_customers"]
    entity = shop.charter.entities["Customer"]
    fields: list[object] = [entity.fields[f] for f in copy.fields]
    ids = customers(shop, 40)
    Runner(shop).drain()
    first = reconcile.check(shop, copy, incremental_digests=True)
    assert first.clean and first.incremental
    rename(shop, ids[3], "renamed")
    fresh = customers(shop, 5)
    with shop.context("customers").transaction() as tx:
        tx.delete("Customer", ids[5])
    Runner(shop).drain()
    _kept(shop, "customers", entity, fields)
    _kept(shop, "orders", copy, fields)
    assert reconcile.check(shop, copy, incremental_digests=True).clean
    if shop.charter.contexts["orders"].store.startswith("postgresql://"):
        url = shop.charter.contexts["orders"].store
        base, _, schema = url.partition("?schema=")
        with psycopg.connect(base, autocommit=True) as conn:  # triggers on: a TRUNCATE
            conn.execute("SET charter.guard = 'open'")  # as charter's projector writes it
            conn.execute(f'CREATE TABLE "{schema}".kept AS TABLE "{schema}".order_customers')
            conn.execute(f'TRUNCATE "{schema}".order_customers')
            _kept(shop, "orders", copy, fields)
            conn.execute(f'INSERT INTO "{schema}".order_customers TABLE "{schema}".kept')
            conn.execute(f'DROP TABLE "{schema}".kept')
        _kept(shop, "orders", copy, fields)
    orders = shop.store("orders")
    assert orders.bucket_length(copy, fields[:1]) is None  # other fields: built anew …
    orders.refresh_buckets(copy, fields[:1], 20)  # type: ignore[arg-type]
    assert (
        orders.bucket_digest(copy, fields[:1], [""], 20)
        == orders.digest(  # type: ignore[arg-type]
            copy,
            fields[:1],
            "",
            20,  # type: ignore[arg-type]
        )
    )
    assert orders.bucket_length(copy, fields) is None  # type: ignore[arg-type]  # … theirs gone
    first = reconcile.check(shop, copy, incremental_digests=True)  # built again
    assert first.clean and orders.bucket_length(copy, fields[:1]) is None  # type: ignore[arg-type]
    if is_memory(shop):
        del memory_rows(shop, "order_customers")[fresh[0]]
    else:
        plant(shop, "order_customers", f"DELETE FROM order_customers WHERE id = '{fresh[0]}'")
    with later(3600):
        full = {(f.kind, f.id) for f in reconcile.check(shop, copy).findings}
        quick = {
            (f.kind, f.id) for f in reconcile.check(shop, copy, incremental_digests=True).findings
        }
    assert full == {("missing", fresh[0])}
    if shop.charter.contexts["orders"].store.startswith("postgresql://"):
        assert quick == set()  # planted with every trigger off: only a full check sees it
    else:
        assert quick == full  # SQLite's triggers cannot be turned off: the bucket is dirty
    for context, table in (("customers", entity), ("orders", copy)):
        shop.store(context).drop_buckets(table, fields)  # type: ignore[arg-type]
        assert shop.store(context).bucket_length(table, fields) is None  # type: ignore[arg-type]


WRITER = """
import sys, charter
system = charter.load(sys.argv[1])
n = 0
while True:
    with system.context("customers").transaction() as tx:
        made = tx.create(
            "Customer", email=f"k{sys.argv[2]}.{n}@x.org", name=f"K{n}", password_hash="h"
        )
        if n % 3 == 0:
            tx.update("Customer", made.id, name=f"K{n} again")
    n += 1
    if n == 20:
        print("writing", flush=True)
"""


def test_incremental_digests_survive_kill_9_at_random_moments(tmp_path: Path) -> None:
    """A process writing owner transactions as fast as it can, killed with SIGKILL at a
    random moment, five times: the buckets the database kept equal a full recomputation."""
    import random
    import signal
    import subprocess
    import sys

    urls = SQLITE.urls(tmp_path)
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(**urls))
    system = charter.load(path)
    try:
        entity, copy = system.charter.entities["Customer"], system.charter.copies["order_customers"]
        fields: list[object] = [entity.fields[f] for f in copy.fields]
        customers(system, 10)
        assert reconcile.check(system, copy, incremental_digests=True).complete  # builds them
        for round in range(5):
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(path), str(round)],
                stdout=subprocess.PIPE,
                env={**__import__("os").environ},
            )
            assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
            time.sleep(random.uniform(0.0, 0.3))
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            _kept(system, "customers", entity, fields)
    finally:
        system.close()
        SQLITE.cleanup(urls)


def test_the_command_checks_incrementally_or_in_full(
    shop: System, pair: tuple[Path, dict[str, str]]
) -> None:
    if is_memory(shop):
        pytest.skip("memory: a command in this process sees its own empty system")
    ids = customers(shop, 4)
    Runner(shop).drain()
    args = ["reconcile", "-f", str(pair[0]), "--json", "order_customers"]
    quick = CliRunner().invoke(main, [*args, "--incremental"])
    assert quick.exit_code == 0, quick.output
    assert json.loads(quick.output)[0]["incremental"] is True
    plant(shop, "order_customers", f"DELETE FROM order_customers WHERE id = '{ids[0]}'")
    with later(3600):
        full = CliRunner().invoke(main, [*args, "--full"])
    assert full.exit_code == 5, full.output
    (doc,) = json.loads(full.output)
    assert doc["incremental"] is False and doc["counts"] == {"missing": 1}
