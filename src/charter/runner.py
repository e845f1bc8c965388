"""Runs the relays and projectors of some contexts: in threads until stopped, or
until everything is drained. `charter run` is this, in a process of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from functools import partial
from typing import Protocol

from charter.commands import CommandWorker
from charter.errors import Error
from charter.lanes import Lane
from charter.model import Charter
from charter.projector import Projector
from charter.reconcile.schedule import Reconciler
from charter.relay import Relay
from charter.reports import Reports
from charter.sagas.worker import SagaWorker
from charter.system import System
from charter.visibility import topics

MAX_BACKOFF_S = 1.0  # the longest pause between two tries of a failing worker


def declared_copies(charter: Charter) -> dict[str, list[str]]:
    """Topic (an entity's, or a copy's under contract visibility) -> the names of the
    copies in the charter that read it: what compaction must wait for, whatever the bus
    knows (Bus.compact)."""
    return topics(charter)


class Worker(Protocol):
    @property
    def wake_key(self) -> str: ...

    def step(self) -> int: ...


class Runner:
    """The pipeline for `contexts` (all when None): relays for what they own, projectors
    for the copies they keep. Relays and projectors can run apart (relays=False or
    projectors=False), e.g. under the service's and the projector's database roles. With
    a `lane`, this runner's projectors apply only that lane's share of each copy, and other
    runners the other lanes (charter.lanes). A context with command handlers registered
    on the system before (ContextHandle.handles) gets a command worker that serves them
    (commands=False: none), and one with sagas registered (Saga.register) an orchestrator
    of them. With `concurrency` N, each command worker handles up to N shares of its
    commands at once (one record's in one share, in order), and N orchestrators share a
    context's runs. The copies it keeps that declare `reconcile:` are checked
    against their owners on that schedule, in a thread of their own (charter.reconcile.
    schedule; with lanes, by lane 1's runner only; reconcile=False: never)."""

    def __init__(
        self,
        system: System,
        contexts: Iterable[str] | None = None,
        *,
        poll_interval: float = 0.01,
        batch: int = 1000,
        compact_every: float = 60.0,
        relays: bool = True,
        projectors: bool = True,
        lane: Lane | None = None,
        commands: bool = True,
        concurrency: int = 1,
        reconcile: bool = True,
    ) -> None:
        charter = system.charter
        names = list(contexts) if contexts is not None else list(charter.contexts)
        for name in names:
            system.context(name)  # unknown names fail here, with a hint
        self.system = system
        self.poll_interval, self.compact_every = poll_interval, compact_every
        self.workers: list[Worker] = []
        for name in names if relays else ():
            if charter.owned_by(name):
                fills = [
                    (copy, entity)
                    for entity in charter.owned_by(name)
                    for copy in charter.copies_of(entity.name)
                ]
                store, owned = system.store(name), charter.owned_by(name)
                self.workers.append(
                    Relay(name, store, system.bus, system.signals, batch, fills, owned)
                )
        for name in names if projectors else ():
            for copy in charter.copies_in(name):
                entity = charter.entities[copy.of]
                self.workers.append(
                    Projector(
                        copy,
                        entity,
                        system.store(name),
                        partial(system.store, entity.owner),  # only for a backfill
                        system.bus,
                        batch,
                        lane,
                        charter.contexts[entity.owner].team,
                        record_latency=charter.latency_retention_s > 0,
                        owner_stores=system.store,  # after a move: each record's holder
                    )
                )
        for name in names if commands else ():
            handlers = system.handlers.get(name)
            if handlers:
                context = system.context(name)
                self.workers.append(
                    CommandWorker(
                        name,
                        charter,
                        system.bus,
                        partial(system.store, name),
                        context.transaction,
                        handlers,
                        concurrency=concurrency,
                    )
                )
        for name in names if commands else ():
            if system.sagas.get(name):
                loops = max(1, concurrency)  # each its share of the runs, at its own pace
                for share in range(loops):
                    worker = SagaWorker(system, name, system.sagas[name], share=(share, loops))
                    self.workers.append(worker)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.reports = Reports()
        scheduled = [p.copy for p in self.projectors if p.copy.reconcile_s > 0]
        if not reconcile or (lane is not None and lane.number != 1):
            scheduled = []
        self.reconciler = Reconciler(system, scheduled, self.reports)
        self._thread_of: dict[int, threading.Thread] = {}  # id(worker) → its thread
        # Each distinct failure of a worker, the first time (a failure that repeats is
        # counted in `reports`, which is what `charter run` prints).
        self.errors: list[BaseException] = []

    @property
    def projectors(self) -> list[Projector]:
        """This runner's projectors, one per copy it keeps (their `on_applied` is the hook
        for what watches the copies: charter.metrics)."""
        return [w for w in self.workers if isinstance(w, Projector)]

    @property
    def relays(self) -> list[Relay]:
        return [w for w in self.workers if isinstance(w, Relay)]

    def drain(self) -> int:
        """Run every worker until none has anything left; returns how many events moved.
        A worker that fails is left out and the others go on; the first failure is raised
        at the end (with the others as notes)."""
        total = 0
        failed: dict[int, Exception] = {}
        while True:
            moved = 0
            for number, worker in enumerate(self.workers):
                if number not in failed:
                    try:
                        moved += worker.step()
                    except Exception as exc:
                        failed[number] = exc
            total += moved
            if moved == 0:
                break
        for number, worker in enumerate(self.workers):
            if isinstance(worker, Relay) and number not in failed:
                worker.finish()  # gives up the lead: the next drain, or another process, takes it
        self.compact()
        if failed:
            first, *others = failed.values()
            for other in others:
                first.add_note(f"and: {other}")
            raise first
        return total

    def start(self) -> Runner:
        """Run in background threads until stop()."""
        self._stop.clear()
        for worker in self.workers:
            thread = threading.Thread(
                target=self._loop, args=(worker,), name=f"charter:{worker.wake_key}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            self._thread_of[id(worker)] = thread
        housekeeper = threading.Thread(target=self._housekeep, name="charter:compact", daemon=True)
        housekeeper.start()
        self._threads.append(housekeeper)
        self.reconciler.start()
        return self

    def _loop(self, worker: Worker) -> None:
        signals = self.system.signals
        name = worker_name(worker)
        idle = 0.0005
        backoff = self.poll_interval
        while not self._stop.is_set():
            try:
                moved = worker.step()
            except Exception as exc:  # a store or bus failing: keep trying, say so once
                self._failed(name, exc)
                self._stop.wait(backoff)
                backoff = min(max(backoff * 2, 0.01), MAX_BACKOFF_S)
                continue
            self.reports.worked(name)
            backoff = self.poll_interval
            if moved:
                idle = 0.0005
                continue
            signals.wait(worker.wake_key, idle)
            idle = min(idle * 2, self.poll_interval)
        if isinstance(worker, Relay):
            try:
                worker.finish()  # the batch on its way lands, and is marked
            except Exception as exc:
                self._failed(name, exc)

    def _failed(self, worker: str, exc: BaseException) -> None:
        if self.reports.failed(worker, exc):
            self.errors.append(exc)

    def _housekeep(self) -> None:
        while not self._stop.wait(self.compact_every):
            try:
                self.compact()
                self.reports.worked("compaction")
            except Exception as exc:
                self._failed("compaction", exc)

    def compact(self) -> int:
        """Let the bus forget what every copy the charter declares has applied."""
        charter = self.system.charter
        return self.system.bus.compact(charter.retention_s, declared_copies(charter))

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand, then stop."""
        self._stop.set()
        self.reconciler.stop(timeout)  # first: its repairs need the projectors
        for worker in self.workers:
            self.system.signals.notify(worker.wake_key)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        for worker in self.workers:
            if isinstance(worker, CommandWorker):
                worker.close()
        self._thread_of.clear()

    def working(self, worker: Worker) -> bool:
        """`worker` is at work: started, its thread alive, its last try not failed (a store
        or bus it needs out of reach). What `charter_copy_projector_up` says (metrics)."""
        thread = self._thread_of.get(id(worker))
        if thread is None or not thread.is_alive():
            return False
        return not self.reports.failing(worker_name(worker))

    def wait_until_synced(self, timeout: float = 30.0) -> bool:
        """Block until every copy in scope has applied every committed event."""
        from charter.status import copy_status

        deadline = time.monotonic() + timeout
        copies = [w.copy for w in self.projectors]
        while time.monotonic() < deadline:
            try:
                if all(copy_status(self.system, c).synced for c in copies):
                    return True
            except Error:  # a bus or store failing over: not synced yet, ask again
                pass
            time.sleep(0.005)
        return False

    def __enter__(self) -> Runner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_name(worker: Worker) -> str:
    """What a worker is called in reports: the relay of a context, the projector of a copy."""
    if isinstance(worker, Relay):
        return f"relay of '{worker.context}'"
    if isinstance(worker, Projector):
        lane = f" (lane {worker.lane})" if worker.lane else ""
        return f"projector of copy '{worker.copy.name}'{lane}"
    if isinstance(worker, CommandWorker):
        return f"commands of '{worker.context}'"
    if isinstance(worker, SagaWorker):
        share = f" (share {worker.share[0] + 1}/{worker.share[1]})" if worker.share[1] > 1 else ""
        return f"sagas of '{worker.context}'{share}"
    return worker.wake_key
