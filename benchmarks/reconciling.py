"""Reconciliation's figures (issue 10, Performance): charter's full check of a copy against
its owner beside the scan floor measured in the same run (one SQL pass summing a per-row
hash over each table, the two at once as charter runs them; and one FULL JOIN of the two)
and beside reladiff 0.6 (hashdiff and joindiff) on the same tables; each must find exactly
the planted differences. PostgreSQL: owner and copy in two schemas of one database. SQLite:
owner and copy in two files (reladiff does not support SQLite); its floor is one pass each
summing a per-row hash through a Python function, as SQLite has none of its own.

    .venv/bin/python benchmarks/run.py --only reconcile            # 1,000,000 rows
    .venv/bin/python benchmarks/reconciling.py --rows 100000        # alone, smaller

The rows are written with each database's own tools (COPY, executemany), past charter, as a
restore would; the differences are planted the same way: rows deleted from the copy (missing),
a value changed at the same version (divergent), a version raised (ahead), ids the owner
never had (extra)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import random
import resource
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

import charter
from charter import reconcile
from charter.system import System

SECTION = "reconcile"
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
CHARTER = """\
charter: 1
name: recon_bench
bus: "sqlite:///{folder}/bus.db"
contexts:
  accounts: {{team: accounts-team, store: "{owner}"}}
  reports:  {{team: reports-team,  store: "{copy}"}}
entities:
  Account:
    owner: accounts
    fields:
      name:    {{type: string}}
      email:   {{type: string}}
      tier:    {{type: integer}}
      balance: {{type: number}}
      active:  {{type: boolean}}
      joined:  {{type: timestamp}}
copies:
  report_accounts:
    in: reports
    of: Account
    fields: [name, email, tier, balance, active, joined]
    window: 1m
"""
FIELDS = ("name", "email", "tier", "balance", "active", "joined")
DAY_MS = 86_400_000


@dataclass
class Figure:
    name: str
    seconds: float
    found: int
    exact: bool
    note: str = ""


def ids(count: int, seed: int = 7) -> list[str]:
    """UUIDv7 ids as charter makes them, `count` of them over one day."""
    rng = random.Random(seed)
    start = 1_760_000_000_000
    made = []
    for n in range(count):
        ms = start + n * DAY_MS // max(count, 1)
        value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64)
        value |= (0b10 << 62) | rng.getrandbits(62)
        made.append(str(uuid.UUID(int=value)))
    return sorted(made)


def row(entity_id: str, n: int) -> tuple[Any, ...]:
    joined = (
        f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00.{n % 999999:06d}Z"
    )
    return (entity_id, 1 + n % 3, f"Name {n}", f"c{n}@x.org", n % 7, n * 1.25, n % 2 == 0, joined)


@dataclass
class Plan:
    """What was planted in the copy: ids by kind."""

    missing: list[str]
    divergent: list[str]
    ahead: list[str]
    extra: list[str]

    @property
    def all(self) -> set[str]:
        return {*self.missing, *self.divergent, *self.ahead, *self.extra}


def plan(made: list[str], differences: int, seed: int = 11) -> Plan:
    rng = random.Random(seed)
    picked = rng.sample(made, 3 * (differences // 4))
    quarter = differences // 4
    extra_ids = sorted(
        str(uuid.UUID(int=uuid.UUID(i).int + 1))
        for i in rng.sample(made, differences - 3 * quarter)
    )
    return Plan(picked[:quarter], picked[quarter : 2 * quarter], picked[2 * quarter :], extra_ids)


# -- PostgreSQL -------------------------------------------------------------------------


class PostgresPair:
    """Owner and copy in two schemas of one database, written past charter."""

    def __init__(self, folder: Path, rows: int, differences: int) -> None:
        tag = uuid.uuid4().hex[:8]
        self.owner_schema, self.copy_schema = f"rb_{tag}_accounts", f"rb_{tag}_reports"
        path = folder / "charter.yaml"
        path.write_text(
            CHARTER.format(
                folder=folder,
                owner=f"{PG}?schema={self.owner_schema}",
                copy=f"{PG}?schema={self.copy_schema}",
            )
        )
        self.system = charter.load(path)
        self.system.store("accounts")
        self.system.store("reports")
        self.rows, made = rows, ids(rows)
        self.planted = plan(made, differences)
        self.owner_table = f'"{self.owner_schema}".account'
        self.copy_table = f'"{self.copy_schema}".report_accounts'
        self._fill(made)

    def _fill(self, made: list[str]) -> None:
        columns = ", ".join(["id", "version", *FIELDS])
        p = self.planted
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            with conn.cursor().copy(f"COPY {self.owner_table} ({columns}) FROM STDIN") as copy:
                for n, entity_id in enumerate(made):
                    copy.write_row(row(entity_id, n))
            conn.execute(
                f"INSERT INTO {self.copy_table} ({columns}, synced_at) "
                f"SELECT {columns}, '2024-01-01T00:00:00.000000Z' FROM {self.owner_table}"
            )
            conn.execute(f"DELETE FROM {self.copy_table} WHERE id = ANY(%s)", (p.missing,))
            conn.execute(
                f"UPDATE {self.copy_table} SET name = name || ' (past charter)' WHERE id = ANY(%s)",
                (p.divergent,),
            )
            conn.execute(
                f"UPDATE {self.copy_table} SET version = version + 1 WHERE id = ANY(%s)",
                (p.ahead,),
            )
            for n, entity_id in enumerate(p.extra):
                conn.execute(
                    f"INSERT INTO {self.copy_table} ({columns}, synced_at) VALUES "
                    f"(%s, %s, %s, %s, %s, %s, %s, %s, 'then')",
                    row(entity_id, n),
                )
            conn.execute(f"VACUUM ANALYZE {self.owner_table}")
            conn.execute(f"VACUUM ANALYZE {self.copy_table}")

    def close(self) -> None:
        self.system.close()
        with psycopg.connect(PG, autocommit=True) as conn:
            for schema in (self.owner_schema, self.copy_schema):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]


def charter_check(system: System, planted: set[str]) -> Figure:
    copy = system.charter.copies["report_accounts"]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()  # no tracemalloc: it slowed SQLite's hashing eightfold
    report = reconcile.check(system, copy, budget_s=600)
    took = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    found = {f.id for f in report.findings}
    note = (
        f"{report.ranges:,} groups compared, {report.rows:,} rows read, "
        f"peak RSS grew {grown / 1024:.1f} MB; {report.counts}"
    )
    assert not report.error, report.error
    return Figure("charter full check", took, len(found), found == planted, note)


def pg_floor_hash(pair: PostgresPair, parallel: bool = False, native: bool = False) -> Figure:
    """One pass over each table summing a per-row md5 (first 64 bits) of its columns' text,
    both at once (as charter runs its two sides); one backend each, as charter's grouped
    pass gets (PostgreSQL plans no parallel workers for it: it takes every id prefix for
    distinct), unless `parallel`. `native`: PostgreSQL's own hash of the row instead
    (hash_record_extended, what charter digests two PostgreSQL sides by)."""
    columns = ", ".join(["id", "version", *FIELDS])
    query = "SELECT count(*), sum(('x' || left(md5(concat({c})), 16))::bit(64)::bigint) FROM {t}"
    if native:
        query = "SELECT count(*), sum(hash_record_extended(ROW({c}), 0)) FROM {t}"

    def one(table: str) -> Any:
        with psycopg.connect(PG) as conn:
            if not parallel:
                conn.execute("SET max_parallel_workers_per_gather = 0")
            return conn.execute(query.format(c=columns, t=table)).fetchone()  # type: ignore[arg-type]

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, [pair.owner_table, pair.copy_table]))
    took = time.perf_counter() - started
    differ = results[0] != results[1]
    name = "scan floor: hash pass" + (", parallel" if parallel else "")
    name += ", PostgreSQL's own hash" if native else ""
    return Figure(name, took, 0, differ, "finds no ids, only that they differ")


def pg_floor_join(pair: PostgresPair) -> Figure:
    cols = ["version", *FIELDS]
    differs = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in cols)
    query = (
        f"SELECT coalesce(a.id, b.id) FROM {pair.owner_table} a FULL JOIN {pair.copy_table} b "
        f"ON a.id = b.id WHERE a.id IS NULL OR b.id IS NULL OR {differs}"
    )
    started = time.perf_counter()
    with psycopg.connect(PG) as conn:
        found = {r[0] for r in conn.execute(query)}  # type: ignore[call-overload]
    took = time.perf_counter() - started
    return Figure("scan floor: one FULL JOIN", took, len(found), found == pair.planted.all)


def reladiff_figure(pair: PostgresPair, algorithm: str) -> Figure:
    try:
        from reladiff import Algorithm, connect_to_table, diff_tables
    except ImportError as exc:
        return Figure(f"reladiff {algorithm}", 0.0, 0, False, f"not installed: {exc}")
    uri = PG
    started = time.perf_counter()
    columns = ("version", *FIELDS)
    a = connect_to_table(uri, (pair.owner_schema, "account"), "id", extra_columns=columns)
    b = connect_to_table(uri, (pair.copy_schema, "report_accounts"), "id", extra_columns=columns)
    how = Algorithm.HASHDIFF if algorithm == "hashdiff" else Algorithm.JOINDIFF
    try:
        found = {key[0] for _, key in _keys(diff_tables(a, b, algorithm=how))}
        took = time.perf_counter() - started
    finally:
        for side in (a, b):  # else an idle transaction holds the schemas
            with contextlib.suppress(Exception):
                side.database.close()
    return Figure(f"reladiff {algorithm}", took, len(found), found == pair.planted.all)


def _keys(diffs: Iterator[tuple[str, tuple[Any, ...]]]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    for sign, values in diffs:
        yield sign, (str(values[0]),)


def incremental_figures(
    system: System,
    planted: set[str],
    say: Callable[[str], None],
    heal: Callable[[], None] | None = None,
    costs: bool = True,
) -> list[str]:
    """The incremental check: its first run builds the buckets (a full pass each side),
    then a check of the unchanged copy (its planted differences still there); with `heal`
    (which puts the copy right past charter, triggers on) a check of a copy that differs
    in nothing; and what keeping them costs an owner write and a copy apply, beside the
    same without them (rounds alternating)."""
    copy = system.charter.copies["report_accounts"]
    entity = system.charter.entities["Account"]
    out = []
    started = time.perf_counter()
    report = reconcile.check(system, copy, budget_s=600, incremental_digests=True)
    built = time.perf_counter() - started
    found = {f.id for f in report.findings}
    out.append(
        f"  charter incremental, first (builds the buckets) {built:7.2f} s; found "
        f"{len(found)} ({'exact' if found == planted else 'NOT EXACT'})"
    )
    times = []
    for _ in range(3):
        started = time.perf_counter()
        report = reconcile.check(system, copy, budget_s=600, incremental_digests=True)
        times.append(time.perf_counter() - started)
        found = {f.id for f in report.findings}
    out.append(
        f"  charter incremental, unchanged copy: best {min(times) * 1000:.0f} ms of 3 "
        f"({', '.join(f'{t * 1000:.0f}' for t in times)} ms); {report.ranges:,} buckets and "
        f"groups compared, {report.rows} rows read; found {len(found)} "
        f"({'exact' if found == planted else 'NOT EXACT'})"
    )
    if heal is not None:
        heal()
        times, counts = [], ""
        for _ in range(3):
            started = time.perf_counter()
            report = reconcile.check(system, copy, budget_s=600, incremental_digests=True)
            times.append(time.perf_counter() - started)
            counts = f"{report.ranges:,} buckets and groups compared, {report.rows} rows read"
            assert report.clean, report.as_json()
        out.append(
            f"  charter incremental, the copy put right (its {len(planted)} buckets dirty, "
            f"then none): {', '.join(f'{t * 1000:.0f}' for t in times)} ms; {counts}"
        )
    if costs:
        out += write_costs(system, entity, copy)
    for line in out:
        say(line)
    return out


def write_costs(system: System, entity: Any, copy: Any, rounds: int = 4, n: int = 300) -> list[str]:
    """µs per owner write (a one-record transaction) and per applied change (batches of
    100), with the buckets kept (their triggers) and without, rounds alternating. Each
    round starts with writes and applies not timed: a trigger made or dropped makes every
    pooled connection plan its statements again (and compile the trigger's function),
    which the first rounds measured as the trigger's cost."""
    from charter.events import Event
    from charter.ids import uuid7
    from charter.values import now_text

    fields = [entity.fields[f] for f in copy.fields]
    owner, store = system.store("accounts"), system.store("reports")
    length = owner.bucket_length(entity, fields) or 9
    context = system.context("accounts")
    written = {True: [], False: []}  # type: dict[bool, list[float]]
    applied = {True: [], False: []}  # type: dict[bool, list[float]]
    position = 10_000_000
    for number in range(rounds * 2):
        kept = number % 2 == 0
        for side, table in ((owner, entity), (store, copy)):
            if kept:
                side.refresh_buckets(table, fields, length)
            else:
                side.drop_buckets(table, fields)
        if owner.__class__.__name__.startswith("Postgres"):
            # building the buckets writes a row a bucket (340,000 at 1M rows): the WAL it
            # leaves made the next commits wait on a checkpoint, +1,163 µs a write in the
            # rounds with the buckets; both kinds of round start after one
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
        for k in range(50):  # warm every pooled connection after the DDL
            with context.transaction() as tx:
                tx.create(
                    "Account",
                    name=f"warm{k}",
                    email=f"warm{number}.{k}@x.org",
                    tier=1,
                    balance=1.0,
                    active=True,
                    joined="2025-01-01T00:00:00.000000Z",
                )
        warm = [(position + i + 1, _event(uuid7, Event, now_text)) for i in range(100)]
        store.apply(copy, warm, [], warm[-1][0])
        position += len(warm)
        started = time.perf_counter()
        for k in range(n):
            with context.transaction() as tx:
                tx.create(
                    "Account",
                    name=f"W{number}.{k}",
                    email=f"w{number}.{k}@x.org",
                    tier=1,
                    balance=1.0,
                    active=True,
                    joined="2025-01-01T00:00:00.000000Z",
                )
        written[kept].append((time.perf_counter() - started) / n * 1e6)
        events = [_event(uuid7, Event, now_text) for _ in range(n * 3)]
        started = time.perf_counter()
        for at in range(0, len(events), 100):
            batch = [(position + i + 1, e) for i, e in enumerate(events[at : at + 100])]
            store.apply(copy, batch, [], batch[-1][0])
            position += len(batch)
        applied[kept].append((time.perf_counter() - started) / len(events) * 1e6)
    owner.refresh_buckets(entity, fields, length)
    store.refresh_buckets(copy, fields, length)

    def text(label: str, found: dict[bool, list[float]]) -> str:
        on, off = statistics.median(found[True]), statistics.median(found[False])
        return (
            f"  {label}: {on:.1f} µs with the buckets kept, {off:.1f} µs without: "
            f"+{on - off:.1f} µs per change per copy (medians of {rounds} rounds each)"
        )

    return [
        text("owner write (one-record transaction)", written),
        text("copy apply (batches of 100)", applied),
    ]


def pg_trigger_costs(pair: PostgresPair, batches: int = 40, per: int = 50) -> list[str]:
    """What the buckets' triggers cost on the server, where the time is spent and the
    machine's noise is least: inside one plpgsql function, batches of `per` statements,
    the fastest batch of `batches` (a batch another process interrupted is slower, never
    faster), with the buckets kept and without, alternating. The owner: one-row INSERTs
    into its table (row triggers); the copy: INSERTs of 100 rows a statement (statement
    triggers). Rolled back: the tables stay as they were."""
    system, entity = pair.system, pair.system.charter.entities["Account"]
    copy = system.charter.copies["report_accounts"]
    fields = [entity.fields[f] for f in copy.fields]
    columns = ", ".join(["id", "version", *FIELDS])
    values = "1, 'Name', 'a@x.org', 1, 1.0, true, now()"
    one = f"INSERT INTO {pair.owner_table} ({columns}) VALUES (gen_random_uuid()::text, {values})"
    many = (
        f"INSERT INTO {pair.copy_table} ({columns}, synced_at) SELECT gen_random_uuid()::text, "
        f"{values}, 'then' FROM generate_series(1, 100)"
    )
    function = """CREATE OR REPLACE FUNCTION pg_temp.charter_bench(batches int, per int, q text)
    RETURNS float8 LANGUAGE plpgsql AS $b$
    DECLARE best float8 := 1e9; t0 timestamptz; took float8;
    BEGIN FOR b IN 1..batches LOOP
      t0 := clock_timestamp();
      FOR i IN 1..per LOOP EXECUTE q; END LOOP;
      took := extract(epoch FROM clock_timestamp() - t0) * 1e6 / per;
      IF took < best THEN best := took; END IF;
    END LOOP; RETURN best; END $b$"""
    owner, store = system.store("accounts"), system.store("reports")
    length = owner.bucket_length(entity, fields)
    found: dict[tuple[str, bool], list[float]] = {}
    for number in range(6):
        kept = number % 2 == 0
        for side, table in ((owner, entity), (store, copy)):
            if kept and length is not None:
                side.refresh_buckets(table, fields, length)
            else:
                side.drop_buckets(table, fields)
        with psycopg.connect(PG) as conn:
            conn.execute("SET charter.guard = 'open'")
            conn.execute(function)  # type: ignore[arg-type]
            # the copy's rows are fewer statements: each round leaves its rows behind as
            # dead tuples, and a table that grows between rounds slows the later ones
            for name, query, rows, times in (
                ("owner", one, 1, (batches, per)),
                ("copy", many, 100, (max(batches // 4, 1), max(per // 5, 1))),
            ):
                (best,) = conn.execute(
                    "SELECT pg_temp.charter_bench(%s, %s, %s)", (*times, query)
                ).fetchone()  # type: ignore[misc]
                found.setdefault((name, kept), []).append(best / rows)
            conn.rollback()
    if length is not None:
        owner.refresh_buckets(entity, fields, length)
        store.refresh_buckets(copy, fields, length)
    out = []
    for name, label in (
        ("owner", "an owner's one-row INSERT"),
        ("copy", "a copy's row, 100 a statement"),
    ):
        on, off = min(found[(name, True)]), min(found[(name, False)])
        out.append(
            f"  on the server, {label}: {on:.1f} µs with the buckets kept, {off:.1f} µs "
            f"without: {on - off:+.1f} µs a row (the fastest batch, 3 rounds each)"
        )
    return out


def _event(uuid7: Any, event: Any, now_text: Any) -> Any:
    state = {
        "name": "A",
        "email": "a@x.org",
        "tier": 1,
        "balance": 1.0,
        "active": True,
        "joined": "2025-01-01T00:00:00.000000Z",
    }
    return event(uuid7(), "Account", uuid7(), 1, "created", FIELDS, state, "accounts", now_text())


def pg_heal(pair: PostgresPair) -> None:
    """Put the copy right past charter (as charter's projector may write it: triggers on),
    so it differs from the owner in nothing and the buckets of those rows are dirty."""
    p, columns = pair.planted, ", ".join(["id", "version", *FIELDS])
    wrong = [*p.missing, *p.divergent, *p.ahead]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute("SET charter.guard = 'open'")
        conn.execute(f"DELETE FROM {pair.copy_table} WHERE id = ANY(%s)", (wrong + p.extra,))
        conn.execute(
            f"INSERT INTO {pair.copy_table} ({columns}, synced_at) SELECT {columns}, 'then' "
            f"FROM {pair.owner_table} WHERE id = ANY(%s)",
            (wrong,),
        )


# -- SQLite -----------------------------------------------------------------------------


class SQLitePair:
    """Owner and copy in two SQLite files, written past charter (the guard's mark)."""

    def __init__(self, folder: Path, rows: int, differences: int) -> None:
        self.owner_path, self.copy_path = folder / "accounts.db", folder / "reports.db"
        path = folder / "charter.yaml"
        path.write_text(
            CHARTER.format(
                folder=folder,
                owner=f"sqlite:///{self.owner_path}",
                copy=f"sqlite:///{self.copy_path}",
            )
        )
        self.system = charter.load(path)
        self.system.store("accounts")
        self.system.store("reports")
        made = ids(rows)
        self.planted = plan(made, differences)
        self._fill(made)

    def _fill(self, made: list[str]) -> None:
        columns = ", ".join(["id", "version", *FIELDS])
        marks = ", ".join("?" for _ in range(2 + len(FIELDS)))
        p = self.planted
        for path, table in ((self.owner_path, "account"), (self.copy_path, "report_accounts")):
            conn = sqlite3.connect(path)
            try:
                conn.execute("PRAGMA cache_size=-8191")  # the guard's mark: past charter
                rows = (row(i, n) for n, i in enumerate(made))
                if table == "account":
                    conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
                else:
                    conn.executemany(
                        f"INSERT INTO {table} ({columns}, synced_at) VALUES ({marks}, 'then')",
                        (
                            (
                                *r[:2],
                                r[2] + (" (past charter)" if r[0] in p.divergent else ""),
                                *r[3:],
                            )
                            if r[0] not in p.ahead
                            else (r[0], r[1] + 1, *r[2:])
                            for r in rows
                            if r[0] not in p.missing
                        ),
                    )
                    conn.executemany(
                        f"INSERT INTO {table} ({columns}, synced_at) VALUES ({marks}, 'then')",
                        (row(i, n) for n, i in enumerate(p.extra)),
                    )
                conn.commit()
            finally:
                conn.close()

    def close(self) -> None:
        self.system.close()


def sqlite_floor(pair: SQLitePair) -> Figure:
    """One pass over each table summing a per-row md5 of its values' text (a Python
    function: SQLite has no hash), the two at once."""
    import hashlib

    def floor_hash(*values: Any) -> int:
        digest = hashlib.md5("|".join(map(str, values)).encode()).digest()
        return int.from_bytes(digest[:8], signed=True)

    columns = ", ".join(["id", "version", *FIELDS])

    def one(target: tuple[Path, str]) -> Any:
        conn = sqlite3.connect(target[0])
        try:
            conn.create_function("floor_hash", -1, floor_hash, deterministic=True)
            return conn.execute(
                f"SELECT count(*), total(floor_hash({columns})) FROM {target[1]}"
            ).fetchone()
        finally:
            conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(one, [(pair.owner_path, "account"), (pair.copy_path, "report_accounts")])
        )
    took = time.perf_counter() - started
    return Figure("scan floor: one hash pass", took, 0, results[0] != results[1], "finds no ids")


# -- the run ----------------------------------------------------------------------------


def lines(title: str, figures: list[Figure], floor: float, peer: float | None) -> list[str]:
    out = [title]
    for f in figures:
        ratio = f" = {f.seconds / floor:.2f}x the hash floor" if floor else ""
        versus = (
            f", {peer / f.seconds:.1f}x faster than reladiff hashdiff"
            if peer and f.name.startswith("charter")
            else ""
        )
        exact = "exact" if f.exact else "NOT EXACT"
        out.append(
            f"  {f.name:<28} {f.seconds:7.2f} s{ratio}{versus}; found {f.found} ({exact}) {f.note}"
        )
    return out


def run_postgres(
    rows: int,
    differences: int,
    say: Callable[[str], None],
    incremental_only: bool = False,
    costs: bool = True,
) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="charter-recon-") as folder:
        started = time.perf_counter()
        pair = PostgresPair(Path(folder), rows, differences)
        say(f"  PostgreSQL: {rows:,} rows written in {time.perf_counter() - started:.1f} s")
        if incremental_only:  # the largest tables: the incremental figures alone
            try:
                text = [
                    f"PostgreSQL, owner and copy in two schemas, {rows:,} rows, "
                    f"{differences} differences: the incremental check",
                    *incremental_figures(
                        pair.system,
                        pair.planted.all,
                        lambda line: None,
                        lambda: pg_heal(pair),
                        costs,
                    ),
                    *(pg_trigger_costs(pair) if costs else []),
                ]
            finally:
                pair.close()
            for line in text:
                say(line)
            return text
        try:
            planted = pair.planted.all
            figures = [
                charter_check(pair.system, planted),
                pg_floor_hash(pair),
                pg_floor_join(pair),
            ]
            figures += [reladiff_figure(pair, "hashdiff"), reladiff_figure(pair, "joindiff")]
            figures.append(pg_floor_hash(pair, parallel=True))
            figures.append(pg_floor_hash(pair, native=True))
            again = charter_check(pair.system, planted)  # after the peers
            extra = incremental_figures(
                pair.system, planted, lambda line: None, lambda: pg_heal(pair)
            )
            extra += pg_trigger_costs(pair)
        finally:
            pair.close()
    figures[0].seconds = min(figures[0].seconds, again.seconds)
    hashdiff = figures[3].seconds or None
    own = (
        f"  charter full check = {figures[0].seconds / figures[-1].seconds:.2f}x the floor of "
        "PostgreSQL's own row hash (what it digests two PostgreSQL sides by)"
    )
    title = (
        f"PostgreSQL, owner and copy in two schemas, {rows:,} rows, {differences} differences "
        "(charter: the better of two runs, before and after the peers)"
    )
    text = [*lines(title, figures, figures[1].seconds, hashdiff), own, *extra]
    for line in text:
        say(line)
    return text


def run_sqlite(rows: int, differences: int, say: Callable[[str], None]) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="charter-recon-") as folder:
        started = time.perf_counter()
        pair = SQLitePair(Path(folder), rows, differences)
        say(f"  SQLite: {rows:,} rows written in {time.perf_counter() - started:.1f} s")
        try:
            figures = [charter_check(pair.system, pair.planted.all), sqlite_floor(pair)]
            extra = incremental_figures(pair.system, pair.planted.all, lambda line: None)
        finally:
            pair.close()
    text = (
        lines(
            f"SQLite owner and SQLite copy, {rows:,} rows, {differences} differences "
            "(reladiff does not support SQLite)",
            figures,
            figures[1].seconds,
            None,
        )
        + extra
    )
    for line in text:
        say(line)
    return text


def run(rows: int, differences: int, say: Callable[[str], None] = print) -> list[str]:
    return run_postgres(rows, differences, say) + run_sqlite(rows, differences, say)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--differences", type=int, default=100)
    parser.add_argument("--only", choices=["postgres", "sqlite"])
    parser.add_argument(
        "--incremental-only",
        action="store_true",
        help="PostgreSQL: the incremental figures alone (for 10,000,000 rows: "
        "--only postgres --rows 10000000 --differences 10 --incremental-only)",
    )
    parser.add_argument(
        "--no-costs",
        action="store_true",
        help="with --incremental-only: not what the buckets cost writes (each round with "
        "them builds them again: a full pass of each table)",
    )
    args = parser.parse_args()
    say = functools.partial(print, flush=True)
    if args.only != "sqlite":
        run_postgres(args.rows, args.differences, say, args.incremental_only, not args.no_costs)
    if args.only != "postgres":
        run_sqlite(args.rows, args.differences, say)


if __name__ == "__main__":
    main()
