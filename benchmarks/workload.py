"""What the end-to-end benchmarks share: a `charter run` process of their own, and the
change mix they write: ~90% creates, ~10% e-mail updates of customers from earlier
transactions (the peer's pipeline mix, see peer_eventsourcing.py); every e-mail address
unique, since the charter's Customer says so."""

from __future__ import annotations

import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from peer_eventsourcing import UPDATE_FRACTION

from charter.system import ContextHandle

ENTITY = "Customer"


class ChangeMaker:
    """Writes the mix through an owner, remembering the ids it created."""

    def __init__(self, ctx: ContextHandle, seed: int = 1234) -> None:
        self.ctx, self.rng = ctx, random.Random(seed)
        self.known: list[str] = []
        self.seq = 0

    def batch(self, size: int) -> None:
        seq, self.seq = self.seq, self.seq + 1
        n_updates = min(int(size * UPDATE_FRACTION), len(self.known))
        with self.ctx.transaction() as tx:
            for k, cid in enumerate(self.rng.sample(self.known, n_updates)):
                tx.update(ENTITY, cid, email=f"moved{seq}-{k}@example.org")
            for i in range(size - n_updates):
                record = tx.create(ENTITY, name=f"name{seq}-{i}", email=f"c{seq}-{i}@example.org")
                self.known.append(record.id)

    def write(self, n: int, per_transaction: int) -> float:
        """Write n changes; returns the seconds it took."""
        start = time.perf_counter()
        done = 0
        while done < n:
            size = min(per_transaction, n - done)
            self.batch(size)
            done += size
        return time.perf_counter() - start


def charter_command() -> list[str]:
    script = Path(sys.executable).parent / "charter"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from charter.cli import main; main()"]


@contextmanager
def charter_run(folder: Path, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """`charter run` in a process of its own, sharing the files; stopped with SIGTERM."""
    name = "-".join(("run", *options)).replace("/", "of")
    log: IO[bytes] = (folder / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [*charter_command(), "run", "-f", str(folder / "charter.yaml"), *options],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def alive(proc: subprocess.Popen[bytes], folder: Path) -> Callable[[], None]:
    def check() -> None:
        if proc.poll() is not None:
            logs = sorted(folder.glob("run*.log"))
            tail = "".join(log.read_text(errors="replace")[-2000:] for log in logs)
            raise RuntimeError(f"charter run exited with {proc.returncode}:\n{tail}")

    return check


NO_LATENCY = "latency_retention: 0\n"  # the charter's switch: no latency recorded


def on_and_off(rounds: int, run: Callable[[bool], float]) -> tuple[list[float], list[float]]:
    """`run(recording)` for each setting `rounds` times, taking turns (on, off, off, on, …)
    so that a machine getting busier or quieter weighs on both alike: (on rates, off rates)."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for number in range(rounds):
        for recording in (True, False) if number % 2 == 0 else (False, True):
            rates[recording].append(run(recording))
    return rates[True], rates[False]


def latency_cost(on: list[float], off: list[float]) -> float:
    """What recording costs as a share of the throughput without it: the mean over the
    rounds of each round's pair (run one after the other, so the machine was alike). With
    an even number of rounds each setting runs first as often: on PostgreSQL + NATS the
    first run of a pair was 5-10 % slower whichever it was, and this cancels it."""
    return statistics.mean(1 - a / b for a, b in zip(on, off, strict=True))


def costs_text(on: list[float], off: list[float]) -> str:
    """Each round's cost, for the notes: what the median was taken of."""
    return ", ".join(f"{1 - a / b:+.1%}" for a, b in zip(on, off, strict=True))


def on_off_text(on: list[float], off: list[float]) -> str:
    """A latency-cost run's rounds, for the notes: each rate on and off, and each round's cost."""
    return (
        "on: " + ", ".join(f"{r:,.0f}" for r in on) + "; off (the charter's "
        "`latency_retention: 0`): " + ", ".join(f"{r:,.0f}" for r in off) + " changes/s; "
        f"cost per round (on against off, run one after the other): {costs_text(on, off)}"
    )
