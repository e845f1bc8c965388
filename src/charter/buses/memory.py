"""The reference bus: events in this process's memory (``memory://NAME``), and on
request a bus that misbehaves on purpose.

Small and obviously right, so that it can be read as the meaning of the `Bus` protocol;
every open of the same URL in one process shares one log. `Faults` make it do, on a
seeded random generator, what real brokers do within their promises: refuse a publish,
store one but lose the reply (the relay sends it again), hand out a delivery twice,
hand out a batch out of order, hand out only part of what is there (a slow consumer), and
on `lose_newest` forget events it had acknowledged (nats-server 2.9 acknowledges before
its data reaches disk). Positions are never reused: a lost event leaves a hole."""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from charter import clock
from charter.buses.base import COMMAND_LEASE_S, OutgoingCommand
from charter.errors import Error
from charter.lanes import PARTITIONS, partition
from charter.records import FILL_MARKER, Backlog, CommandDelivery, Delivery, OutboxRow
from charter.values import timestamp_text


class BusFault(Error):
    """The bus refused or lost a publish on purpose (memory bus with `Faults`)."""


@dataclass(frozen=True, slots=True)
class Faults:
    """How often each kind of misbehaviour happens (0: never, 1: always), on `seed`."""

    seed: int = 0
    refuse_publish: float = 0.0  # nothing stored, the publisher told so
    lose_reply: float = 0.0  # stored, but the publisher told it failed
    duplicate: float = 0.0  # a fetch hands a delivery out twice
    reorder: float = 0.0  # a fetch hands its batch out shuffled
    delay: float = 0.0  # a fetch hands out only the first part of what is there


@dataclass(frozen=True, slots=True)
class _Stored:
    seq: int
    event_id: str
    entity: str
    subject: str
    time: str
    published_at: float
    body: bytes


@dataclass
class _Command:
    """A command waiting for its owner; `taken_until`: handed out, until then."""

    number: int
    owner: str
    key: str
    name: str
    body: bytes
    sent_at: float
    taken_until: float = 0.0


@dataclass
class _Log:
    entities: dict[str, list[_Stored]] = field(default_factory=dict)  # each in seq order
    ids: set[str] = field(default_factory=set)
    next_seq: int = 1
    consumers: dict[tuple[str, str], int] = field(default_factory=dict)
    notes: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    compacted: dict[str, int] = field(default_factory=dict)  # entity → newest forgotten
    lock: threading.RLock = field(default_factory=threading.RLock)
    commands: list[_Command] = field(default_factory=list)  # in the order sent
    answers: dict[tuple[str, str], tuple[bytes, float]] = field(default_factory=dict)
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    changed: threading.Condition = field(init=False)  # a command or an answer came

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)


_OPEN: dict[str, _Log] = {}
_OPEN_LOCK = threading.Lock()


def forget(url: str) -> None:
    """Drop what a memory:// bus holds (a test's clean-up)."""
    with _OPEN_LOCK:
        _OPEN.pop(url.split("?", 1)[0], None)


class MemoryBus:
    """One ordered log for every entity, a position per event, dedup by event id."""

    compact_ignores_consumers = False  # a planted bug (charter.sim.bugs)

    def __init__(self, url: str, faults: Faults | None = None) -> None:
        self.url = url
        query = parse_qs(urlsplit(url).query)
        self.partitions = int(query.get("partitions", [PARTITIONS])[0])
        with _OPEN_LOCK:
            self._log = _OPEN.setdefault(url.split("?", 1)[0], _Log())
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self.fault: Callable[[str], None] | None = None  # as MemoryStore.fault

    def _touch(self, operation: str) -> None:
        if self.fault is not None:
            self.fault(operation)

    def _happens(self, chance: float) -> bool:
        return chance > 0 and self._rng.random() < chance

    def publish(self, rows: Sequence[OutboxRow]) -> None:
        self._touch("publish")
        if self._happens(self.faults.refuse_publish):
            raise BusFault(f"{self.url}: publish of {len(rows)} events refused (fault)")
        now, log = clock.time_s(), self._log
        with log.lock:
            for row in rows:
                if row.event_id in log.ids:
                    continue
                log.ids.add(row.event_id)
                log.entities.setdefault(row.entity, []).append(
                    _Stored(
                        log.next_seq,
                        row.event_id,
                        row.entity,
                        row.entity_id,
                        row.time,
                        now,
                        row.body,
                    )
                )
                log.next_seq += 1
        if self._happens(self.faults.lose_reply):
            raise BusFault(f"{self.url}: no reply to a publish of {len(rows)} events (fault)")

    def publish_begin(self, rows: Sequence[OutboxRow]) -> Callable[[], None]:
        """The events go on the bus when the publisher waits for them, as with a broker
        whose acknowledgement is still on its way."""
        batch = list(rows)
        return lambda: self.publish(batch)

    def misbehave(self, faults: Faults) -> None:
        """From now on, misbehave as `faults` says (Faults() to stop)."""
        self.faults, self._rng = faults, random.Random(faults.seed)

    def publish_raw(self, event_id: str, entity: str, subject: str, body: bytes | str) -> None:
        """Put any bytes (or text) on the bus, as a misbehaving producer would."""
        row = OutboxRow(0, event_id, entity, subject, 0, "", (), "", body)  # type: ignore[arg-type]
        self.publish([row])

    def fetch(self, consumer: str, entity: str, after: int, limit: int) -> list[Delivery]:
        self._touch("fetch")
        with self._log.lock:
            found = self._after(entity, after)[:limit]
        if found and self._happens(self.faults.delay):
            found = found[: self._rng.randrange(len(found))]
        batch = [
            Delivery(e.seq, e.body, partition(e.subject, self.partitions), e.event_id)
            for e in found
        ]
        if batch and self._happens(self.faults.duplicate):
            again = batch[self._rng.randrange(len(batch))]
            batch.insert(self._rng.randrange(len(batch) + 1), again)
        if len(batch) > 1 and self._happens(self.faults.reorder):
            self._rng.shuffle(batch)
        return batch

    def _after(self, entity: str, after: int) -> list[_Stored]:
        events = self._log.entities.get(entity, [])
        return events[bisect.bisect_right(events, after, key=_seq) :]

    def ack(self, consumer: str, entity: str, position: int) -> None:
        self._touch("ack")
        with self._log.lock:
            key = (consumer, entity)
            self._log.consumers[key] = max(position, self._log.consumers.get(key, 0))

    def put_note(self, kind: str, entity: str, copy: str, body: bytes) -> None:
        self._touch("put_note")
        with self._log.lock:
            self._log.notes[(kind, entity, copy)] = bytes(body)

    def note(self, kind: str, entity: str, copy: str) -> bytes | None:
        self._touch("note")
        with self._log.lock:
            return self._log.notes.get((kind, entity, copy))

    def head(self, entity: str) -> int:
        self._touch("head")
        with self._log.lock:
            events = self._log.entities.get(entity)
            return events[-1].seq if events else 0

    def backlog(self, consumer: str, entity: str, after: int) -> Backlog:
        self._touch("backlog")
        with self._log.lock:
            behind = self._after(entity, after)
        # A fill's events keep their records' commit times; their age is the fill's.
        times = [_published(e) if FILL_MARKER in e.event_id else e.time for e in behind if e.time]
        return Backlog(len(behind), min(times, default=None))

    def compact(self, retention_s: float, copies: Mapping[str, Sequence[str]]) -> int:
        self._touch("compact")
        cutoff = clock.time_s() - retention_s
        log = self._log
        with log.lock:
            floors: dict[str, int] = {}  # entity → up to where every declared copy applied
            for entity, declared in copies.items():
                known = [log.consumers.get((copy, entity)) for copy in declared]
                if None not in known:  # a copy whose position is unknown keeps everything
                    floors[entity] = min((k for k in known if k is not None), default=2**63)
            if self.compact_ignores_consumers:
                floors = {entity: 2**63 for entity in log.entities}
            gone: list[_Stored] = []
            for entity, events in log.entities.items():
                floor = floors.get(entity, 0)
                keep = [e for e in events if e.published_at >= cutoff or e.seq > floor]
                if len(keep) < len(events):
                    gone += [e for e in events if e.published_at < cutoff and e.seq <= floor]
                    log.entities[entity] = keep
            for e in gone:  # said before it is done
                log.compacted[e.entity] = max(e.seq, log.compacted.get(e.entity, 0))
            # as a broker's dedup window, it forgets the ids with the events
            log.ids.difference_update(e.event_id for e in gone)
            # commands and answers wait at most the retention
            log.commands = [c for c in log.commands if c.sent_at >= cutoff]
            log.answers = {k: a for k, a in log.answers.items() if a[1] >= cutoff}
        return len(gone)

    def compacted(self, entity: str) -> int:
        self._touch("compacted")
        with self._log.lock:
            return self._log.compacted.get(entity, 0)

    def send_command(
        self, sender: str, owner: str, name: str, key: str, body: bytes
    ) -> Callable[[float], bytes | None]:
        self._touch("send_command")
        log = self._log
        with log.lock:
            waiting = any(c.owner == owner and c.key == key for c in log.commands)
            if not waiting and (owner, key) not in log.answers:
                log.commands.append(
                    _Command(next(log.numbers), owner, key, name, bytes(body), clock.time_s())
                )
                log.changed.notify_all()

        def answer(timeout: float) -> bytes | None:
            deadline = time.monotonic() + timeout
            with log.lock:
                while (owner, key) not in log.answers:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    log.changed.wait(left)
                return log.answers[(owner, key)][0]

        return answer

    def send_commands(
        self, sender: str, commands: Sequence[OutgoingCommand]
    ) -> list[Callable[[float], bytes | None]]:
        return [self.send_command(sender, *command) for command in commands]

    def take_commands(self, owner: str, limit: int, wait: float) -> list[CommandDelivery]:
        self._touch("take_commands")
        log, deadline = self._log, time.monotonic() + wait
        with log.lock:
            while True:
                now = clock.time_s()
                free = [c for c in log.commands if c.owner == owner and c.taken_until <= now]
                left = deadline - time.monotonic()
                if free or left <= 0:
                    break
                log.changed.wait(left)
            for command in free[:limit]:
                command.taken_until = now + COMMAND_LEASE_S
            return [CommandDelivery(c.key, c.name, c.body, c.number) for c in free[:limit]]

    def answer_command(self, owner: str, command: CommandDelivery, answer: bytes) -> None:
        self._touch("answer_command")
        log = self._log
        with log.lock:
            log.answers[(owner, command.key)] = (bytes(answer), clock.time_s())
            log.commands = [c for c in log.commands if c.number != command.ticket]
            log.changed.notify_all()

    def waiting_commands(self) -> int:
        """How many commands wait for their owners, handed out or not (for checkers)."""
        with self._log.lock:
            return len(self._log.commands)

    def answer_commands(self, owner: str, answers: Sequence[tuple[CommandDelivery, bytes]]) -> None:
        for command, answer in answers:
            self.answer_command(owner, command, answer)

    def lose_newest(self, count: int) -> list[str]:
        """Forget the newest `count` events, acknowledged or not, as a broker that lost
        unsynced data in a crash does; returns their event ids. Their ids are forgotten
        too, so publishing them again (a relay's rewind) is accepted."""
        with self._log.lock:
            every = sorted((e for es in self._log.entities.values() for e in es), key=_seq)
            lost = every[len(every) - count :] if count > 0 else []
            gone = {e.seq for e in lost}
            for entity, events in self._log.entities.items():
                self._log.entities[entity] = [e for e in events if e.seq not in gone]
            self._log.ids.difference_update(e.event_id for e in lost)
        return [e.event_id for e in lost]

    def close(self) -> None:
        """Nothing to release: the log stays for the next open of the same URL."""


def _seq(event: _Stored) -> int:
    return event.seq


def _published(event: _Stored) -> str:
    return timestamp_text(dt.datetime.fromtimestamp(event.published_at, dt.UTC))
