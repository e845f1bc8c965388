"""What a copy has applied, and what compaction may forget: each copy's position as a
note (written in the background, gathered), any note put and read, the compacted mark
of an entity, and the purge up to the lowest position of its copies."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import Mapping, Sequence

import nats
import orjson

from charter.buses.nats.core import (
    _DEADLINE,
    ACK_BUDGET_S,
    ACK_INTERVAL_S,
    API_TIMEOUT_S,
    PUBLISH_TIMEOUT_S,
    BusError,
    RefusedError,
    log,
)
from charter.buses.nats.publish import _Publishing
from charter.buses.nats.stream import _epoch
from charter.buses.nats.subjects import (
    COMMANDS,
    COMPACTED,
    COPIES,
    NOTES,
    POSITION,
    note_subject,
    topic_note,
)
from charter.visibility import copy_topic, split


class _Compaction(_Publishing):
    """Position notes, notes, and compaction."""

    _may_compact: bool
    _ack_wanted: dict[tuple[str, str], int]
    _ack_tasks: dict[tuple[str, str], asyncio.Task[None]]
    _ack_refused: set[tuple[str, str]]
    _hurry: asyncio.Event | None

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
                consumer, topic = key
                subject = note_subject(self._prefix, POSITION, split(topic)[0], consumer)
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

    async def _position(self, topic: str, copy: str) -> int | None:
        """The position note of `copy` (None: none, or unreadable: then it is unknown). One
        per copy whichever topic it reads: a position means the same on every topic."""
        message = await self._last(note_subject(self._prefix, POSITION, split(topic)[0], copy))
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

    def put_note(self, kind: str, entity: str, copy: str, body: bytes) -> None:
        subject = note_subject(self._prefix, kind, entity, copy)
        item = (f"note-{secrets.token_hex(8)}", subject, body)
        self._call(self._publish([item]), PUBLISH_TIMEOUT_S)

    def note(self, kind: str, entity: str, copy: str) -> bytes | None:
        subject = note_subject(self._prefix, kind, entity, copy)
        message = self._call(self._last(subject), API_TIMEOUT_S)
        return base64.b64decode(message["data"]) if message else None

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

    async def _compacted(self, topic: str) -> int:
        message = await self._last(topic_note(self._prefix, COMPACTED, topic))
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
        topics = {self._filter(topic): topic for topic in copies}
        purged = 0
        filters = {_topic_filter(s) for s in subjects if not s.startswith(notes)}
        waiting = f"{self._prefix}.{COMMANDS}.>"
        if waiting in filters:  # commands wait at most the retention (charter.commands)
            filters.discard(waiting)
            upto = await self._purge_point(waiting, last, cutoff)
            if upto > 0:
                await self._api(f"STREAM.PURGE.{self.stream}", {"filter": waiting, "seq": upto})
        for filter_ in sorted(filters):
            topic = topics.get(filter_) or _topic_named(filter_)
            floor = await self._floor(topic, copies.get(topic, ()), last)
            upto = await self._purge_point(filter_, floor, cutoff) if floor else 0
            if upto > 0:
                # said before it is done: a copy below it has lost events (GAP)
                if upto - 1 > await self._compacted(topic):
                    subject = topic_note(self._prefix, COMPACTED, topic)
                    item = (f"compacted-{secrets.token_hex(8)}", subject, b"%d" % (upto - 1))
                    await self._publish([item])
                request = {"filter": filter_, "seq": upto}
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


def _topic_filter(subject: str) -> str:
    """The filter of the topic an event's subject is on (charter.visibility)."""
    parts = subject.split(".")
    return ".".join(parts[:5] if parts[2] == COPIES else parts[:3]) + ".>"


def _topic_named(filter_: str) -> str:
    """A topic by its filter, for one the charter does not name (as its tokens say)."""
    parts = filter_.split(".")
    return copy_topic(parts[3], parts[4]) if parts[2] == COPIES else parts[2]
