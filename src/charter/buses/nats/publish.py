"""Publishing on the NATS bus: a batch written at once, then its acknowledgements
collected (one event for the lot); an event not acknowledged, or refused, fails the
batch, which the relay publishes again (the duplicate window drops what is stored)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import nats
import orjson
from nats.aio.msg import Msg

from charter.buses.base import published
from charter.buses.nats.core import PUBLISH_TIMEOUT_S, BusError
from charter.buses.nats.stream import _Stream
from charter.buses.nats.subjects import topic_filter
from charter.lanes import partition
from charter.records import OutboxRow


@dataclass(eq=False)
class _Batch:
    """Publishes awaiting their acknowledgements: one event for the lot, not one each."""

    size: int
    got: dict[str, Msg] = field(default_factory=dict)  # reply subject -> acknowledgement
    done: asyncio.Event = field(default_factory=asyncio.Event)
    lost: bool = False  # the connection went while waiting


class _Publishing(_Stream):
    """Events and notes onto the stream, on their subjects."""

    _acks: dict[str, _Batch]
    _ack_inbox: str
    _ack_ids: itertools.count[int]

    # ----------------------------------------------------------------- publishing

    def _subject(self, topic: str, entity_id: str) -> str:
        """Where an event of `topic` (an entity's or a copy's) about `entity_id` goes."""
        return self._filter(topic)[:-1] + str(partition(entity_id, self.partitions))

    def _filter(self, topic: str) -> str:
        return topic_filter(self._prefix, topic)

    async def _on_publish_ack(self, msg: Msg) -> None:
        batch = self._acks.pop(msg.subject, None)
        if batch is not None:
            batch.got[msg.subject] = msg
            if len(batch.got) == batch.size:
                batch.done.set()

    async def _publish(
        self, items: Sequence[tuple[str, str, bytes]], headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish (event id, subject, body) items, each with `headers` besides its id."""
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
                    sent = {**(headers or {}), "Nats-Msg-Id": event_id}
                    await nc.publish(subject, body, reply=reply, headers=sent)
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
