"""`visibility: contract` against public events (run.py's section `visibility`): the relay's
throughput and the end-to-end rate with 1, 2 and 4 copies of one entity, on SQLite stores
with the SQLite bus and with a NATS bus (when it answers).

Under public visibility the relay publishes each committed event once, whole; under
contract visibility once per copy, cut to the copy's fields (decoded, cut and encoded
again: charter.visibility), on the copy's own topic. The copies here take two of the
entity's three public fields.

    .venv/bin/python benchmarks/run.py --only visibility [--quick]
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workload import ChangeMaker

import charter
from charter.runner import Runner
from charter.status import status
from charter.system import System

SECTION = "visibility"
COPIES = (1, 2, 4)
PER_TRANSACTION = 100


def charter_text(copies: int, visibility: str, bus: str, name: str) -> str:
    contexts = "".join(
        f'  keeper{k}: {{team: team{k}, store: "sqlite:///keeper{k}.db"}}\n' for k in range(copies)
    )
    declared = "".join(
        f"  copy{k}:\n    in: keeper{k}\n    of: Customer\n    fields: [name, email]\n"
        "    window: 5s\n"
        for k in range(copies)
    )
    return (
        f"charter: 1\nname: {name}\nbus: {bus}\nvisibility: {visibility}\ncontexts:\n"
        '  customers: {team: customer-team, store: "sqlite:///customers.db"}\n'
        f"{contexts}entities:\n  Customer:\n    owner: customers\n    fields:\n"
        "      name:    {type: string}\n      email:   {type: string, unique: true}\n"
        "      address: {type: string, required: false}\n"
        f"copies:\n{declared}"
    )


@contextmanager
def system_for(copies: int, visibility: str, bus: str) -> Iterator[System]:
    """A fresh system in a folder of its own; a NATS stream of its own, deleted after."""
    name = f"bench_vis_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="charter-vis-") as folder:
        path = Path(folder) / "charter.yaml"
        path.write_text(charter_text(copies, visibility, bus, name))
        system = charter.load(path)
        try:
            for context in system.charter.contexts:
                system.store(context)
            _ = system.bus
            yield system
        finally:
            system.close()
            if bus.startswith("nats://"):
                from charter.buses.nats import NatsBus

                NatsBus.delete_stream(bus, name)


def relay_rate(copies: int, visibility: str, bus: str, n: int) -> float:
    """Committed events the owner's relay moves to the bus per second (the outbox full)."""
    with system_for(copies, visibility, bus) as system:
        ChangeMaker(system.context("customers")).write(n, PER_TRANSACTION)
        start = time.perf_counter()
        moved = Runner(system, ["customers"], projectors=False).drain()
        elapsed = time.perf_counter() - start
        assert moved == n, (moved, n)
    return n / elapsed


def end_to_end_rate(copies: int, visibility: str, bus: str, n: int) -> float:
    """Changes per second from the first write to every copy holding the last, the
    runner in background threads of the writer's process."""
    with system_for(copies, visibility, bus) as system:
        runner = Runner(system).start()
        try:
            maker = ChangeMaker(system.context("customers"))
            start = time.perf_counter()
            maker.write(n, PER_TRANSACTION)
            deadline = start + 600
            while not all(s.synced for s in status(system)):
                if time.perf_counter() > deadline:
                    raise TimeoutError("the copies did not catch up in time")
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            runner.stop()
        if runner.errors:
            raise RuntimeError(f"runner errors: {runner.errors[:3]}")
        for copy in system.charter.copies.values():
            held = len(system.context(copy.context).copy(copy.name))
            if held != len(maker.known):
                raise RuntimeError(f"{copy.name}: {held} rows, the owner has {len(maker.known)}")
    return n / elapsed


@dataclass(frozen=True)
class Figure:
    bus: str
    copies: int
    relay: dict[str, float]  # visibility -> events/s
    end_to_end: dict[str, float]  # visibility -> changes/s


def measure(quick: bool, nats: str | None) -> list[Figure]:
    n = 5_000 if quick else 20_000
    buses = {"sqlite": "sqlite:///bus.db"}
    if nats:
        buses["nats"] = nats
    figures = []
    for label, bus in buses.items():
        for copies in COPIES:
            relay, whole = {}, {}
            for visibility in ("public", "contract"):
                relay[visibility] = relay_rate(copies, visibility, bus, n)
                whole[visibility] = end_to_end_rate(copies, visibility, bus, n)
                print(
                    f"  {label}, {copies} cop{'y' if copies == 1 else 'ies'}, {visibility}: "
                    f"relay {relay[visibility]:,.0f} events/s, end to end "
                    f"{whole[visibility]:,.0f} changes/s",
                    flush=True,
                )
            figures.append(Figure(label, copies, relay, whole))
    return figures


def table(figures: list[Figure]) -> str:
    lines = [
        "| bus | copies | relay, public (events/s) | relay, contract | ratio | "
        "end to end, public (changes/s) | end to end, contract | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.bus} | {f.copies} | {f.relay['public']:,.0f} | {f.relay['contract']:,.0f} | "
            f"{f.relay['contract'] / f.relay['public']:.2f} | {f.end_to_end['public']:,.0f} | "
            f"{f.end_to_end['contract']:,.0f} | "
            f"{f.end_to_end['contract'] / f.end_to_end['public']:.2f} |"
        )
    return "\n".join(lines)


def bench(quick: bool, nats: str | None) -> str:
    n = 5_000 if quick else 20_000
    print(f"\n[visibility] {n} changes, {PER_TRANSACTION} per transaction", flush=True)
    text = table(measure(quick, nats))
    print(text)
    return text
