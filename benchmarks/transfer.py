"""How long `charter transfer` refuses writes to the records it moves, and whether writes
to the other records slow down meanwhile (issue 12, G10). Target: p99 refusal window
<= 100 ms; Vitess's traffic switch publishes "a few seconds" (the peer, quoted, not run).

Three writer processes (tests/transfer_writer.py) hammer throughout: the old owner and
the new owner on the moving partitions, and the old owner on the other partitions; the
relays and projectors run in this process. The partitions move back and forth MOVES
times (`charter transfer` as a process each time). For each move:

- refusal window (writers): from the last write the old owner had accepted on a moving
  record to the first one the new owner had accepted, from the writers' own logs (each
  line stamped as the commit returned). It includes the new owner's writer loading the
  charter again once the file records the move, as a restarted service would.
- refusal window (stores): from the fence's commit to the charter recorded, from the
  transfer's own state file (what charter itself holds the records for).
- other records: the other writer's time per write (consecutive log lines) while a
  transfer runs, beside the same writer's between transfers (the floor).

    .venv/bin/python benchmarks/transfer.py [--moves 10] [--records 2000] [--only sqlite]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from itertools import pairwise
from pathlib import Path

import charter
from charter.lanes import PARTITIONS, partition

ROOT = Path(__file__).resolve().parent.parent
WRITER = ROOT / "tests" / "transfer_writer.py"
MOVING = [0, 3, 7, 12]
PG = os.environ.get("CHARTER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
NATS = os.environ.get("CHARTER_BENCH_NATS", "nats://127.0.0.1:4222")
CHARTER = """\
charter: 1
name: {name}
bus: {bus}
contexts:
  legacy:    {{team: platform, store: "{legacy}"}}
  customers: {{team: customer-team, store: "{customers}"}}
  shipping:  {{team: logistics, store: "{shipping}"}}
entities:
  Customer:
    owner: legacy
    fields:
      email: {{type: string, unique: true}}
      name: {{type: string}}
copies:
  shipping_customers: {{in: shipping, of: Customer, fields: [name, email], window: 5s}}
"""


def _time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Pipeline(threading.Thread):
    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.halt = path, threading.Event()

    def run(self) -> None:
        """A runner in threads, made again when the charter file changes (as an operator
        restarts `charter run` after a transfer)."""
        seen, system, runner = -1, None, None
        while not self.halt.is_set():
            if self.path.stat().st_mtime_ns != seen:
                seen = self.path.stat().st_mtime_ns
                if runner is not None and system is not None:
                    runner.stop()
                    system.close()
                system = charter.load(self.path)
                runner = charter.Runner(system, poll_interval=0.002).start()
            time.sleep(0.005)
        if runner is not None and system is not None:
            runner.stop()
            system.close()


def _lines(path: Path) -> list[list[object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bench(kind: str, moves: int, records: int) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="charter-transfer-"))
    prefix = "bt" + uuid.uuid4().hex[:10]
    contexts = ("legacy", "customers", "shipping")
    if kind == "sqlite":
        urls = {c: f"sqlite:///{folder}/{c}.db" for c in contexts}
        urls |= {"bus": f"sqlite:///{folder}/bus.db", "name": "moving"}
    else:
        urls = {c: f"{PG}?schema={prefix}_{c}" for c in contexts}
        urls |= {"bus": NATS, "name": f"moving_{prefix}"}
    path = folder / "charter.yaml"
    path.write_text(CHARTER.format(**urls))
    with charter.load(path) as system:
        with system.context("legacy").transaction() as tx:
            ids = [tx.create("Customer", email=f"c{i}@x", name="n").id for i in range(records)]
        charter.Runner(system).drain()
    moving = [i for i in ids if partition(i, PARTITIONS) in MOVING]
    other = [i for i in ids if i not in moving]
    stop = folder / "stop"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    logs = {}
    for name, ctx, chosen in (
        ("legacy", "legacy", moving),
        ("customers", "customers", moving),
        ("other", "legacy", other),
    ):
        (folder / f"{name}.ids").write_text("\n".join(chosen))
        logs[name] = folder / f"{name}.log"
        ids_file = folder / f"{name}.ids"
        subprocess.Popen(
            [
                sys.executable,
                str(WRITER),
                str(path),
                ctx,
                str(ids_file),
                str(logs[name]),
                str(stop),
            ],
            env=env,
        )
    pipeline = Pipeline(path)
    pipeline.start()
    time.sleep(3.0)  # the writers start, the floor is measured between transfers
    spans: list[tuple[float, float]] = []
    store_windows: list[float] = []
    phases: list[dict[str, float]] = []
    owner, resumed = "legacy", 0
    for _ in range(moves):
        to = "customers" if owner == "legacy" else "legacy"
        started = time.time()
        state = folder / ".charter" / "transfers" / "Customer.json"
        args = [sys.executable, "-m", "charter.cli", "transfer", "-f", str(path), "Customer"]
        args += ["--to", to, *[a for p in MOVING for a in ("--partitions", str(p))]]
        for _attempt in range(4):  # a server's hiccup: the transfer resumes where it was
            done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
            if done.returncode == 0:
                break
            print(f"  transfer interrupted ({done.stderr.strip()[:160]}); resuming")
            resumed += 1
        else:
            stop.write_text("")
            raise SystemExit(f"transfer failed: {done.stderr}")
        history = dict(json.loads(state.read_text())["history"])
        steps = list(json.loads(state.read_text())["history"])
        phases.append(
            {b[0]: round((_time(b[1]) - _time(a[1])) * 1000, 1) for a, b in pairwise(steps)}
        )
        store_windows.append(_time(history["recorded"]) - _time(history["fenced"]))
        spans.append((started, time.time(), _time(history["fenced"]), owner, to))  # type: ignore[arg-type]
        owner = to
        time.sleep(1.5)
    stop.write_text("")
    time.sleep(1.0)
    pipeline.halt.set()
    pipeline.join(30)
    written = {name: _lines(log) for name, log in logs.items()}
    windows = []
    for started, _, fenced, old, new in spans:  # type: ignore[misc]
        last_old = max(
            (t for t, k, *_ in written[old] if k == "ok" and t <= fenced), default=started
        )
        first_new = min((t for t, k, *_ in written[new] if k == "ok" and t > fenced), default=None)
        if first_new is not None:
            windows.append(first_new - last_old)
    other_times = [float(t) for t, k, *_ in written["other"] if k != "ready"]
    during, between = [], []
    for a, b in pairwise(other_times):
        busy = any(s <= b and a <= e for s, e, *_ in spans)
        (during if busy else between).append(b - a)
    refused_other = sum(1 for _, k, *_ in written["other"] if k not in ("ok", "ready", "conflict"))
    if kind != "sqlite":
        import psycopg

        from charter.buses.nats import NatsBus

        with psycopg.connect(PG, autocommit=True) as conn:
            for c in contexts:
                conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}_{c}" CASCADE')
        NatsBus.delete_stream(NATS, urls["name"])
    return {
        "kind": kind,
        "moves": len(spans),
        "windows_ms": [round(w * 1000, 1) for w in windows],
        "store_windows_ms": [round(w * 1000, 1) for w in store_windows],
        "other_during_ms": (
            round(statistics.median(during) * 1000, 3),
            round(percentile(during, 0.99) * 1000, 3),
            len(during),
        ),
        "other_between_ms": (
            round(statistics.median(between) * 1000, 3),
            round(percentile(between, 0.99) * 1000, 3),
            len(between),
        ),
        "other_refused": refused_other,
        "phases_ms": phases,
        "resumed": resumed,
    }


def report(result: dict[str, object]) -> None:
    windows = list(result["windows_ms"])  # type: ignore[call-overload]
    stores = list(result["store_windows_ms"])  # type: ignore[call-overload]
    during, between = result["other_during_ms"], result["other_between_ms"]
    p99 = percentile(windows, 0.99)
    print(f"\n== {result['kind']}: {result['moves']} partition moves (4 of 16 partitions) ==")
    print(
        f"refusal window, writers: p50 {percentile(windows, 0.5):.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(windows):.1f} ms  (target p99 <= 100 ms: {'PASS' if p99 <= 100 else 'MISS'};"
        " Vitess: 'a few seconds')"
    )
    print(
        f"refusal window, stores (fence commit -> charter recorded): p50 "
        f"{percentile(stores, 0.5):.1f} ms, p99 {percentile(stores, 0.99):.1f} ms"
    )
    print(f"  each move (writers, ms): {windows}; resumed after an error: {result['resumed']}")
    for phases in result["phases_ms"]:  # type: ignore[attr-defined]
        print(f"  phases (ms from the one before): {phases}")
    d50, d99, dn = during  # type: ignore[misc]
    b50, b99, bn = between  # type: ignore[misc]
    print(
        f"other records, time per write: during transfers p50 {d50} ms p99 {d99} ms "
        f"({dn} writes); between them (floor) p50 {b50} ms p99 {b99} ms ({bn} writes); "
        f"ratio p50 {d50 / b50:.2f}, p99 {d99 / b99:.2f}; refused {result['other_refused']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--moves", type=int, default=10)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--only", choices=["sqlite", "postgres+nats"], action="append")
    options = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
    for kind in options.only or ["sqlite", "postgres+nats"]:
        report(bench(kind, options.moves, options.records))
        print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
