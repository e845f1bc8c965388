"""Continuous reconciliation under load (issue 10, point 3): an owner writing at full speed
while `charter run` (a process of its own) keeps two copies and checks each of them against
the owner about every second (`reconcile: 1s`, `repair: [missing, stale, extra]`).

Three phases, one after the other: 30 s with the reconciler off, 60 s with it on, 30 s off
again (the rate "without" is the mean of the two, so a machine getting busier or quieter
weighs on both sides alike). Printed: the checks done during the 60 s (each copy's last
check as `charter_drift` holds it, read every 0.1 s), how many were complete, the ids they
found in flight, the drift they found (must be 0: rows on their way are in flight, not
drift), what the reconciler repaired (must be nothing), the owner's write rate with and
without it as a ratio, the copies' largest lag seen (status, every 0.5 s: the copies must
stay within their windows for "stale" to mean anything), and the `charter run` process's
resident memory sampled every 0.5 s over the 60 s (VmRSS: it must stay flat).

    .venv/bin/python benchmarks/continuous.py                  # SQLite, ~2.5 minutes
    .venv/bin/python benchmarks/continuous.py --postgres       # PostgreSQL stores + NATS
    .venv/bin/python benchmarks/continuous.py --on 10 --off 5  # a short run
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import ChangeMaker, alive, charter_run

import charter
from charter import reconcile
from charter.records import Drift
from charter.runner import Runner
from charter.status import copy_status
from charter.system import System
from charter.values import now_text

CHARTER = """\
charter: 1
name: {name}
bus: "{bus}"
{schedule}contexts:
  customers: {{team: customer-team, store: "{customers}"}}
  orders:    {{team: order-team,    store: "{orders}"}}
  mailing:   {{team: mailing-team,  store: "{mailing}"}}
entities:
  Customer:
    owner: customers
    fields:
      name:  {{type: string}}
      email: {{type: string, unique: true}}
copies:
  order_customers:
    in: orders
    of: Customer
    fields: [name, email]
    window: 5s
  mailing_customers:
    in: mailing
    of: Customer
    fields: [email]
    window: 5s
"""
SCHEDULE = "reconcile: 1s\nrepair: [missing, stale, extra]\n"
PER_TRANSACTION = 10
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
NATS = "nats://127.0.0.1:4222"


def urls(folder: Path, postgres: bool, pg: str, nats: str) -> dict[str, str]:
    if not postgres:
        found = {c: f"sqlite:///{folder}/{c}.db" for c in ("customers", "orders", "mailing")}
        return {**found, "bus": f"sqlite:///{folder}/bus.db", "name": "bench"}
    prefix = "bench" + uuid.uuid4().hex[:8]
    found = {c: f"{pg}?schema={prefix}_{c}" for c in ("customers", "orders", "mailing")}
    return {**found, "bus": nats, "name": prefix, "prefix": prefix}


def write_charter(folder: Path, where: dict[str, str], on: bool) -> None:
    text = CHARTER.format(schedule=SCHEDULE if on else "", **where)
    (folder / "charter.yaml").write_text(text)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Watch:
    """What a phase saw: the checks recorded (by copy and time), lags, memory."""

    checks: dict[tuple[str, str], Drift] = field(default_factory=dict)
    complete: int = 0
    drift: int = 0
    in_flight: int = 0
    repaired: int = 0
    drifted: list[str] = field(default_factory=list)
    lag_s: float = 0.0
    rss: list[float] = field(default_factory=list)
    rate: float = 0.0  # the owner's changes a second
    since: str = field(default_factory=now_text)  # checks made before are not this phase's


def watch(system: System, pid: int, stop: threading.Event, seen: Watch) -> None:
    """Every 0.1 s, each copy's last check (charter_drift); every 0.5 s the copies' lag and
    the runner's memory."""
    copies = list(system.charter.copies.values())
    ticks = 0
    while not stop.wait(0.1):
        for copy in copies:
            last = system.store(copy.context).drift(copy)
            if last is None or (copy.name, last.checked_at) in seen.checks:
                continue
            if last.checked_at < seen.since:  # a check of the phase before
                continue
            seen.checks[(copy.name, last.checked_at)] = last
            seen.complete += 1 if last.complete and not last.error else 0
            seen.drift += last.rows
            seen.in_flight += last.counts.get("in_flight", 0)
            seen.repaired += sum((last.repaired or {}).values())
            if last.rows:
                seen.drifted.append(f"{copy.name} at {last.checked_at}: {last.counts}")
        ticks += 1
        if ticks % 5 == 0:
            for copy in copies:
                seen.lag_s = max(seen.lag_s, copy_status(system, copy).lag_s)
            memory = rss_mb(pid)
            if memory is not None:
                seen.rss.append(memory)


def phase(folder: Path, system: System, maker: ChangeMaker, seconds: float, on: bool) -> Watch:
    """Write at full speed for `seconds` while a `charter run` of its own runs (with the
    reconciler `on` or not); the owner's rate and what the watch saw."""
    seen = Watch()
    with charter_run(folder) as proc:
        check = alive(proc, folder)
        time.sleep(2.0)  # the process up, its stores open
        check()
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(system, proc.pid, stop, seen))
        watcher.start()
        start, written = time.perf_counter(), 0
        try:
            while time.perf_counter() - start < seconds:
                maker.batch(PER_TRANSACTION)
                written += PER_TRANSACTION
            rate = written / (time.perf_counter() - start)
            check()
            runner = Runner(system, [])  # nothing runs here: only to wait on the copies
            synced = runner.wait_until_synced(120)
            for copy in system.charter.copies.values():
                after = reconcile.check(system, copy)
                print(f"    after: {copy.name}: {'clean' if after.clean else after.counts}")
        finally:
            stop.set()
            watcher.join()
    print(
        f"  {'on ' if on else 'off'} {seconds:4.0f} s: owner {rate:,.0f} changes/s "
        f"({written:,} changes), copies synced after: {synced}, largest lag "
        f"{seen.lag_s:.2f} s, checks {len(seen.checks)}",
        flush=True,
    )
    seen.rate = rate
    return seen


def explain(system: System, report: reconcile.Report) -> None:
    """Drift after the run: is it in the copy's file, read by a connection of its own (not
    this process's), or only in what this process read?"""
    copy = system.charter.copies[report.copy]
    print(f"  drift after the run in {report.copy}: {report.counts}")
    url = system.charter.contexts[copy.context].store
    if not url.startswith("sqlite:///"):
        return
    import sqlite3

    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        for finding in report.findings[:5]:
            held = conn.execute(
                f'SELECT version FROM "{copy.table}" WHERE id = ?', (finding.id,)
            ).fetchone()
            print(
                f"    {finding.kind} {finding.id}: owner v{finding.owner_version}, copy (as "
                f"checked) v{finding.copy_version}, copy (a fresh connection) {held}"
            )
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--on", type=float, default=60.0, help="seconds with the reconciler")
    parser.add_argument("--off", type=float, default=30.0, help="seconds of each phase without")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL stores, NATS bus")
    parser.add_argument("--pg", default=PG)
    parser.add_argument("--nats", default=NATS)
    parser.add_argument("--keep", action="store_true", help="keep the SQLite files")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="charter-continuous-"))
    where = urls(folder, args.postgres, args.pg, args.nats)
    load = os.getloadavg()[0]
    print(
        "continuous reconciliation under load: "
        f"{'PostgreSQL + NATS' if args.postgres else 'SQLite'}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load (1 min) {load:.1f}",
        flush=True,
    )
    try:
        write_charter(folder, where, on=True)
        system = charter.load(folder / "charter.yaml")
        try:
            maker = ChangeMaker(system.context("customers"))
            maker.write(10_000, 100)  # something to check from the start
            Runner(system).drain()
            phases = []
            for on, seconds in ((False, args.off), (True, args.on), (False, args.off)):
                write_charter(folder, where, on)
                phases.append((on, phase(folder, system, maker, seconds, on)))
            write_charter(folder, where, on=True)
            final = [reconcile.check(system, c) for c in system.charter.copies.values()]
            for report in final:
                if not report.clean:
                    args.keep = True  # to look at
                    explain(system, report)
        finally:
            system.close()
    finally:
        if args.postgres:
            import psycopg

            with psycopg.connect(args.pg, autocommit=True) as conn:
                for c in ("customers", "orders", "mailing"):
                    conn.execute(f'DROP SCHEMA IF EXISTS "{where["prefix"]}_{c}" CASCADE')
            from charter.buses.nats import NatsBus

            NatsBus.delete_stream(args.nats, where["name"])
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    on_seen = phases[1][1]
    off_rates = [p.rate for on, p in phases if not on]
    on_rate = on_seen.rate
    rss = on_seen.rss
    took = sorted(d.took_s for d in on_seen.checks.values())
    warm = rss[min(len(rss) - 1, 10)] if rss else float("nan")  # 5 s in
    print(f"rows in the owner's table at the end: {len(maker.known):,}")
    print(f"checks done ({args.on:.0f} s on): {len(on_seen.checks)}, complete {on_seen.complete}")
    print(f"in flight found (summed over the checks): {on_seen.in_flight:,}")
    if took:
        print(f"a check took {statistics.median(took):.2f} s (median), {took[-1]:.2f} s at most")
    print(f"drift found: {on_seen.drift} (must be 0); repaired: {on_seen.repaired} (must be 0)")
    for line in on_seen.drifted[:10]:
        print(f"  {line}")
    print(
        f"owner write rate: {on_rate:,.0f} changes/s with the reconciler, "
        f"{statistics.mean(off_rates):,.0f} without ({', '.join(f'{r:,.0f}' for r in off_rates)})"
        f": ratio {on_rate / statistics.mean(off_rates):.3f}"
    )
    if rss:
        print(
            f"charter run VmRSS over the {args.on:.0f} s ({len(rss)} samples): "
            f"{rss[0]:.1f} MB at the start, {warm:.1f} after 5 s, max {max(rss):.1f}, "
            f"{rss[-1]:.1f} at the end"
        )
    print(f"after the run, a full check: {['clean' if r.clean else r.counts for r in final]}")
    print(f"load (1 min) at the end {os.getloadavg()[0]:.1f}")
    return 0 if on_seen.drift == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
