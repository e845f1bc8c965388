"""Reading the NATS bus: per copy, in each process, one ephemeral pull consumer (made
again when it is silent, stale or skipped deliveries), fetches that answer within their
budget, the head of an entity and a copy's backlog."""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import datetime as dt
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from charter.buses.nats.compaction import _Compaction
from charter.buses.nats.core import (
    _DEADLINE,
    API_TIMEOUT_S,
    BACKLOG_BUDGET_S,
    CREATE_TIMEOUT_S,
    FETCH_BUDGET_S,
    FETCH_TIMEOUT_S,
    NS,
    READER_IDLE_S,
    READER_SILENCE_S,
    BusError,
    RefusedError,
    log,
)
from charter.buses.nats.stream import _CONSUMER_NOT_FOUND, _ApiError, _parse_time
from charter.buses.nats.subjects import token
from charter.records import FILL_MARKER, Backlog, Delivery

# the final status of a pull request from a consumer that is there: no messages, or fewer
_ALIVE = ("404", "408")


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


def _delivered_time(msg: Msg) -> str | None:
    """The CloudEvent `time` of a delivery; the time the stream stored it if unreadable, or
    if a fill published it (its body keeps the record's commit time)."""
    if FILL_MARKER not in _event_id(msg):
        try:
            doc = orjson.loads(msg.data)
            if isinstance(doc, dict) and isinstance(doc.get("time"), str) and doc["time"]:
                return str(doc["time"])
        except orjson.JSONDecodeError:
            pass
    parts = (msg.reply or "").split(".")
    stamp = parts[7] if len(parts) == 9 and parts[7].isdigit() else ""  # as _ack_sequences
    if not stamp:
        return None
    moment = dt.datetime.fromtimestamp(int(stamp) / NS, dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


COUNT_BY_WALKING = 64  # a backlog smaller than this is counted message by message


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


class _Reading(_Compaction):
    """Consumers, fetch, head and backlog."""

    _readers: dict[tuple[str, str], _Pull]
    _chores: set[asyncio.Task[None]]

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
        the call has time for it.

        The filter is in the request's subject (JetStream's extended create), so the
        server permits reading subject by subject (charter.natsauth)."""
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
                    f"CONSUMER.CREATE.{self.stream}.{name}.{subject}", request, CREATE_TIMEOUT_S
                )
            except (_ApiError, RefusedError):
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

    async def _head(self, entity: str) -> int:
        message = await self._last(self._filter(entity))
        return int(message["seq"]) if message else 0

    def head(self, entity: str) -> int:
        return self._call(self._head(entity), API_TIMEOUT_S)

    async def _count_after(self, subject: str, after: int, owner: str) -> int:
        """How many events on `subject` come after `after`: a new consumer knows."""
        info = await self._ephemeral(subject, after, owner, "count")
        self._forget(str(info["name"]))  # else it goes away once idle
        return int(info["num_pending"])

    async def _walk_after(self, subject: str, after: int, most: int) -> int:
        """How many events on `subject` come after `after`, up to `most`, read one by one
        (a new consumer's count now and then comes one short on nats-server 2.9: status
        would say less lag than there is)."""
        found, at = 0, after
        while found < most:
            message = await self._message({"seq": at + 1, "next_by_subj": subject})
            if not message:
                break
            found, at = found + 1, int(message["seq"])
        return found

    async def _backlog(self, consumer: str, entity: str, after: int) -> Backlog:
        await self._settle()
        subject = self._filter(entity)
        if await self._head(entity) <= after:
            return Backlog(0, None)
        if self._direct:  # it may read its topic only by reading it (stream._last)
            return await self._backlog_by_reading(subject, after, token(consumer))
        count = await self._count_after(subject, after, token(consumer))
        if count < COUNT_BY_WALKING:
            count = max(count, await self._walk_after(subject, after, COUNT_BY_WALKING))
        first = await self._message({"seq": after + 1, "next_by_subj": subject})
        # The head is after `after`, so one event at least: a consumer on a server that is
        # still catching up with the stream may not have it yet.
        return Backlog(max(count, 1), self._commit_time(first) if first else None)

    async def _backlog_by_reading(self, subject: str, after: int, owner: str) -> Backlog:
        """The backlog through a consumer of its own, for a process that may not read
        stored messages by their sequence: what the consumer says is pending, or as many
        as it hands out at once when that is more (a new consumer's count may come one
        short), and the commit time of the first."""
        info = await self._ephemeral(subject, after, owner, "count")
        pull = _Pull(subject, name=str(info["name"]), owner=owner, base=after)
        try:
            await self._subscribe(pull)
            await self._probe(pull, COUNT_BY_WALKING, FETCH_TIMEOUT_S, READER_SILENCE_S)
            self._take(pull, ordered=False)
        finally:
            if pull.sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await pull.sub.unsubscribe()
            self._forget(pull.name)
        count = max(int(info["num_pending"]), len(pull.held), 1)  # the head is after `after`
        return Backlog(count, _delivered_time(pull.held[0][1]) if pull.held else None)

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
