"""What bounding a reconciliation's first pass costs and how soon it stops (issue 10): one
side's first digest pass (Store.digest over the whole table) without a deadline, with one an
hour away (SQLite's progress handler installed, PostgreSQL's statement_timeout set: the
cost of the bound when it never fires), and with one 0.1 s away (how long the pass takes
to stop); and a whole `reconcile.check` with a 0.1 s budget. Rounds take turns.

    .venv/bin/python benchmarks/budget.py [--rows 1000000] [--rounds 3]"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path

import psycopg

import charter
from charter import clock, reconcile
from charter.errors import OutOfTimeError
from charter.reconcile import compare, prefixes
from charter.system import System

PG = "postgresql://postgres@127.0.0.1:5432/postgres"
CHARTER = """\
charter: 1
name: budget_bench
bus: "sqlite:///{folder}/bus.db"
contexts:
  owner: {{team: a, store: "{owner}"}}
  copy:  {{team: b, store: "{copy}"}}
entities:
  Account:
    owner: owner
    fields:
      name:  {{type: string}}
      email: {{type: string}}
copies:
  account_copy: {{in: copy, of: Account, fields: [name, email], window: 5s}}
"""
# UUIDv7-shaped ids, 86 ms apart (a day for a million)
ID_SQLITE = "substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7000-8000-' || printf('%012x', i)"
ROWS_SQLITE = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}), "
    "m AS (SELECT i, printf('%012x', 1767225600000 + i * 86) AS h FROM n) "
    f"INSERT INTO {{table}} (id, version, name, email{{extra}}) SELECT {ID_SQLITE}, 1, "
    "'N' || i, 'e' || i || '@x.org'{value} FROM m"
)
ROWS_PG = (
    "SET session_replication_role = replica; "
    "INSERT INTO {table} (id, version, name, email{extra}) "
    "SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7000-8000-' || lpad(to_hex(i), 12, "
    "'0'), 1, 'N' || i, 'e' || i || '@x.org'{value} FROM (SELECT i, lpad(to_hex(1767225600000 "
    "+ i * 86), 12, '0') AS h FROM generate_series(1, {n}) AS i) AS m; ANALYZE {table}"
)


def build(kind: str, folder: Path, rows: int) -> tuple[System, Callable[[], None]]:
    if kind == "sqlite":
        owner, copy = f"sqlite:///{folder}/owner.db", f"sqlite:///{folder}/copy.db"
    else:
        schema = "b" + uuid.uuid4().hex[:10]
        owner, copy = f"{PG}?schema={schema}_o", f"{PG}?schema={schema}_c"
    (folder / "charter.yaml").write_text(CHARTER.format(folder=folder, owner=owner, copy=copy))
    system = charter.load(folder / "charter.yaml")
    system.store("owner"), system.store("copy")
    for context, table, extra, value in (
        ("owner", "account", "", ""),
        ("copy", "account_copy", ", synced_at", ", '2026-01-01T00:00:00Z'"),
    ):
        if kind == "sqlite":
            sql = ROWS_SQLITE.format(n=rows, table=table, extra=extra, value=value)
            with closing(sqlite3.connect(folder / f"{context}.db")) as conn:
                conn.execute("PRAGMA cache_size=-8191")  # charter's mark: past the guard
                conn.execute(sql)
                conn.commit()
        else:
            name = f'"{schema}_{"o" if context == "owner" else "c"}".{table}'
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(ROWS_PG.format(n=rows, table=name, extra=extra, value=value))  # type: ignore[arg-type]

    def drop() -> None:
        system.close()
        if kind != "sqlite":
            with psycopg.connect(PG, autocommit=True) as conn:
                for side in ("o", "c"):
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_{side}" CASCADE')  # type: ignore[arg-type]

    return system, drop


def measure(kind: str, rows: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        system, drop = build(kind, Path(tmp), rows)
        try:
            entity, copy = system.charter.entities["Account"], system.charter.copies["account_copy"]
            fields = [entity.fields[n] for n in copy.fields]
            store = system.store("owner")
            ends = store.id_range(entity)
            assert ends is not None
            length = prefixes.first_length(ends[0], ends[1], compare.FIRST_PARTS)
            times: dict[str, list[float]] = {}

            def timed(name: str, work: Callable[[], object]) -> None:
                began = time.perf_counter()
                with suppress(OutOfTimeError):
                    work()
                times.setdefault(name, []).append(time.perf_counter() - began)

            for _ in range(rounds):
                timed("pass", lambda: store.digest(entity, fields, "", length))
                timed(
                    "pass, deadline 1 h away",
                    lambda: store.digest(entity, fields, "", length, clock.monotonic() + 3600),
                )
                timed(
                    "pass, deadline 0.1 s away",
                    lambda: store.digest(entity, fields, "", length, clock.monotonic() + 0.1),
                )
                timed("check, budget 0.1 s", lambda: reconcile.check(system, copy, 0.1))
            base = statistics.median(times["pass"])
            for name, seen in times.items():
                mid = statistics.median(seen)
                print(
                    f"{kind:7} {rows:>9,} rows  {name:28} median {mid * 1000:8.1f} ms "
                    f"({mid / base:.3f}x the pass; {', '.join(f'{s * 1000:.0f}' for s in seen)})"
                )
        finally:
            drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("sqlite", "postgres"), default=None)
    args = parser.parse_args()
    for kind in ("sqlite", "postgres"):
        if args.only in (None, kind):
            measure(kind, args.rows, args.rounds)


if __name__ == "__main__":
    main()
