"""What the end-to-end benchmarks share: a `charter run` process of their own, and the
change mix they write: ~90% creates, ~10% e-mail updates of customers from earlier
transactions (the peer's pipeline mix, see peer_eventsourcing.py); every e-mail address
unique, since the charter's Customer says so."""

from __future__ import annotations

import math
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from peer_eventsourcing import UPDATE_FRACTION

from charter.projector import Projector
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


def on_and_off(rounds: int, run: Callable[[bool], float]) -> tuple[list[float], list[float]]:
    """`run(recording)` for each setting `rounds` times, taking turns (on, off, off, on, …)
    so that a machine getting busier or quieter weighs on both alike: (on rates, off rates)."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for number in range(rounds):
        for recording in (True, False) if number % 2 == 0 else (False, True):
            rates[recording].append(run(recording))
    return rates[True], rates[False]


@dataclass(frozen=True)
class Toggled:
    """Blocks run with recording on and off: their rates (changes per wall-clock second)
    and the same per CPU second of this process (writer, relay and projectors in threads;
    not the servers'), which other work on a shared machine moves much less."""

    on: list[float]
    off: list[float]
    on_cpu: list[float]
    off_cpu: list[float]


def toggled(
    rounds: int, projectors: Sequence[Projector], block: Callable[[], float], n: int
) -> Toggled:
    """`block()` (the same work each time: write `n` changes, wait until every copy holds
    them, return the rate) run `rounds` times with latency recording on and as often off,
    taking turns (on, off, off, on, …), all in ONE running system: each projector's
    `record_latency` is switched between blocks. Deployments differ by 20-40 % from one to
    the next (new schemas, new stream, the machine); blocks of one deployment differ only
    by the switch and by what ABBA cancels (tables growing)."""
    cpu: dict[bool, list[float]] = {True: [], False: []}

    def run(recording: bool) -> float:
        for projector in projectors:
            projector.record_latency = recording
        began = time.process_time()
        rate = block()
        cpu[recording].append(n / max(time.process_time() - began, 1e-9))
        return rate

    on, off = on_and_off(rounds, run)
    return Toggled(on, off, cpu[True], cpu[False])


def toggled_blocks(
    maker: ChangeMaker,
    wait: Callable[[], object],
    projectors: Sequence[Projector],
    rounds: int,
    n: int,
    per: int,
    say: Callable[[str], None],
    warm_wait: Callable[[], object] | None = None,
) -> Toggled:
    """Warm up (a batch of `per`, then one block of `n` not counted: pools, plans, caches),
    then `toggled`: blocks of `n` changes, each timed until every copy holds them (`wait`)."""
    settle = warm_wait or wait
    maker.batch(per)
    settle()
    maker.write(n, per)
    settle()

    def block() -> float:
        start = time.perf_counter()
        maker.write(n, per)
        wait()
        rate = n / (time.perf_counter() - start)
        say(f"  {rate:,.0f} changes/s")
        return rate

    return toggled(rounds, projectors, block, n)


@dataclass(frozen=True)
class Settled:
    """A cost measured in paired rounds: the median of the rounds' costs and a
    distribution-free confidence interval for that median (order statistics: the median
    lies between the k-th lowest and the k-th highest round with `confidence`)."""

    median: float
    low: float
    high: float
    confidence: float
    rounds: int

    def verdict(self, target: float) -> str:
        if self.high <= target:
            return "PASS"
        if self.low > target:
            return "MISS"
        return "not settled"

    def text(self) -> str:
        return (
            f"median {self.median:+.1%}, {self.confidence:.0%} interval "
            f"[{self.low:+.1%}, {self.high:+.1%}] over {self.rounds} rounds"
        )


def settled(on: list[float], off: list[float], confidence: float = 0.95) -> Settled:
    """What recording costs as a share of the rate without it, round by round (1 - on/off
    of the two blocks run one after the other), settled as a median with its interval."""
    costs = sorted(1 - a / b for a, b in zip(on, off, strict=True))
    n = len(costs)
    # The largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2: then the median
    # lies in [costs[k-1], costs[n-k]] with at least `confidence`.
    k, below = 0, 0.0
    while k < n // 2:
        below += math.comb(n, k) / 2**n
        if below > (1 - confidence) / 2:
            break
        k += 1
    k = max(k, 1)
    covered = 1 - 2 * sum(math.comb(n, i) / 2**n for i in range(k))
    return Settled(statistics.median(costs), costs[k - 1], costs[n - k], covered, n)


def costs_text(on: list[float], off: list[float]) -> str:
    """Each round's cost, for the notes: what the median was taken of."""
    return ", ".join(f"{1 - a / b:+.1%}" for a, b in zip(on, off, strict=True))


def on_off_text(on: list[float], off: list[float]) -> str:
    """A latency-cost run's rounds, for the notes: each rate on and off, and each round's cost."""
    return (
        "on: " + ", ".join(f"{r:,.0f}" for r in on) + "; off (each projector's "
        "`record_latency` switched off): " + ", ".join(f"{r:,.0f}" for r in off) + " changes/s; "
        f"cost per round (on against off, run one after the other): {costs_text(on, off)}"
    )
