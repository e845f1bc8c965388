"""Filling a copy through the bus, for a projector that may not read the owner's store.

A new copy (or a copy with new fields) starts from the owner's current state. When its
projector can read the owner's store, it reads it (charter.projector). When it cannot (it
runs under its own context's role, `charter apply`), it asks on the bus: a *fill request*
note, with the copy's fields. The owner's relay, which reads its own store, answers: it
publishes the current version of every live record as events (under event ids with a
suffix, so the bus does not drop them as duplicates) and then a *fill mark* note saying
where they are: after `start`, up to `end`, `count` of them. The projector reads them from
the bus into the copy and goes on from `start`, so whatever was committed meanwhile is
applied too. Notes are small keyed values on the bus (the newest per key is kept); neither
side needs the other's database.

A request carries `since`, the position at which the copy registered on the bus when it
asked; the answer's range starts there. So when two relays of the owner answer the same
request (two `charter run` processes), whichever mark the copy reads, its range holds both
answers' events (the bus drops the second answer's events that repeat the first's)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from charter import clock
from charter.records import FILL_MARK, FILL_MARKER, FILL_REQUEST

if TYPE_CHECKING:
    from charter.buses.base import Bus

REQUEST, MARK = FILL_REQUEST, FILL_MARK  # the two kinds of notes, per (entity, copy)
CHECK_EVERY_S = 1.0  # how often an owner's relay looks for fill requests
MARKER = FILL_MARKER  # in the event id of every event a fill publishes (charter.records)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FillRequest:
    request: str  # a fresh id per request
    fields: tuple[str, ...]
    since: int  # where the copy registered on the bus: the answer's range starts there

    def encode(self) -> bytes:
        return orjson.dumps({"request": self.request, "fields": self.fields, "since": self.since})

    @classmethod
    def decode(cls, body: bytes) -> FillRequest:
        doc = orjson.loads(body)
        return cls(str(doc["request"]), tuple(str(f) for f in doc["fields"]), int(doc["since"]))


@dataclass(frozen=True, slots=True)
class FillMark:
    request: str  # the request it answers
    fields: tuple[str, ...]
    start: int
    end: int
    count: int

    def encode(self) -> bytes:
        return orjson.dumps(
            {"request": self.request, "fields": self.fields, "start": self.start}
            | {"end": self.end, "count": self.count}
        )

    @classmethod
    def decode(cls, body: bytes) -> FillMark:
        doc = orjson.loads(body)
        fields = tuple(str(f) for f in doc["fields"])
        start, end, count = int(doc["start"]), int(doc["end"]), int(doc["count"])
        return cls(str(doc["request"]), fields, start, end, count)

    @property
    def suffix(self) -> str:
        """What the event ids of this fill end with."""
        return fill_suffix(self.request)


def fill_suffix(request: str) -> str:
    return f"{MARKER}{request}"


def ask(bus: Bus, entity: str, copy: str, fields: tuple[str, ...], since: int) -> FillRequest:
    """Put a new fill request for `copy`, registered on the bus at `since`, on the bus."""
    request = FillRequest(clock.token(8), fields, since)
    bus.put_note(REQUEST, entity, copy, request.encode())
    return request


def request_for(bus: Bus, entity: str, copy: str) -> FillRequest | None:
    """The newest fill request for `copy`; None if there is none or it is unreadable (the
    copy's projector then asks anew, which replaces it)."""
    body = bus.note(REQUEST, entity, copy)
    try:
        return FillRequest.decode(body) if body else None
    except (ValueError, KeyError, TypeError) as exc:  # orjson's errors are ValueErrors
        log.warning("unreadable fill request for copy %s of %s, ignored: %r", copy, entity, exc)
        return None


def mark_for(bus: Bus, entity: str, copy: str) -> FillMark | None:
    """The newest fill mark for `copy`; None if there is none or it is unreadable (the
    copy then waits, and asks anew)."""
    body = bus.note(MARK, entity, copy)
    try:
        return FillMark.decode(body) if body else None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable fill mark for copy %s of %s, ignored: %r", copy, entity, exc)
        return None
