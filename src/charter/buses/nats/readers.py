"""The NATS JetStream bus: for when one machine is not enough.

URL: ``nats://[user:password@]host:port[,host:port...][?replicas=3&partitions=16]``.
Several servers name the nodes of one cluster (the client reconnects to another one when
a node goes away). ``replicas`` (default 1) is the stream's replication factor: use 3 for
a stream that matters (G7). ``partitions`` (default 16) is explained below.

The stream. One per charter: ``CHARTER_<SYSTEM>`` (upper-cased, anything but letters and
digits turned into ``_``), subjects ``charter.<system>.>``, file storage, a duplicate window
of two minutes (the ``Nats-Msg-Id`` header is the event id, so a relay that publishes a batch
again after a failure does not store an event twice), no age, count or size limit.
If the stream already exists, what is safe to change is updated (our subjects, the duplicate
window, the replicas); what is not (storage, retention, limits someone set) is left as it
is, with a warning in the log.

Retention: *limits*, and compaction by ``compact()``, not *interest*. Interest retention
looks like the definition of compaction ("forget what every consumer has acknowledged"),
but it forgets at the wrong moments for charter:

- JetStream (2.9) does not even store a message that no consumer's filter covers at the
  moment it is published, and forgets a message as soon as the consumers that exist then
  have acknowledged it. It knows only the consumers that exist, not the copies the charter
  declares: a copy that has not run yet, or whose consumer was deleted, would count for
  nothing, and lose what it has not applied.
- The charter's ``retention`` ("how long the bus keeps events that every copy has applied")
  is a grace period (for a charter being rolled out, for operators); interest retention has
  no grace at all.
- An age limit would drop events a copy has not applied, so there is none.

So the server never forgets on its own and ``compact(retention_s, copies)`` does what the
SQLite bus does: per entity, it takes the lowest position among the copies the charter
declares for it (their position notes, below; a declared copy without one, or with one
that cannot be read, keeps every event of its entity), finds (by binary search on the
stored timestamps) the newest of the entity's events at or below it that is older than the
retention, writes that sequence as the entity's *compacted* note
(``charter.<system>._note.compacted.<Entity>._``), and then purges the entity's subjects up
to there (``STREAM.PURGE`` with a subject filter and a sequence). A copy whose position is
below the compacted note has lost events it never applied (its position note said more
than its store had, say, or a charter that did not declare it compacted): ``compacted()``
tells its projector to fill it again, and ``charter status`` shows it as GAP meanwhile.
Compaction also purges every note's older messages (a note is its subject's newest
message). It returns the number of events purged. Positions are stream sequences and are
never reused. Purging is the admin's right only (charter.natsauth).

Subjects and partitions. An event of ``Customer`` with id ``i`` is published on
``charter.<system>.Customer.<p>`` with ``p = crc32(i) % partitions``. The entity in the
subject lets a NATS authorization config allow a context to publish only on
``charter.<system>.<Entity>.>`` for the entities it owns (G1 on the bus). The partition is a
stable function of the id, so every version of one record travels on one subject: a later
consumer per partition (parallel copies) still sees each id in order. Keep the number of
partitions once chosen. A copy reads its whole entity (filter
``charter.<system>.<Entity>.>``) in stream order; each delivery carries its partition (from
the subject), so a projector lane (charter.lanes) skips other lanes' events without
decoding them (it still receives them: each lane reads the whole entity).

Publishing is pipelined (all publishes are written, then the acknowledgements collected;
``publish_begin`` returns before they are, so the relay can read its next batch meanwhile),
in order, on one connection; ``publish`` raises when any event was not acknowledged and
the relay publishes the whole batch again (the duplicate window drops what the stream
already has). If a batch failed half-way, the retry may store an event after newer events
of the same batch: copies still converge, because events carry the full state and a copy
only applies a newer version (G3, G4).

Reading, and saying what a copy has applied:

- Reading: in each process, each copy reads its entity through an ephemeral pull consumer of
  its own (``<copy>-read-<random>``: no acks, memory, one replica, removed by the server
  after a minute without pulls), created at ``after + 1``. So every process that runs a copy
  sees the entity's whole log in order, exactly as from the SQLite bus. This matters: two
  ``charter run`` processes may run the same copy at once (the conformance suite does), and
  a shared durable consumer would split the events between them while the copy's store skips
  positions at or below its checkpoint, which would silently lose one process's share. After
  a crash the next process starts at its checkpoint + 1 at once: no acknowledgement timeout
  to wait for, no in-flight state on the server. A gap in the reader's delivery sequence
  (deliveries lost in a reconnect), a reader the server removed, or a caller going back
  behind what it had: the reader is reopened at the caller's ``after + 1``. What was fetched
  but not applied (the copy's transaction failed) is handed out again, in order.
- What a copy has applied: its *position note*, ``{"position": N}`` on
  ``charter.<system>._note.position.<Entity>.<copy>`` (no consumer: a consumer that
  acknowledges needs every event delivered to it first, which cost about a fifth of the
  end-to-end throughput; see benchmarks/RESULTS.md). ``ack(position)``, called after the
  copy's transaction committed, returns at once; in the background the bus writes the
  newest position per copy at most every ``ACK_INTERVAL_S`` (one note for all the
  positions that came meanwhile; ``compact``, ``backlog`` and ``close`` first send what is
  on its way). Any process may write it: the copy is one store, so a committed position is
  applied; two processes running one copy may move it back a little, which only keeps
  more. The projector's start (charter.projector) writes it, so a copy is known to
  compaction from its first run. Only the context that keeps a copy may write its position
  (charter.natsauth), so no other context can make compaction forget what it needs.
  ``charter status`` is where operators see the copies and how far each has got (there are
  no durable consumers to look at with ``nats consumer report``).

Notes (positions, the compacted mark, and charter.fills' fill requests and fill marks) are
small values kept as the newest message on ``charter.<system>._note.<kind>.<Entity>.<copy>``,
read with a direct get of the last message on that subject; they are outside every entity's
subjects, so readers never see them and compaction does not count them as events.

``head(entity)`` is the stream sequence of the entity's newest event (0 when none);
``backlog`` counts the entity's events after the copy's position (with a short-lived
consumer started there) and reads the commit time (CloudEvent ``time``) of the
first of them (the time the stream stored it, if the event is unreadable or a fill's).

The duplicate window is a time window: within two minutes an event id is dropped even if
compaction has already purged the event (harmless: every copy had applied it).

When a server of a cluster dies (G7). The stream (and so every note) has replicas: the
cluster elects new leaders among the living in seconds (the client meanwhile reconnects to
another server of the URL). A reader has one replica, on any server of the stream, and dies
with its server. Worse, JetStream (2.9) calls a server that vanished without a goodbye
(SIGKILL, a lost machine) offline only after minutes; until then nothing answers for the
consumers it held, not even "no responders" (API requests about them, and pulls, time out),
and the cluster keeps placing new one-replica consumers on it (a third of them, on three
servers), whose creation is never answered either. So:

- a reader that answers nothing to a pull within ``READER_SILENCE_S`` (a living one answers
  a no-wait pull at once) is abandoned: deleted in the background (the meta leader removes
  it even while its server is dead) and replaced by a new one at the copy's position;
- a reader (or counter) whose creation is not answered within ``CREATE_TIMEOUT_S`` is
  deleted the same way, by its name, and made again, placed anew, while the call has time;
- a position note that cannot be written now is written later (the next one covers it);
  compaction, which reads the notes, keeps everything while one cannot be read.

Every call has a budget (``FETCH_BUDGET_S`` and the like) that bounds all its waits and
retries together: a caller gets its answer, or a ``BusError``, within seconds.

Who may do what, under the permissions ``charter apply`` writes (charter.natsauth). The
admin's credentials create the stream: the first charter process that opens the bus with
them (``charter run``, ``charter status``, … with the admin's user in the bus URL); a
context's credentials may not, and a context's process started before the stream exists
says so at once, and who creates it. Only the admin compacts (purging is its right only):
the admin's ``charter run`` does, every minute; a context's ``charter run`` skips
compaction at its first try, with one line, and does not try again in that process.

Refusals. nats-server refuses a publish it does not permit asynchronously (``-ERR
'Permissions Violation for Publish to "<subject>"'``, which nats-py passes to its error
callback, lower-cased). No acknowledgement or answer will ever come, so the bus watches the
subjects of every publish and API request on its way and fails them the moment their
subject is refused: a ``RefusedError`` naming the subject and, given the charter
(``explain``: charter.natsauth.refusal), the context and whose right it is ("context
'orders' … may not publish on charter.shop.Customer.3: it does not own Customer (owner:
customers, team customer-team)"). A refused position note is said once, and not written
again by that process.

Threads. The bus is synchronous: it owns an asyncio event loop in a daemon thread and every
call submits a coroutine to it and waits for the answer with a timeout, so a call made while
the client reconnects raises (the caller retries) and never hangs. The client reconnects
forever, to any server of the URL.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import contextvars
import datetime as dt
import itertools
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

import nats
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from charter.buses.base import published
from charter.errors import Error
from charter.lanes import PARTITIONS, partition
from charter.records import FILL_MARKER, Backlog, Delivery, OutboxRow

log = logging.getLogger("charter.buses.nats")

T = TypeVar("T")

DUPLICATE_WINDOW_S = 120.0
ACK_INTERVAL_S = 0.1  # a copy's position note is written at most this often (or when asked)
READER_IDLE_S = 60.0  # a reader nobody pulls from for this long is removed by the server
FETCH_TIMEOUT_S = 0.05  # about the runner's poll interval: an idle fetch returns [] after this
PUBLISH_TIMEOUT_S = 10.0  # for the acknowledgements of one batch
API_TIMEOUT_S = 5.0  # one JetStream API request
CREATE_TIMEOUT_S = 2.0  # one attempt at creating a reader (it takes milliseconds when well)
READER_SILENCE_S = 2.0  # a reader that answers nothing for this long is abandoned
FETCH_BUDGET_S = 10.0  # the most one fetch, ack or backlog call may take, all retries included
ACK_BUDGET_S = 10.0
BACKLOG_BUDGET_S = 15.0
CALL_MARGIN_S = 2.0  # on top of a call's budget, before a caller gives up on the loop thread
NS = 1_000_000_000
NOTES = "_note"  # the subject token under which notes live
POSITION = "position"  # the note of what a copy has applied, per (entity, copy)
COMPACTED = "compacted"  # the note of how far compaction went, per entity
EVERY_COPY = "_"  # the copy token of notes about an entity as a whole

# JetStream API error codes this module tells apart
_STREAM_NOT_FOUND = 10059
_CONSUMER_NOT_FOUND = 10014
_NO_MESSAGE = 10037
_STREAM_NAME_IN_USE = 10058
_JS_UNAVAILABLE = 10008
# the final status of a pull request from a consumer that is there: no messages, or fewer
_ALIVE = ("404", "408")

# How nats-server refuses a publish (nats-py lower-cases the whole text: match it so)
_VIOLATION = re.compile(r'permissions violation for publish to "?([^"\s]+)', re.IGNORECASE)

# When the call running in this task must have answered (time.monotonic()); see _call.
_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar("deadline", default=math.inf)


class BusError(Error):
    """The NATS bus could not do what was asked: says what, on which stream, and why."""


class RefusedError(BusError):
    """The NATS server refused this process's credentials something (a permissions
    violation): says who may not publish on which subject, and whose right it is. Trying
    again does not help until the permissions or the credentials change."""

    def __init__(self, message: str, subject: str, reason: str, explained: bool) -> None:
        super().__init__(message)
        self.subject, self.reason = subject, reason
        self.explained = explained  # the reason is the charter's (charter.natsauth)


class _ApiError(BusError):
    def __init__(self, message: str, code: int, err_code: int) -> None:
        super().__init__(message)
        self.code, self.err_code = code, err_code


@dataclass(frozen=True, slots=True)
class NatsUrl:
    """A parsed ``nats://`` bus URL."""

    servers: tuple[str, ...]
    user: str | None
    password: str | None
    replicas: int
    partitions: int


def parse_url(url: str) -> NatsUrl:
    """Read ``nats://[user:password@]host:port[,host:port...][?replicas=N&partitions=M]``."""
    if not url.startswith("nats://"):
        raise ValueError(f"'{url}' is not a NATS bus URL (expected nats://host:port)")
    rest = url.removeprefix("nats://")
    netloc, _, query = rest.partition("?")
    netloc = netloc.rstrip("/")
    user = password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        name, _, secret = credentials.partition(":")
        user, password = unquote(name), unquote(secret)
    hosts = [h.strip() for h in netloc.split(",") if h.strip()]
    if not hosts:
        raise ValueError(f"NATS bus URL '{url}': no server (expected nats://host:port)")
    options = {"replicas": 1, "partitions": PARTITIONS}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in options:
            raise ValueError(f"NATS bus URL: unknown option '{key}' (known: {', '.join(options)})")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"NATS bus URL: {key} must be a whole number ≥ 1, got '{value}'")
        options[key] = int(value)
    if options["replicas"] > 5:
        raise ValueError("NATS bus URL: replicas must be at most 5 (JetStream's limit)")
    servers = tuple(h if ":" in h else f"{h}:4222" for h in hosts)
    return NatsUrl(
        tuple(f"nats://{h}" for h in servers),
        user,
        password,
        options["replicas"],
        options["partitions"],
    )


def stream_name(system: str) -> str:
    """The stream of a charter: ``CHARTER_<SYSTEM>``."""
    return "CHARTER_" + re.sub(r"[^A-Z0-9]", "_", system.upper())


def token(name: str) -> str:
    """A name made safe as one subject token or consumer name."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if not safe:
        raise ValueError("an empty name cannot be a NATS subject token")
    return safe


def note_subject(prefix: str, kind: str, entity: str, copy: str) -> str:
    """Where a note lives (charter.fills), outside every entity's subjects, so readers and
    compaction never see notes. `copy` may be the wildcard ``>``."""
    return f"{prefix}.{NOTES}.{kind}.{token(entity)}.{copy if copy == '>' else token(copy)}"


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with any number of fractional digits."""
    return _parse_time(stamp).timestamp()


def _parse_time(stamp: str) -> dt.datetime:
    text = stamp.replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match:
        head, frac, tail = match.groups()
        text = head + (frac[:7] if frac else "") + tail
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _partition(msg: Msg) -> int:
    """The partition from the subject (the last token); 0 for a subject charter did not make."""
    last = msg.subject.rpartition(".")[2]
    return int(last) if last.isdigit() else 0


def _event_id(msg: Msg) -> str:
    return msg.headers.get("Nats-Msg-Id", "") if msg.headers else ""


def _ack_sequences(reply: str | None) -> tuple[int, int] | None:
    """(stream sequence, consumer delivery sequence) from a JetStream ack subject."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    parts = reply.split(".")
    try:
        if len(parts) == 9:  # $JS.ACK.<stream>.<consumer>.<dlv>.<sseq>.<dseq>.<ts>.<pending>
            return int(parts[5]), int(parts[6])
        if len(parts) >= 12:  # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<dlv>.<sseq>.<dseq>…
            return int(parts[7]), int(parts[8])
    except ValueError:
        return None
    return None


@dataclass(eq=False)
class _Batch:
    """Publishes awaiting their acknowledgements: one event for the lot, not one each."""

    size: int
    got: dict[str, Msg] = field(default_factory=dict)  # reply subject -> acknowledgement
    done: asyncio.Event = field(default_factory=asyncio.Event)
    lost: bool = False  # the connection went while waiting


@dataclass(eq=False)
class _Pull:
    """A pull consumer as this process uses it: its inbox, what arrived, what it holds."""

    filter: str
    name: str = ""
    generation: int = 0
    inbox: str = ""
    sub: Subscription | None = None
    arrived: list[Msg] = field(default_factory=list)  # delivered, not yet looked at
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    held: list[tuple[int, Msg]] = field(default_factory=list)  # above `base`, in seq order
    base: int = 0  # the copy has applied up to here
    last_dseq: int = 0
    ends: dict[str, str] = field(default_factory=dict)  # pull request id -> final status
    requests: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    stale: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    owner: str = ""  # reader: the copy's token, in the names of its consumers


class NatsBus:
    """Events in one JetStream stream per charter; per copy, a note of what it has applied
    and, in each process running it, one ephemeral consumer to read."""

    def __init__(
        self, url: str, system: str, explain: Callable[[str], str | None] | None = None
    ) -> None:
        """`explain` says, in the charter's words, why this process may not publish on a
        subject the server refused (charter.natsauth.explainer); None: the subject only."""
        self.url = url
        self._explain = explain
        # lower-cased subject -> what waits on it, told at once when the server refuses it
        self._watchers: dict[str, dict[Callable[[str], None], str]] = {}
        self._said: set[str] = set()  # refusals nobody waited for, logged once each
        self._may_compact = True
        self.system = system
        self.options = parse_url(url)
        self.partitions = self.options.partitions
        self.stream = stream_name(system)
        self._prefix = f"charter.{token(system)}"
        self._api_prefix = "$JS.API"
        self._closed = False
        self._nc: Client | None = None
        self._acks: dict[str, _Batch] = {}  # reply subject -> the batch awaiting it
        self._ack_inbox = ""
        self._ack_ids = itertools.count(1)
        self._readers: dict[tuple[str, str], _Pull] = {}
        self._ack_wanted: dict[tuple[str, str], int] = {}  # what copies asked to acknowledge
        self._ack_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._ack_refused: set[tuple[str, str]] = set()  # positions these credentials may not write
        self._hurry: asyncio.Event | None = None  # set: acknowledge now, do not wait to gather
        self._chores: set[asyncio.Task[None]] = set()  # deletes nobody waits for
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, name=f"charter-nats:{system}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._open(), 3 * API_TIMEOUT_S + 2 * len(self.options.servers) + 10)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- the loop thread

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            tasks = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], budget: float) -> T:
        """Run `coro` on the loop thread. Whatever it waits for inside (see _remaining) is
        cut to `budget`; the caller gives up a moment after that in any case."""
        return self._submit(coro, budget)()

    def _submit(self, coro: Coroutine[Any, Any, T], budget: float) -> Callable[[], T]:
        """Start `coro` on the loop thread; returns what waits for its answer (as _call)."""
        if self._closed or not self._thread.is_alive():
            coro.close()
            raise BusError(f"the NATS bus for '{self.system}' is closed")

        async def bounded() -> T:
            _DEADLINE.set(time.monotonic() + budget)
            return await coro

        future = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        servers = ", ".join(self.options.servers)
        timeout = budget + CALL_MARGIN_S

        def answer() -> T:
            try:
                return future.result(timeout)
            except BusError:
                raise
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                if not future.done():
                    future.cancel()
                    raise BusError(
                        f"NATS bus ({servers}): no answer within {timeout:.0f}s "
                        "(servers down or reconnecting); try again"
                    ) from None
                raise BusError(f"NATS bus ({servers}): {exc!r}; try again") from exc

        return answer

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BusError(f"the NATS bus for '{self.system}' is not connected")
        return self._nc

    # ----------------------------------------------------------------- connection, stream

    async def _open(self) -> None:
        self._hurry = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            refused = _VIOLATION.search(str(exc))
            if refused is None:
                log.warning("NATS bus %s: %s", self.stream, exc)
            elif not self._refuse(refused.group(1)) and refused.group(1) not in self._said:
                self._said.add(refused.group(1))  # nobody waits for it: say it here, once
                log.warning("NATS bus %s: %s", self.stream, exc)

        async def on_disconnect() -> None:
            # what was sent on the lost connection will not be acknowledged: say so now
            for batch in set(self._acks.values()):
                batch.lost = True
                batch.done.set()
            if not self._closed:
                log.info("NATS bus %s: disconnected, reconnecting", self.stream)

        async def on_reconnect() -> None:
            url = self._nc.connected_url if self._nc else None
            log.info("NATS bus %s: reconnected to %s", self.stream, url.netloc if url else "?")

        connecting = nats.connect(
            servers=list(self.options.servers),
            user=self.options.user,
            password=self.options.password,
            name=f"charter:{self.system}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            ping_interval=5,
            max_outstanding_pings=2,
            pending_size=32 * 1024 * 1024,
            drain_timeout=2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        wait = 3.0 + 2.0 * len(self.options.servers)
        try:
            self._nc = await asyncio.wait_for(connecting, wait)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise BusError(
                f"cannot connect to NATS at {', '.join(self.options.servers)} within "
                f"{wait:.0f}s ({exc!r}); is the server running, are the credentials right?"
            ) from None
        self._ack_inbox = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._ack_inbox}.*", cb=self._on_publish_ack)
        await self._ensure_stream()

    # ----------------------------------------------------------------- refusals

    @contextlib.contextmanager
    def _watch(self, subjects: Iterable[str], refused: Callable[[str], None]) -> Iterator[None]:
        """While inside, a permissions violation on any of `subjects` calls `refused` with
        it at once: the server says so asynchronously, and the publish would wait for an
        acknowledgement (or an answer) that never comes."""
        keys = {subject.lower(): subject for subject in subjects}
        for key, subject in keys.items():
            self._watchers.setdefault(key, {})[refused] = subject
        try:
            yield
        finally:
            for key in keys:
                watchers = self._watchers.get(key)
                if watchers is not None:
                    watchers.pop(refused, None)
                    if not watchers:
                        del self._watchers[key]

    def _refuse(self, subject: str) -> bool:
        """Tell what waits on `subject` (as the server wrote it, lower-cased by the client)
        that it was refused; False when nothing waits on it."""
        watchers = self._watchers.get(subject.lower())
        for refused, original in list((watchers or {}).items()):
            refused(original)
        return bool(watchers)

    def _refusal(self, subject: str) -> RefusedError:
        """The error for a refused `subject`: the charter's reason (`explain`) if it has one,
        else who may not publish where."""
        reason = self._explain(subject) if self._explain is not None else None
        if reason is not None:
            return RefusedError(f"NATS bus, stream {self.stream}: {reason}", subject, reason, True)
        who = f"NATS user '{self.options.user}'" if self.options.user else "this connection"
        reason = f"{who} may not publish on {subject} (a permissions violation)"
        return RefusedError(f"NATS bus, stream {self.stream}: {reason}", subject, reason, False)

    @staticmethod
    def _remaining(wait: float) -> float:
        """`wait`, or less when the call in hand has less time left than that."""
        return max(0.0, min(wait, _DEADLINE.get() - time.monotonic()))

    async def _api(
        self,
        subject: str,
        request: dict[str, Any] | None = None,
        timeout: float = API_TIMEOUT_S,
    ) -> dict[str, Any]:
        payload = orjson.dumps(request) if request is not None else b""
        timeout = self._remaining(timeout)
        if timeout <= 0:
            raise BusError(f"NATS bus: out of time before a request on stream {self.stream}")
        full = f"{self._api_prefix}.{subject}"
        refused: asyncio.Future[str] = self._loop.create_future()

        def refuse(original: str) -> None:
            if not refused.done():
                refused.set_result(original)

        answer = asyncio.ensure_future(self.nc.request(full, payload, timeout=timeout))
        try:
            with self._watch((full,), refuse):
                await asyncio.wait((answer, refused), return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                raise self._refusal(refused.result())
            msg = answer.result()
        except nats.errors.NoRespondersError:
            raise _ApiError(
                f"NATS bus: JetStream is not available on {', '.join(self.options.servers)}",
                503,
                _JS_UNAVAILABLE,
            ) from None
        except nats.errors.TimeoutError:
            raise BusError(
                f"NATS bus: no answer to {' '.join(subject.split('.')[:2]).lower()} request "
                f"on stream {self.stream} within {timeout:.1f}s; try again"
            ) from None
        finally:
            if not answer.done():
                answer.cancel()
        doc: dict[str, Any] = orjson.loads(msg.data)
        error = doc.get("error")
        if error:
            raise _ApiError(
                f"NATS bus, stream {self.stream}: {error.get('description', error)}",
                int(error.get("code", 0)),
                int(error.get("err_code", 0)),
            )
        return doc

    def _stream_config(self) -> dict[str, Any]:
        return {
            "name": self.stream,
            "description": f"charter '{self.system}': owners' events (transport, not truth)",
            "subjects": [f"{self._prefix}.>"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.options.replicas,
            "duplicate_window": int(DUPLICATE_WINDOW_S * NS),
            "discard": "old",
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msgs_per_subject": -1,
            "max_msg_size": -1,
            "max_consumers": -1,
        }

    async def _ensure_stream(self) -> None:
        wanted = self._stream_config()
        deadline = time.monotonic() + 3 * API_TIMEOUT_S
        while True:
            try:
                try:
                    info = await self._api(f"STREAM.INFO.{self.stream}")
                except _ApiError as exc:
                    if exc.err_code != _STREAM_NOT_FOUND:
                        raise
                    try:
                        await self._api(f"STREAM.CREATE.{self.stream}", wanted)
                        return
                    except RefusedError as refused:
                        raise self._not_created(refused) from None
                    except _ApiError as exc2:
                        if exc2.err_code != _STREAM_NAME_IN_USE:
                            raise
                        info = await self._api(f"STREAM.INFO.{self.stream}")
                await self._reconcile_stream(info["config"], wanted)
                return
            except _ApiError as exc:
                if exc.code != 503 or time.monotonic() > deadline:
                    raise BusError(f"cannot set up stream {self.stream}: {exc}") from None
                await asyncio.sleep(0.25)  # a cluster still electing its leaders

    def _not_created(self, refused: RefusedError) -> RefusedError:
        """The stream is missing and these credentials may not create it: say who does."""
        how = (
            "; then start this one again"
            if refused.explained
            else "; the admin's credentials create it (start one charter process with them in "
            "its bus URL, e.g. `charter run` or `charter status`), then start this one again"
        )
        return RefusedError(
            f"NATS bus: stream {self.stream} does not exist yet, and {refused.reason}{how}",
            refused.subject,
            refused.reason,
            refused.explained,
        )

    async def _reconcile_stream(self, config: dict[str, Any], wanted: dict[str, Any]) -> None:
        """Update what is safe to update on an existing stream; warn about the rest."""
        update = dict(config)
        subjects = list(config.get("subjects") or [])
        if wanted["subjects"][0] not in subjects:
            update["subjects"] = [*subjects, wanted["subjects"][0]]
        for key in ("duplicate_window", "num_replicas"):
            if config.get(key) != wanted[key]:
                update[key] = wanted[key]
        for key, safe in (("retention", "limits"), ("storage", "file")):
            if config.get(key) != safe:
                log.warning(
                    "NATS bus: stream %s has %s=%s, charter expects %s; left as it is "
                    "(JetStream cannot change it; delete the stream to recreate it)",
                    self.stream,
                    key,
                    config.get(key),
                    safe,
                )
        for key in ("max_age", "max_msgs", "max_bytes", "max_msgs_per_subject"):
            if config.get(key) not in (None, 0, -1):
                log.warning(
                    "NATS bus: stream %s has %s=%s: the server may forget events a copy has "
                    "not applied; left as it is",
                    self.stream,
                    key,
                    config[key],
                )
        if update != config:
            try:
                await self._api(f"STREAM.UPDATE.{self.stream}", update)
            except _ApiError as exc:
                log.warning("NATS bus: could not update stream %s: %s", self.stream, exc)
            except RefusedError as exc:  # a context's credentials: the admin's process does
                log.warning(
                    "NATS bus: stream %s is not set up as this charter asks (%s); this "
                    "process may not update it, a process with the admin's credentials "
                    "does (%s)",
                    self.stream,
                    ", ".join(k for k in update if update[k] != config.get(k)),
                    exc,
                )

    # ----------------------------------------------------------------- publishing

    def _subject(self, entity: str, entity_id: str) -> str:
        return f"{self._prefix}.{token(entity)}.{partition(entity_id, self.partitions)}"

    def _filter(self, entity: str) -> str:
        return f"{self._prefix}.{token(entity)}.>"

    async def _on_publish_ack(self, msg: Msg) -> None:
        batch = self._acks.pop(msg.subject, None)
        if batch is not None:
            batch.got[msg.subject] = msg
            if len(batch.got) == batch.size:
                batch.done.set()

    async def _publish(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        nc = self.nc
        batch = _Batch(len(items))
        replies: list[str] = []
        refused: list[str] = []

        def refuse(subject: str) -> None:  # no acknowledgement will come for it: stop now
            refused.append(subject)
            batch.done.set()

        try:
            with self._watch({subject for _, subject, _ in items}, refuse):
                for event_id, subject, body in items:
                    reply = f"{self._ack_inbox}.{next(self._ack_ids)}"
                    self._acks[reply] = batch
                    replies.append(reply)
                    headers = {"Nats-Msg-Id": event_id}
                    await nc.publish(subject, body, reply=reply, headers=headers)
                if replies:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(batch.done.wait(), PUBLISH_TIMEOUT_S)
        except nats.errors.Error as exc:
            raise BusError(f"NATS bus: publishing to {self.stream} failed: {exc!r}") from None
        finally:
            for reply in replies:
                self._acks.pop(reply, None)
        if refused:
            raise self._refusal(refused[0])
        missing, reason = 0, ""
        for reply in replies:
            problem = self._ack_problem(batch, batch.got.get(reply))
            if problem:
                missing += 1
                reason = reason or problem
        if missing:
            raise BusError(
                f"NATS bus: {missing} of {len(items)} events were not stored in stream "
                f"{self.stream} ({reason}); publish the batch again"
            )

    @staticmethod
    def _ack_problem(batch: _Batch, msg: Msg | None) -> str:
        if msg is None:
            if batch.lost:
                return "the connection to the server was lost"
            return f"no acknowledgement within {PUBLISH_TIMEOUT_S:.0f}s"
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            return "no stream leader" if status == "503" else f"status {status}"
        if msg.data.startswith(b'{"stream":'):  # the usual answer: stored (no "error" key)
            return ""
        try:
            doc = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return "unreadable acknowledgement"
        error = doc.get("error") if isinstance(doc, dict) else "unreadable acknowledgement"
        if error:
            return str(error.get("description", error) if isinstance(error, dict) else error)
        return ""

    def publish(self, rows: Sequence[OutboxRow]) -> None:
        self.publish_begin(rows)()

    def publish_begin(self, rows: Sequence[OutboxRow]) -> Callable[[], None]:
        if not rows:
            return published
        items = [(r.event_id, self._subject(r.entity, r.entity_id), r.body) for r in rows]
        return self._submit(self._publish(items), PUBLISH_TIMEOUT_S)

    def publish_raw(self, event_id: str, entity: str, subject: str, body: bytes) -> None:
        """Put any bytes on the bus, as a misbehaving producer would (for tests and repair).
        `subject` is the entity id (it picks the partition)."""
        items = [(event_id, self._subject(entity, subject), body)]
        self._call(self._publish(items), PUBLISH_TIMEOUT_S)

    # ----------------------------------------------------------------- consumers

    async def _delete_consumer(self, name: str) -> None:
        try:
            await self._api(f"CONSUMER.DELETE.{self.stream}.{name}")
        except _ApiError as exc:
            if exc.err_code != _CONSUMER_NOT_FOUND:
                raise

    def _forget(self, name: str) -> None:
        """Delete a consumer of this process in the background: nobody waits for it.

        The meta leader removes a consumer even when the server it was placed on is dead,
        but then nobody answers: a second attempt says "not found", which is the answer."""

        async def forget() -> None:
            _DEADLINE.set(time.monotonic() + 2 * API_TIMEOUT_S)
            for _ in range(2):
                try:
                    await self._delete_consumer(name)
                    return
                except _ApiError:
                    return
                except (BusError, nats.errors.Error, OSError):
                    continue

        if self._closed or self._nc is None:
            return
        task = self._loop.create_task(forget())
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    @staticmethod
    def _start(config: dict[str, Any], after: int) -> dict[str, Any]:
        if after > 0:
            config.update(deliver_policy="by_start_sequence", opt_start_seq=after + 1)
        else:
            config["deliver_policy"] = "all"
        return config

    async def _ephemeral(
        self, subject: str, after: int, owner: str, kind: str = "read"
    ) -> dict[str, Any]:
        """A consumer of this process alone, from `after` on, named `<owner>-<kind>-<hex>`;
        the server removes it when nobody has pulled from it for a minute.

        It has one replica, which the cluster places on any server of the stream, also on
        one that died a moment ago (the cluster takes minutes to call a server gone); such
        a consumer is never answered for. So an attempt without an answer within
        CREATE_TIMEOUT_S is deleted (by its name) and made again, placed anew, as long as
        the call has time for it."""
        while True:
            name = f"{owner}-{kind}-{secrets.token_hex(4)}"
            config = self._start(
                {
                    "name": name,
                    "ack_policy": "none",
                    "filter_subject": subject,
                    "inactive_threshold": int(READER_IDLE_S * NS),
                    "mem_storage": True,
                    "num_replicas": 1,
                    "replay_policy": "instant",
                },
                after,
            )
            request = {"stream_name": self.stream, "config": config}
            try:
                return await self._api(
                    f"CONSUMER.CREATE.{self.stream}.{name}", request, CREATE_TIMEOUT_S
                )
            except _ApiError:
                raise  # refused: saying so is all there is to do
            except BaseException as exc:  # no answer (or the caller gave up): forget it
                self._forget(name)
                if not isinstance(exc, BusError) or self._remaining(2) < 1:
                    raise
                log.info(
                    "NATS bus %s: no answer creating consumer %s (a server down?); again",
                    self.stream,
                    name,
                )

    async def _subscribe(self, pull: _Pull) -> None:
        """A fresh inbox for `pull`: what is still on its way to the old one is ignored."""
        if pull.sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await pull.sub.unsubscribe()
            pull.sub = None
        pull.generation += 1
        generation = pull.generation
        pull.inbox = self.nc.new_inbox()
        pull.arrived.clear()
        pull.ends.clear()
        pull.held.clear()
        pull.last_dseq = 0

        async def arrive(msg: Msg) -> None:
            if pull.generation != generation:
                return
            status = msg.headers.get("Status") if msg.headers else None
            # a delivery (its reply acknowledges it), whatever headers its publisher gave it
            if status is None or (msg.reply or "").startswith("$JS.ACK."):
                pull.arrived.append(msg)
            elif status != "100":  # 100: heartbeat or flow control; else a request's end
                pull.ends[msg.subject.rsplit(".", 1)[-1]] = status
                if status not in _ALIVE:  # 409 consumer deleted, 503 no responders, …
                    pull.stale = True
            pull.wake.set()

        pull.sub = await self.nc.subscribe(f"{pull.inbox}.*", cb=arrive)

    # reading: one ephemeral consumer per copy in each process ----------------------------

    async def _reopen(self, reader: _Pull, after: int) -> None:
        """Read the entity again from `after + 1` on, with a new consumer (the old one, if
        any, is deleted in the background: its server may be dead)."""
        old, reader.name, reader.stale = reader.name, "", True
        await self._subscribe(reader)
        reader.base = after
        if old:
            self._forget(old)
        info = await self._ephemeral(reader.filter, after, reader.owner)
        reader.name, reader.stale = str(info["name"]), False

    def _take(self, pull: _Pull, ordered: bool) -> bool:
        """Move what arrived into `held` (seq order, above `base`). For a reader, False when
        its deliveries are not consecutive (some were lost): it must be reopened."""
        arrived, pull.arrived = pull.arrived, []
        for msg in arrived:
            sequences = _ack_sequences(msg.reply)
            if sequences is None:
                continue
            seq, dseq = sequences
            if ordered:
                if dseq != pull.last_dseq + 1:
                    log.info(
                        "NATS bus %s: reader of %s got delivery #%d after #%d; reopening",
                        self.stream,
                        pull.filter,
                        dseq,
                        pull.last_dseq,
                    )
                    return False
                pull.last_dseq = dseq
            if seq <= pull.base:
                continue
            if not pull.held or seq > pull.held[-1][0]:  # the usual case: in order
                pull.held.append((seq, msg))
                continue
            index = bisect.bisect_left(pull.held, seq, key=lambda item: item[0])
            if index < len(pull.held) and pull.held[index][0] == seq:
                pull.held[index] = (seq, msg)  # delivered again: keep the newest (its ack)
            else:
                pull.held.insert(index, (seq, msg))
        return True

    @staticmethod
    def _drop(pull: _Pull, upto: int) -> Msg | None:
        """Forget what is at or below `upto`; returns the newest message forgotten."""
        pull.base = max(pull.base, upto)
        cut = bisect.bisect_right(pull.held, pull.base, key=lambda item: item[0])
        newest = pull.held[cut - 1][1] if cut else None
        del pull.held[:cut]
        return newest

    async def _request(self, pull: _Pull, body: dict[str, Any]) -> str:
        """Ask the consumer for messages; returns the request's id (in its reply subject)."""
        request = str(next(pull.requests))
        await self.nc.publish(
            f"{self._api_prefix}.CONSUMER.MSG.NEXT.{self.stream}.{pull.name}",
            orjson.dumps(body),
            reply=f"{pull.inbox}.{request}",
        )
        return request

    @staticmethod
    def _arrived(pull: _Pull) -> int:
        return len(pull.arrived)

    @staticmethod
    async def _wait(pull: _Pull, deadline: float, done: Callable[[], bool]) -> None:
        deadline = min(deadline, _DEADLINE.get())
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            pull.wake.clear()
            try:
                await asyncio.wait_for(pull.wake.wait(), remaining)
            except TimeoutError:
                return

    async def _probe(self, pull: _Pull, batch: int, wait: float, silence: float) -> str | None:
        """Ask for what is there now (up to `batch`): the final status of the request
        (404: nothing, 408: less than `batch`), "" when `batch` came, None without answer.

        Waits up to `wait` for all of it; but as long as nothing at all came, up to
        `silence`: a consumer answers a no_wait request at once, with messages or a status,
        while one whose server died answers nothing, ever (not even "no responders")."""
        pull.ends.clear()  # the ends of older requests say nothing about this one
        request = await self._request(pull, {"batch": batch, "no_wait": True})
        start = time.monotonic()

        def done() -> bool:
            return request in pull.ends or self._arrived(pull) >= batch

        await self._wait(pull, start + min(wait, silence), done)
        if not done():
            if self._arrived(pull):
                if wait > silence:
                    await self._wait(pull, start + wait, done)
            elif silence > wait:
                await self._wait(
                    pull,
                    start + silence,
                    lambda: request in pull.ends or self._arrived(pull) > 0,
                )
        if request in pull.ends:
            return pull.ends.pop(request)
        return "" if self._arrived(pull) >= batch else None

    async def _pull(self, reader: _Pull, limit: int) -> None:
        """Up to `limit` events: what is there now, else the first to come within the
        fetch timeout (the rest of that request arrives for the next fetch). A reader that
        does not answer at all is marked stale (its server died, or it was removed)."""
        end = await self._probe(reader, limit, FETCH_TIMEOUT_S, READER_SILENCE_S)
        if self._arrived(reader) or (end is None and time.monotonic() >= _DEADLINE.get()):
            return  # (out of time: the reader may well be alive)
        if end is None or end not in _ALIVE:
            if not reader.stale:
                log.info(
                    "NATS bus %s: reader %s of %s %s; reading from a new one",
                    self.stream,
                    reader.name,
                    reader.filter,
                    "is silent" if end is None else f"answered {end}",
                )
            reader.stale = True
            return
        if end != "404":
            return  # 408: the request ended, and nothing more is there now
        linger = await self._request(reader, {"batch": limit, "expires": int(FETCH_TIMEOUT_S * NS)})
        await self._wait(
            reader,
            time.monotonic() + FETCH_TIMEOUT_S + 0.02,
            lambda: linger in reader.ends or self._arrived(reader) > 0,
        )

    async def _fetch(self, consumer: str, entity: str, after: int, limit: int) -> list[Delivery]:
        key = (consumer, entity)
        reader = self._readers.get(key)
        if reader is None:
            reader = self._readers[key] = _Pull(self._filter(entity), owner=token(consumer))
        async with reader.lock:
            for _ in range(2):  # a second time when the reader turned out to be gone
                if (
                    not reader.name
                    or reader.stale
                    or after < reader.base
                    or not self._take(reader, ordered=True)
                ):
                    await self._reopen(reader, after)
                self._drop(reader, after)
                if reader.held:
                    break
                await self._pull(reader, limit)
                if not self._take(reader, ordered=True):
                    reader.stale = True  # a gap: what came before it is still good
                self._drop(reader, after)
                if reader.held or not reader.stale:
                    break
            return [
                Delivery(seq, msg.data, _partition(msg), _event_id(msg))
                for seq, msg in reader.held[:limit]
            ]

    def fetch(self, consumer: str, entity: str, after: int, limit: int) -> list[Delivery]:
        return self._call(self._fetch(consumer, entity, after, max(1, limit)), FETCH_BUDGET_S)

    # what a copy has applied: a position note per copy -----------------------------------

    def ack(self, consumer: str, entity: str, position: int) -> None:
        """Returns at once: the copy's position note is written in the background, one for
        all the positions that came meanwhile, at most every ACK_INTERVAL_S, so a projector
        never waits for it. compact, backlog and close first wait for what is on its way.
        If the stream cannot take it now, it is written later: the next one covers it."""
        if self._closed or not self._thread.is_alive():
            raise BusError(f"the NATS bus for '{self.system}' is closed")
        self._loop.call_soon_threadsafe(self._want_ack, (consumer, entity), position)

    def _want_ack(self, key: tuple[str, str], position: int) -> None:
        if key in self._ack_refused:
            return
        if position > self._ack_wanted.get(key, -1):
            self._ack_wanted[key] = position
        task = self._ack_tasks.get(key)
        if task is None or task.done():
            self._ack_tasks[key] = self._loop.create_task(self._acknowledge(key))

    async def _acknowledge(self, key: tuple[str, str]) -> None:
        done, failures = -1, 0
        while self._nc is not None:
            position = self._ack_wanted.get(key, -1)
            if position <= done:
                return
            _DEADLINE.set(time.monotonic() + ACK_BUDGET_S)
            try:
                consumer, entity = key
                subject = note_subject(self._prefix, POSITION, entity, consumer)
                body = orjson.dumps({"position": position})
                await self._publish([(f"position-{secrets.token_hex(8)}", subject, body)])
                done, failures = position, 0
                # let the next positions gather: one note for them all
                assert self._hurry is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), ACK_INTERVAL_S)
            except RefusedError as exc:  # it would be refused again: say so once, stop
                self._ack_refused.add(key)
                log.warning(
                    "NATS bus %s: copy %s applied up to %d, and this process may not write "
                    "its position (not tried again; compaction keeps what the copy has not "
                    "applied): %s",
                    self.stream,
                    key[0],
                    position,
                    exc.reason,
                )
                return
            except (BusError, nats.errors.Error, OSError, TimeoutError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "NATS bus %s: copy %s applied up to %d; writing its position failed "
                        "(%s), trying again",
                        self.stream,
                        key[0],
                        position,
                        exc,
                    )
                await asyncio.sleep(min(2.0, 0.05 * 2**failures))

    async def _position(self, entity: str, copy: str) -> int | None:
        """The position note of `copy` (None: none, or unreadable: then it is unknown)."""
        message = await self._message(
            {"last_by_subj": note_subject(self._prefix, POSITION, entity, copy)}
        )
        if message is None:
            return None
        try:
            return int(orjson.loads(base64.b64decode(message.get("data") or ""))["position"])
        except (ValueError, KeyError, TypeError) as exc:  # orjson's errors are ValueErrors
            log.warning(
                "NATS bus %s: unreadable position of copy %s (%r): taken as unknown",
                self.stream,
                copy,
                exc,
            )
            return None

    async def _settle(self) -> None:
        """Wait (within the call's budget) for the acknowledgements on their way."""
        tasks = [task for task in self._ack_tasks.values() if not task.done()]
        if tasks and self._hurry is not None:
            self._hurry.set()
            try:
                await asyncio.wait(tasks, timeout=self._remaining(ACK_BUDGET_S))
            finally:
                self._hurry.clear()

    # ----------------------------------------------------------------- positions, lag

    async def _message(self, request: dict[str, Any]) -> dict[str, Any] | None:
        try:
            doc = await self._api(f"STREAM.MSG.GET.{self.stream}", request)
        except _ApiError as exc:
            if exc.err_code == _NO_MESSAGE:
                return None
            raise
        message: dict[str, Any] = doc["message"]
        return message

    def put_note(self, kind: str, entity: str, copy: str, body: bytes) -> None:
        subject = note_subject(self._prefix, kind, entity, copy)
        item = (f"note-{secrets.token_hex(8)}", subject, body)
        self._call(self._publish([item]), PUBLISH_TIMEOUT_S)

    def note(self, kind: str, entity: str, copy: str) -> bytes | None:
        request = {"last_by_subj": note_subject(self._prefix, kind, entity, copy)}
        message = self._call(self._message(request), API_TIMEOUT_S)
        return base64.b64decode(message["data"]) if message else None

    async def _head(self, entity: str) -> int:
        message = await self._message({"last_by_subj": self._filter(entity)})
        return int(message["seq"]) if message else 0

    def head(self, entity: str) -> int:
        return self._call(self._head(entity), API_TIMEOUT_S)

    async def _count_after(self, subject: str, after: int, owner: str) -> int:
        """How many events on `subject` come after `after`: a new consumer knows."""
        info = await self._ephemeral(subject, after, owner, "count")
        self._forget(str(info["name"]))  # else it goes away once idle
        return int(info["num_pending"])

    async def _backlog(self, consumer: str, entity: str, after: int) -> Backlog:
        await self._settle()
        subject = self._filter(entity)
        if await self._head(entity) <= after:
            return Backlog(0, None)
        count = await self._count_after(subject, after, token(consumer))
        first = await self._message({"seq": after + 1, "next_by_subj": subject})
        # The head is after `after`, so one event at least: a consumer on a server that is
        # still catching up with the stream may not have it yet.
        return Backlog(max(count, 1), self._commit_time(first) if first else None)

    @staticmethod
    def _commit_time(message: dict[str, Any]) -> str | None:
        """The CloudEvent `time` of a stored message; the time it was stored if unreadable,
        or if a fill published it (its body keeps the record's commit time)."""
        try:
            filled = FILL_MARKER.encode() in base64.b64decode(message.get("hdrs") or "")
            doc = None if filled else orjson.loads(base64.b64decode(message.get("data") or ""))
            if isinstance(doc, dict) and isinstance(doc.get("time"), str) and doc["time"]:
                return str(doc["time"])
        except (orjson.JSONDecodeError, ValueError):
            pass
        stored = message.get("time")
        if not stored:
            return None
        return _parse_time(str(stored)).isoformat().replace("+00:00", "Z")

    def backlog(self, consumer: str, entity: str, after: int) -> Backlog:
        return self._call(self._backlog(consumer, entity, after), BACKLOG_BUDGET_S)

    # ----------------------------------------------------------------- compaction

    async def _purge_point(self, subject: str, floor: int, cutoff: float) -> int:
        """The first sequence to keep: every event on `subject` before it is at or below
        `floor` and was stored before `cutoff`."""

        async def qualifying(seq: int) -> int | None:
            message = await self._message({"seq": seq, "next_by_subj": subject})
            if message is None or int(message["seq"]) > floor:
                return None
            if _epoch(str(message["time"])) >= cutoff:
                return None
            return int(message["seq"])

        first = await qualifying(1)
        if first is None:
            return 0
        at_floor = await qualifying(floor)
        if at_floor is not None:
            return at_floor + 1
        low, high = first, floor  # the event at `low` qualifies; none from `high` on does
        while high - low > 1:
            middle = (low + high) // 2
            found = await qualifying(middle)
            if found is None:
                high = middle
            else:
                low = found
        return low + 1

    async def _compacted(self, entity: str) -> int:
        message = await self._message(
            {"last_by_subj": note_subject(self._prefix, COMPACTED, entity, EVERY_COPY)}
        )
        try:
            return int(orjson.loads(base64.b64decode(message["data"]))) if message else 0
        except (ValueError, TypeError):  # unreadable: only compaction writes it, so not here
            return 0

    def compacted(self, entity: str) -> int:
        return self._call(self._compacted(entity), API_TIMEOUT_S)

    async def _floor(self, entity: str, copies: Sequence[str], last: int) -> int:
        """The lowest position of the copies (`last` when none); 0 when one is unknown."""
        floor = last
        for copy in copies:
            position = await self._position(entity, copy)
            if position is None:
                log.info(
                    "NATS bus %s: copy %s of %s has no position yet; its events stay",
                    self.stream,
                    copy,
                    entity,
                )
                return 0
            floor = min(floor, position)
        return floor

    async def _compact(self, retention_s: float, copies: Mapping[str, Sequence[str]]) -> int:
        await self._settle()
        cutoff = time.time() - retention_s
        info = await self._api(
            f"STREAM.INFO.{self.stream}", {"subjects_filter": f"{self._prefix}.>"}
        )
        last = int(info["state"].get("last_seq", 0))
        subjects: dict[str, int] = info["state"].get("subjects") or {}
        notes = f"{self._prefix}.{NOTES}."
        names = {token(entity): entity for entity in copies}
        purged = 0
        for tok in sorted({s.split(".")[2] for s in subjects if not s.startswith(notes)}):
            entity = names.get(tok, tok)
            floor = await self._floor(entity, copies.get(entity, ()), last)
            upto = await self._purge_point(f"{self._prefix}.{tok}.>", floor, cutoff) if floor else 0
            if upto > 0:
                # said before it is done: a copy below it has lost events (GAP)
                if upto - 1 > await self._compacted(entity):
                    subject = note_subject(self._prefix, COMPACTED, entity, EVERY_COPY)
                    item = (f"compacted-{secrets.token_hex(8)}", subject, b"%d" % (upto - 1))
                    await self._publish([item])
                request = {"filter": f"{self._prefix}.{tok}.>", "seq": upto}
                doc = await self._api(f"STREAM.PURGE.{self.stream}", request)
                purged += int(doc.get("purged", 0))
        for subject, count in subjects.items():  # each note is its newest message
            if subject.startswith(notes) and int(count) > 1:
                await self._api(f"STREAM.PURGE.{self.stream}", {"filter": subject, "keep": 1})
        return purged

    def compact(self, retention_s: float, copies: Mapping[str, Sequence[str]]) -> int:
        """As Bus.compact. A process whose credentials may not compact (a context's, under
        charter.natsauth: compaction is the admin's) says so once and from then on leaves
        compaction to the admin's process: it returns 0 without trying."""
        if not self._may_compact:
            return 0
        try:
            return self._call(self._compact(retention_s, copies), 60.0)
        except RefusedError as exc:
            self._may_compact = False
            log.warning(
                "NATS bus %s: compaction skipped, and not tried again by this process: %s",
                self.stream,
                exc.reason
                if exc.explained
                else f"{exc.reason}; a process with the admin's credentials compacts "
                "(the admin's `charter run`)",
            )
            return 0

    # ----------------------------------------------------------------- closing

    async def _shutdown(self) -> None:
        if self._nc is None or self._nc.is_closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settle(), 3)
        readers = [r.name for r in self._readers.values() if r.name]
        if readers and self._nc.is_connected:  # else they go away once idle
            with contextlib.suppress(BusError, TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(self._delete_consumer(n) for n in readers)), 2
                )
        nc, self._nc = self._nc, None
        with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
            await asyncio.wait_for(nc.drain(), 3)
        if not nc.is_closed:
            await nc.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._thread.is_alive():
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
                try:
                    future.result(10)
                except (TimeoutError, nats.errors.Error, OSError):
                    future.cancel()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> NatsBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def delete_stream(url: str, system: str) -> bool:
        """Delete the stream of the charter `system` (tests, teardown). False if none."""
        options = parse_url(url)
        name = stream_name(system)

        async def delete() -> bool:
            nc = await nats.connect(
                servers=list(options.servers),
                user=options.user,
                password=options.password,
                connect_timeout=2,
                max_reconnect_attempts=1,
            )
            try:
                msg = await nc.request(f"$JS.API.STREAM.DELETE.{name}", timeout=API_TIMEOUT_S)
                doc = orjson.loads(msg.data)
                return bool(doc.get("success"))
            finally:
                await nc.close()

        return asyncio.run(delete())


__all__ = ["BusError", "NatsBus", "NatsUrl", "parse_url", "stream_name"]
