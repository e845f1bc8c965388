"""Peer benchmark: the ``eventsourcing`` library (9.5.x) on SQLite files.

Why: charter's own figures mean little without a peer doing the same work on the same
machine. ``eventsourcing`` is the established Python event-sourcing library, and its
leader -> follower "system" is the closest thing to charter's "one owner commits, read-only
copies follow".

Persistence: ``PERSISTENCE_MODULE=eventsourcing.sqlite`` with a real file per application
(``SQLITE_DBNAME``, or ``<APPNAME>_SQLITE_DBNAME`` inside a system), passed through the
``env`` constructor argument (the runner hands its ``env`` to every application it builds).

Durability, as eventsourcing 9.5.6 ``eventsourcing/sqlite.py`` applies it:

* ``PRAGMA journal_mode=WAL`` is issued on the first connection to a file database (unless
  it already is WAL); ``:memory:`` databases are left alone.
* ``PRAGMA synchronous`` is never set, so SQLite's compiled-in default applies. For WAL
  that is ``SQLITE_DEFAULT_WAL_SYNCHRONOUS``, which is FULL (2) unless SQLite was compiled
  otherwise; the Python/SQLite build this was measured with reports FULL (2), see
  ``sqlite_settings()`` -- i.e. every commit fsyncs the WAL.
* Connections use ``isolation_level=None`` with an explicit ``BEGIN`` (deferred) ... ``COMMIT``
  per recorder call, a 5 s busy timeout, ``check_same_thread=False`` and a connection pool.
* Each ``Application.save()`` is one transaction (events + notification-log rows together);
  each follower ``process_event()`` is one transaction (new events + tracking row).
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.sqlite import SQLiteFactory
from eventsourcing.system import (
    MultiThreadedRunner,
    ProcessApplication,
    Runner,
    System,
)

PERSISTENCE_MODULE = "eventsourcing.sqlite"
# Fraction of each pipeline transaction that updates an existing customer (rest are creates).
UPDATE_FRACTION = 0.1
# How long pipeline() waits for the followers to drain before giving up.
DRAIN_TIMEOUT_S = 600.0


# --- owner side ---------------------------------------------------------------------------


class Customer(Aggregate):
    """The owned record: one aggregate per customer, created then occasionally updated."""

    class Registered(Aggregate.Created):
        name: str
        email: str

    class EmailChanged(Aggregate.Event):
        email: str

    @event(Registered)
    def __init__(self, name: str, email: str) -> None:
        self.name = name
        self.email = email

    @event(EmailChanged)
    def change_email(self, email: str) -> None:
        self.email = email


class Registry(Application[UUID]):
    """Owner application; plain for owner_writes(), wrapped as a Leader by the runner."""

    def register(self, name: str, email: str) -> UUID:
        """One command = one new aggregate = one save() = one SQLite transaction."""
        customer = Customer(name=name, email=email)
        self.save(customer)
        return customer.id

    def apply_batch(
        self, creates: list[tuple[str, str]], updates: list[tuple[UUID, str]]
    ) -> list[UUID]:
        """Create and update many customers, then commit them all in ONE save()."""
        changed: list[Customer] = [Customer(name=n, email=e) for n, e in creates]
        new_ids = [c.id for c in changed]
        for customer_id, email in updates:
            customer: Customer = self.repository.get(customer_id)
            customer.change_email(email)
            changed.append(customer)
        self.save(*changed)
        return new_ids


# --- follower side ------------------------------------------------------------------------


class CustomerCopy(Aggregate):
    """Follower-owned copy of one Customer, kept under the same id as the original."""

    id: UUID  # Lets the constructor take ``id=`` (eventsourcing convention).

    class Copied(Aggregate.Created):
        name: str
        email: str

    class EmailChanged(Aggregate.Event):
        email: str

    @event(Copied)
    def __init__(self, name: str, email: str) -> None:
        self.name = name
        self.email = email

    @event(EmailChanged)
    def change_email(self, email: str) -> None:
        self.email = email


class CustomerCopies(ProcessApplication[UUID]):
    """Projection the way eventsourcing recommends: the policy collects follower-owned
    aggregate events, recorded atomically with a tracking row for the leader position."""

    @singledispatchmethod
    def policy(
        self,
        domain_event: DomainEventProtocol[UUID],
        processing_event: ProcessingEvent[UUID],
    ) -> None:
        """Ignore events this projection does not copy."""

    @policy.register(Customer.Registered)
    def _(self, domain_event: Customer.Registered, processing_event: ProcessingEvent[UUID]) -> None:
        copy = CustomerCopy(  # type: ignore[call-arg]
            id=domain_event.originator_id, name=domain_event.name, email=domain_event.email
        )
        processing_event.collect_events(copy)

    @policy.register(Customer.EmailChanged)
    def _(
        self, domain_event: Customer.EmailChanged, processing_event: ProcessingEvent[UUID]
    ) -> None:
        copy: CustomerCopy = self.repository.get(domain_event.originator_id)
        copy.change_email(domain_event.email)
        processing_event.collect_events(copy)

    def get_copy(self, customer_id: UUID) -> tuple[str, str]:
        """Read back one copy (used to check the projection really holds the data)."""
        copy: CustomerCopy = self.repository.get(customer_id)
        return copy.name, copy.email


class DirectoryCopy(CustomerCopies):
    """First follower (own SQLite file via DIRECTORYCOPY_SQLITE_DBNAME)."""


class MailingCopy(CustomerCopies):
    """Second follower (own SQLite file via MAILINGCOPY_SQLITE_DBNAME)."""


FOLLOWERS: tuple[type[CustomerCopies], ...] = (DirectoryCopy, MailingCopy)
SYSTEM = System(pipes=[[Registry, DirectoryCopy], [Registry, MailingCopy]])


# --- helpers ------------------------------------------------------------------------------


def _env_for(name: str, db_path: Path) -> dict[str, str]:
    """Env for a stand-alone application: SQLite persistence on one real file."""
    return {"PERSISTENCE_MODULE": PERSISTENCE_MODULE, f"{name.upper()}_SQLITE_DBNAME": str(db_path)}


def sqlite_settings(app: Application[Any]) -> dict[str, str]:
    """Effective journal_mode / synchronous on one of the application's own connections."""
    factory = cast(SQLiteFactory, app.factory)
    out: dict[str, str] = {}
    with factory.datastore.transaction(commit=False) as curs:
        for pragma in ("journal_mode", "synchronous"):
            curs.execute(f"PRAGMA {pragma}")
            out[pragma] = str(curs.fetchone()[0])
    out["sqlite_version"] = sqlite3.sqlite_version
    return out


def _changes(
    rng: random.Random, seq: int, size: int, known: list[UUID]
) -> tuple[list[tuple[str, str]], list[tuple[UUID, str]]]:
    """Build one transaction's worth of changes: ~90% creates, ~10% updates of earlier ids."""
    n_updates = min(int(size * UPDATE_FRACTION), len(known))
    updates = [(cid, f"moved{seq}@example.org") for cid in rng.sample(known, n_updates)]
    creates = [(f"name{seq}-{i}", f"c{seq}-{i}@example.org") for i in range(size - n_updates)]
    return creates, updates


# --- benchmarks ---------------------------------------------------------------------------


def owner_writes(n: int) -> float:
    """Seconds per owner command; each command creates one Customer and saves it (one
    SQLite transaction, WAL + synchronous FULL by default, see module docstring)."""
    warmup = 50
    with tempfile.TemporaryDirectory(prefix="peer-es-owner-") as tmp:
        app = Registry(env=_env_for(Registry.name, Path(tmp) / "registry.sqlite"))
        try:
            for i in range(warmup):
                app.register(f"warm{i}", f"warm{i}@example.org")
            start = time.perf_counter()
            for i in range(n):
                app.register(f"name{i}", f"c{i}@example.org")
            elapsed = time.perf_counter() - start
            if app.recorder.max_notification_id() != warmup + n:
                raise RuntimeError("owner_writes: not every command was recorded")
        finally:
            app.close()
    return elapsed / n


def _drain(runner: Runner[UUID], target: int, error: threading.Event | None) -> None:
    """Block until both followers have tracked leader notification ``target``."""
    followers = [runner.get(cls) for cls in FOLLOWERS]
    deadline = time.perf_counter() + DRAIN_TIMEOUT_S
    while True:
        if all((f.recorder.max_tracking_id(Registry.name) or 0) >= target for f in followers):
            return
        if error is not None and error.is_set():
            # The caller's runner.stop() re-raises the thread's own error on top of this.
            raise RuntimeError("pipeline: a follower thread failed")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"pipeline: followers did not reach {target} in time")
        time.sleep(0.002)


def pipeline(
    n_changes: int,
    per_transaction: int = 100,
    *,
    runner_class: type[Runner[UUID]] = MultiThreadedRunner,
) -> float:
    """Changes/second through leader -> two followers, end to end.

    The leader (Registry) commits ``per_transaction`` changes per save() (~90% creates of new
    customers, ~10% email updates of customers from earlier transactions); two
    ProcessApplications (DirectoryCopy, MailingCopy) each keep a CustomerCopy aggregate per
    customer. The clock stops when both followers have tracked the leader's last
    notification, i.e. every change was processed by both. Each application has its own
    SQLite file (``<APPNAME>_SQLITE_DBNAME``). Default runner: ``MultiThreadedRunner`` (one
    background thread per follower, prompted by the leader, pulling the leader's
    notification log from SQLite) -- the documented threaded runner and the fair analogue
    of a background pipeline; it ran reliably with SQLite files. SingleThreadedRunner
    (processing inline in the leader's save()) and NewMultiThreadedRunner can be passed in.
    """
    rng = random.Random(1234)
    with tempfile.TemporaryDirectory(prefix="peer-es-pipeline-") as tmp:
        env = {"PERSISTENCE_MODULE": PERSISTENCE_MODULE}
        for name in (Registry.name, *(f.name for f in FOLLOWERS)):
            env[f"{name.upper()}_SQLITE_DBNAME"] = str(Path(tmp) / f"{name}.sqlite")
        runner = runner_class(SYSTEM, env=env)
        runner.start()
        try:
            leader = runner.get(Registry)
            error = cast(threading.Event | None, getattr(runner, "has_errored", None))
            known: list[UUID] = []

            # Warm-up: one all-create transaction, fully drained before the clock starts.
            creates, _ = _changes(rng, -1, per_transaction, [])
            known.extend(leader.apply_batch(creates, []))
            base = leader.recorder.max_notification_id() or 0
            _drain(runner, base, error)

            start = time.perf_counter()
            done, seq = 0, 0
            while done < n_changes:
                size = min(per_transaction, n_changes - done)
                creates, updates = _changes(rng, seq, size, known)
                known.extend(leader.apply_batch(creates, updates))
                done += size
                seq += 1
            target = leader.recorder.max_notification_id() or 0
            _drain(runner, target, error)
            elapsed = time.perf_counter() - start

            if target - base != n_changes:
                raise RuntimeError(f"pipeline: leader wrote {target - base} != {n_changes}")
            probe = known[-1]
            for cls in FOLLOWERS:
                if runner.get(cls).get_copy(probe)[0] != leader.repository.get(probe).name:
                    raise RuntimeError(f"pipeline: {cls.name} copy is wrong")
        finally:
            runner.stop()
    return n_changes / elapsed


def main() -> None:
    """Run the peer figures charter's benchmarks compare against."""
    with tempfile.TemporaryDirectory(prefix="peer-es-probe-") as tmp:
        probe = Registry(env=_env_for(Registry.name, Path(tmp) / "probe.sqlite"))
        try:
            print(f"eventsourcing SQLite settings: {sqlite_settings(probe)}")
        finally:
            probe.close()

    per_cmd = owner_writes(2000)
    print(f"owner_writes(2000): {per_cmd * 1e6:.0f} us/command ({1 / per_cmd:.0f} commands/s)")

    n = 20000
    start = time.perf_counter()
    rate = pipeline(n)
    total = time.perf_counter() - start
    print(
        f"pipeline({n}, per_transaction=100, MultiThreadedRunner): {rate:.0f} changes/s "
        f"end to end ({n / rate:.1f} s measured, {total:.1f} s incl. setup)"
    )


if __name__ == "__main__":
    main()
