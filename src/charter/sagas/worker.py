"""The orchestrator of one context's sagas, which the Runner runs: at each step it reads the
runs that are due from the context's store, sends each one's next command (all of them
before waiting for any answer), waits for the answers, and records every run's new state
in one owner transaction of its own store, so each change is an event in its outbox.

A crash anywhere loses nothing: a command sent whose answer was not recorded is sent again
under the same key, and its owner answers what it answered the first time. Two
orchestrators working on one run at once send the same keys; each records with the
version it read, so only one of them moves the run (the other's conflict is let go)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from charter import clock, commands
from charter.errors import BackendError, ConflictError, Error
from charter.sagas.declare import Saga, wake_key
from charter.sagas.moves import NO_ANSWER, Answer, Send, after, plan
from charter.sagas.state import ACTIVE, Run
from charter.system import System

BATCH = 200  # runs moved at one step of the worker


class SagaWorker:
    """Moves the runs of `sagas` (by name), all orchestrated by `context`."""

    def __init__(
        self,
        system: System,
        context: str,
        sagas: Mapping[str, Saga],
        batch: int = BATCH,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        self.system, self.context = system, context
        self.sagas = dict(sagas)
        self.batch = batch
        # (k, n): this worker moves the runs whose id falls in share k of n; n workers
        # (threads or processes) then move a context's runs side by side
        self.share = share

    @property
    def wake_key(self) -> str:
        return wake_key(self.context)

    def step(self) -> int:
        moved = 0
        for saga in self.sagas.values():
            moved += self._step(saga)
        return moved

    def _due(self, saga: Saga, now: float) -> list[Run]:
        handle = self.system.context(self.context)
        records = [r for status in ACTIVE for r in handle.filter(saga.name, status=status)]
        k, n = self.share
        mine = (r for r in records if n == 1 or zlib.crc32(r.id.encode()) % n == k)
        runs = sorted((Run.from_record(r) for r in mine), key=lambda r: r.next_at)
        return [r for r in runs if r.next_at <= now][: self.batch]

    def _step(self, saga: Saga) -> int:
        charter = self.system.charter
        now = clock.time_s()
        due = self._due(saga, now)
        if not due:
            return 0
        planned = [plan(saga, charter, run, now) for run in due]
        sends = [(run, send) for run, send in planned if send is not None]
        waits = list(zip(sends, self._send(sends), strict=True))
        _at(saga, "sent", [run for run, _ in sends])
        deadline = time.monotonic() + saga.step_timeout
        now_runs: dict[str, Run] = {run.id: run for run, _ in planned}
        for (run, send), waiting in waits:
            answer = (
                waiting if isinstance(waiting, Answer) else self._answer(send, waiting, deadline)
            )
            now_runs[run.id] = after(saga, run, send, answer, clock.time_s())
        _at(saga, "answered", list(now_runs.values()))
        before = {run.id: run for run in due}
        changed = [r for r in now_runs.values() if r != before[r.id]]
        self._record(saga, before, changed)
        _at(saga, "recorded", changed)
        return len(changed)

    def _send(
        self, sends: list[tuple[Run, Send]]
    ) -> list[Callable[[float], bytes | None] | Answer]:
        """Put the commands on the bus, all at once; for each, the function that waits for
        its answer, or the answer at once when the request itself is refused (say by the
        charter) or the bus fails (then tried again after a pause)."""
        system = self.system
        out: list[Callable[[float], bytes | None] | Answer] = []
        outgoing: list[tuple[str, str, str, bytes]] = []
        for _, send in sends:
            args = dict(send.args)
            entity_id = args.pop("id", None)
            try:
                spec, key, body = commands.request(
                    system.charter, self.context, send.command, send.key, entity_id, args
                )
            except Error as exc:
                out.append(Answer(refused=exc))
                continue
            out.append(NO_ANSWER)  # replaced by its waiting function once sent
            outgoing.append((spec.owner, send.command, key, body))
        if not outgoing:
            return out
        try:
            waiting = iter(system.bus.send_commands(self.context, outgoing))
        except BackendError:
            return out  # every one NO_ANSWER, or refused
        for owner in {owner for owner, _, _, _ in outgoing}:
            system.signals.notify(commands.wake_key(owner))
        return [next(waiting) if answer is NO_ANSWER else answer for answer in out]

    def _answer(
        self, send: Send, waiting: Callable[[float], bytes | None], deadline: float
    ) -> Answer:
        try:
            got = waiting(max(deadline - time.monotonic(), 0.0))
        except BackendError:
            return NO_ANSWER
        if got is None:
            return NO_ANSWER
        charter = self.system.charter
        spec = charter.commands[send.command]
        try:
            commands.outcome(charter, spec, send.key, got)
        except Error as exc:
            return Answer(refused=exc)
        return Answer(ok=True, result=_raw(got))

    def _record(self, saga: Saga, before: dict[str, Run], changed: list[Run]) -> None:
        """Every changed run in one transaction; when another orchestrator moved one of them
        first, each on its own (that one's conflict let go)."""
        if not changed:
            return
        handle = self.system.context(self.context)
        try:
            with handle.transaction(f"saga/{saga.name}") as tx:
                for run in changed:
                    tx.update(
                        saga.name, run.id, expected_version=before[run.id].version, **run.fields()
                    )
            return
        except ConflictError:
            pass
        for run in changed:
            try:
                with handle.transaction(f"saga/{saga.name}") as tx:
                    tx.update(
                        saga.name, run.id, expected_version=before[run.id].version, **run.fields()
                    )
            except ConflictError:
                continue


def _raw(answer: bytes) -> Any:
    """The owner's result as it travelled (a Record as {"record": …}), kept in the run."""
    return orjson.loads(answer).get("ok")


def _at(saga: Saga, point: str, runs: list[Run]) -> None:
    if saga.at is not None and runs:
        saga.at(point, runs)
