"""Worker loops for the concurrency and crash tests, and their process entry points.

The same loops run in threads of the test process and in separate processes, so a
guarantee is checked the same way whichever kind of concurrency is in play. As a
process (`python tests/workers.py COMMAND CHARTER_FILE JSON_ARGS`), a worker opens the
system, prints `ready`, waits for a line on stdin (so that every process starts at
once), works, and prints one JSON line: `result {...}`. The `writer` command instead
writes until it is killed, printing a JSON line after every commit.

Only the public API is used here, so these loops run unchanged on every backend.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import charter
from charter.system import System

EMAILS = 200  # the pool of e-mail addresses every customer-creating thread draws from
STEPS = 50  # attempts per thread
GROUPS = 4  # at each step, the threads form GROUPS groups; each group races for one e-mail

BOOKING_DAY = dt.datetime(2030, 1, 7, 8, 0, tzinfo=dt.UTC)
SLOT = dt.timedelta(minutes=15)


def write_customers(
    system: System,
    seed: int,
    transactions: int,
    *,
    per: tuple[int, int] = (1, 1),
    creates: float = 0.4,
    deletes: float = 0.1,
    keep: int = 1,
    tag: str = "m",
) -> list[str]:
    """`transactions` transactions of `per` (at least, at most) random changes to customers:
    creates and deletes in these shares, updates otherwise, a create while fewer than
    `keep` are alive. E-mails carry `tag` and `seed`, so writers never collide. Returns
    the ids still alive."""
    rng = random.Random(seed)
    customers = system.context("customers")
    alive: list[str] = []
    for number in range(transactions):
        with customers.transaction() as tx:
            for k in range(rng.randint(*per)):
                roll = rng.random()
                if roll < creates or len(alive) < keep:
                    email = f"{tag}{seed}-{number}-{k}@example.com"
                    alive.append(
                        tx.create("Customer", email=email, name=email, password_hash="h").id
                    )
                elif roll < 1 - deletes:
                    name, address = f"{seed} {number} {k}", f"{k} street"
                    tx.update("Customer", rng.choice(alive), name=name, address=address)
                else:
                    tx.delete("Customer", alive.pop(rng.randrange(len(alive))))
    return alive


@dataclass
class Outcome:
    """What one thread did: what it committed, how often a constraint refused it, and
    anything else that went wrong (which must stay empty)."""

    won: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    attempts: int = 0
    unexpected: list[str] = field(default_factory=list)

    def merge(self, other: Outcome) -> None:
        self.won += other.won
        self.refused += other.refused
        self.attempts += other.attempts
        self.unexpected += other.unexpected

    def as_json(self) -> dict[str, Any]:
        return {
            "won": self.won,
            "refused": self.refused,
            "attempts": self.attempts,
            "unexpected": self.unexpected,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Outcome:
        return cls(doc["won"], doc["refused"], doc["attempts"], doc["unexpected"])


def email_for(thread: int, step: int) -> str:
    """With 20 threads and 50 steps each, every address is tried by exactly 5 threads, at the same
    step: threads t ≡ k (mod 4) race for the same address (across processes too)."""
    return f"user{(step * GROUPS + thread % GROUPS) % EMAILS}@example.com"


def create_customers(system: System, thread: int) -> Outcome:
    """Try to create one customer per step with a colliding e-mail address."""
    customers = system.context("customers")
    outcome = Outcome()
    for step in range(STEPS):
        email = email_for(thread, step)
        outcome.attempts += 1
        try:
            with customers.transaction() as tx:
                record = tx.create(
                    "Customer", email=email, name=f"t{thread} s{step}", password_hash="h"
                )
        except charter.ConstraintError:
            outcome.refused += 1
            continue
        except Exception as exc:
            outcome.unexpected.append(f"{email}: {exc!r}")
            continue
        outcome.won.append({"id": record.id, "email": email})
    return outcome


def book_appointments(system: System, thread: int, users: list[str], attempts: int) -> Outcome:
    """Book random slots of one to six quarters on one morning for a few users: most
    overlap one another."""
    calendar = system.context("calendar")
    rng = random.Random(f"booking-{thread}")
    outcome = Outcome()
    for _ in range(attempts):
        user = rng.choice(users)
        starts = BOOKING_DAY + SLOT * rng.randrange(32)
        ends = starts + SLOT * rng.randint(1, 6)
        outcome.attempts += 1
        try:
            with calendar.transaction() as tx:
                record = tx.create("Appointment", user_id=user, starts_at=starts, ends_at=ends)
        except charter.ConstraintError:
            outcome.refused += 1
            continue
        except Exception as exc:
            outcome.unexpected.append(f"{user} {starts} to {ends}: {exc!r}")
            continue
        outcome.won.append(
            {
                "id": record.id,
                "user_id": user,
                "starts_at": starts.isoformat(),
                "ends_at": ends.isoformat(),
            }
        )
    return outcome


def run_threads(count: int, work: Callable[[int], Outcome], first: int = 0) -> Outcome:
    """Run work(first) … work(first + count - 1) in threads released together; merge what
    they did. A thread that dies records why instead of vanishing."""
    barrier = threading.Barrier(count)
    outcomes = [Outcome() for _ in range(count)]

    def body(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = work(first + index)
        except BaseException as exc:
            outcomes[index].unexpected.append(f"thread {first + index} died: {exc!r}")

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Outcome()
    for outcome in outcomes:
        total.merge(outcome)
    return total


def write_until_killed(system: System, seed: int, pause_at: int) -> None:
    """Commit transactions of 1 to 100 creates, updates and deletes of customers, forever,
    printing each committed transaction. In transaction `pause_at` (0: never), stop half-way,
    print the changes made so far (not committed) and wait on stdin: the test kills us there."""
    rng = random.Random(seed)
    customers = system.context("customers")
    spec = system.charter.entities["Customer"]
    alive = [row["id"] for row in system.store("customers").rows(spec)]
    number = 0
    emit({"started": len(alive)})
    while True:
        number += 1
        size = 1 if rng.random() < 0.3 else rng.randint(2, 100)
        pause = number == pause_at
        if pause:
            size = max(size, 20)
        changes: list[list[Any]] = []
        with customers.transaction() as tx:
            for k in range(size):
                roll = rng.random()
                # the paused transaction surely holds a create, an update and a delete
                op = ("create", "update", "delete")[k] if pause and k < 3 else ""
                if op == "create" or (not op and (roll < 0.3 or len(alive) < 5)):
                    record = tx.create(
                        "Customer",
                        email=f"w{seed}-{number}-{k}@example.com",
                        name=f"n{seed}-{number}-{k}",
                        password_hash="h",
                    )
                    alive.append(record.id)
                    changes.append([record.id, 1, "created"])
                elif op == "update" or (not op and roll < 0.95):
                    target = alive[0] if op else rng.choice(alive)  # alive[0]: committed before
                    record = tx.update(
                        "Customer",
                        target,
                        name=f"n{seed}-{number}-{k}",
                        address=f"{number} {k} street",
                    )
                    changes.append([target, record.version, "updated"])
                else:
                    target = alive.pop(0 if op else rng.randrange(len(alive)))
                    current = tx.get("Customer", target)
                    assert current is not None
                    tx.delete("Customer", target)
                    changes.append([target, current.version + 1, "deleted"])
                if pause and k == size // 2:
                    emit({"paused": number, "pending": changes})
                    sys.stdin.readline()  # never returns: the test kills us here
                    raise SystemExit("the test did not kill the paused writer")
        emit({"committed": number, "changes": changes})


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")  # one write: a kill tears at most the last line
    sys.stdout.flush()


# -- the test side: start worker processes and talk to them ----------------------------


class WorkerProcess:
    """A worker or `charter run` process whose output lines are collected as they come, so
    a test can wait for a line (a real condition) instead of sleeping."""

    def __init__(self, args: list[str], *, stdin: bool = False) -> None:
        self.args = args
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_unbuffered_env(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def worker(cls, command: str, charter_file: Path, **args: Any) -> WorkerProcess:
        script = str(Path(__file__).resolve())
        return cls(
            [sys.executable, script, command, str(charter_file), json.dumps(args)], stdin=True
        )

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first line that satisfies predicate; fails if the process ends or time runs
        out without one."""
        line = self.watch_for(predicate, timeout)
        if line is None:
            raise AssertionError(f"{self.args[2:4]} timed out waiting:\n{self.output}")
        return line

    def watch_for(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        """The first line that satisfies predicate, or None when `timeout` passes without
        one; fails if the process ends without one."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                ended = not self._reader.is_alive()  # before the scan: no line slips through
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if ended:
                    code = self.process.wait(30)
                    raise AssertionError(f"{self.args[2:4]} ended ({code}):\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.5))

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def kill(self) -> int:
        """SIGKILL, as a power cut or the OOM killer would; returns the exit status."""
        self.process.kill()
        return self.finish()

    def finish(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        if self.process.stdin is not None:
            self.process.stdin.close()
        return code

    def result(self, timeout: float = 30.0) -> Outcome:
        """Wait for a worker to end and return what it did."""
        code = self.finish(timeout)
        assert code == 0, f"worker exited with {code}:\n{self.output}"
        line = next((li for li in self.lines if li.startswith("result ")), None)
        assert line is not None, f"worker printed no result:\n{self.output}"
        return Outcome.from_json(json.loads(line.removeprefix("result ")))

    def json_lines(self) -> list[dict[str, Any]]:
        """The JSON lines printed; the last one may have been torn by the kill: it is left
        out (what it reported may or may not have committed)."""
        lines = [line for line in self.lines if line.startswith("{")]
        docs: list[dict[str, Any]] = []
        for number, line in enumerate(lines, 1):
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise
        return docs

    @property
    def output(self) -> str:
        return "\n".join(self.lines[-40:])


def run_worker_processes(command: str, charter_file: Path, processes: int, **args: Any) -> Outcome:
    """Start `processes` workers, release them together once all are ready, merge results."""
    workers = [
        WorkerProcess.worker(command, charter_file, process=p, **args) for p in range(processes)
    ]
    try:
        for worker in workers:
            worker.wait_for(lambda line: line == "ready")
        for worker in workers:
            worker.send("go")
        total = Outcome()
        for worker in workers:
            total.merge(worker.result(timeout=60))
        return total
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.kill()


def _unbuffered_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


# -- the process side -----------------------------------------------------------------


def main(argv: list[str]) -> None:
    command, charter_file, raw = argv
    args = json.loads(raw)
    with charter.load(charter_file) as system:
        for context in system.charter.contexts:
            system.store(context)  # open and prepare now, not in the race
        if command == "writer":
            write_until_killed(system, args["seed"], args.get("pause_at", 0))
            return
        threads, process = args["threads"], args["process"]
        if command == "customers":

            def work(thread: int) -> Outcome:
                return create_customers(system, thread)

        elif command == "appointments":

            def work(thread: int) -> Outcome:
                return book_appointments(system, thread, args["users"], args["attempts"])

        else:
            raise SystemExit(f"unknown command {command!r}")
        print("ready", flush=True)
        sys.stdin.readline()
        outcome = run_threads(threads, work, first=process * threads)
        print("result " + json.dumps(outcome.as_json()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
