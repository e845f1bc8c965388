"""The event: an owner's statement that one record changed, as a CloudEvents 1.0
JSON document on the wire."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from charter.errors import EventError

OPS = ("created", "updated", "deleted")
MAX_VERSION = 2**31 - 1  # what every store's version column holds


@dataclass(frozen=True, slots=True)
class Event:
    """One change of one record, carrying the record's full public state after it."""

    id: str
    entity: str
    entity_id: str
    version: int
    op: str
    changed: tuple[str, ...]
    state: dict[str, Any] | None
    owner: str
    time: str
    actor: str | None = None  # who made the change, when the transaction said
    # The W3C trace context of the owner's transaction (the CloudEvents distributed
    # tracing extension), when OpenTelemetry was tracing it: charter.tracing.
    traceparent: str | None = None
    tracestate: str | None = None
    # The owner's epoch for this record (G10): 1 until its ownership moves; on the wire
    # only when above 1, so events written before epochs existed read the same.
    epoch: int = 1

    def to_cloudevent(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.owner,
            "type": f"{self.entity}.{self.op}",
            "subject": self.entity_id,
            "time": self.time,
            "datacontenttype": "application/json",
            "entityversion": self.version,
            "changedfields": ",".join(self.changed),
            "data": self.state,
        }
        if self.actor is not None:
            doc["actor"] = self.actor  # a CloudEvents extension attribute
        if self.epoch != 1:
            doc["epoch"] = self.epoch
        if self.traceparent is not None:
            doc["traceparent"] = self.traceparent
            if self.tracestate:
                doc["tracestate"] = self.tracestate
        return doc

    def encode(self) -> bytes:
        return orjson.dumps(self.to_cloudevent())


def decode(body: bytes | str) -> Event:
    """Read a CloudEvent. A bad one raises EventError naming its id and version."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"event is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EventError("event is not a JSON object")
    event_id = doc.get("id")
    version = doc.get("entityversion")
    where = f"event {event_id} (version {version})"
    if doc.get("specversion") != "1.0":
        raise EventError(f"{where}: specversion must be '1.0', got {doc.get('specversion')!r}")
    kind = doc.get("type")
    if not isinstance(kind, str) or kind.count(".") != 1:
        raise EventError(f"{where}: type must be '<Entity>.<op>', got {kind!r}")
    entity, op = kind.split(".")
    if op not in OPS:
        raise EventError(f"{where}: unknown op '{op}' (expected one of {', '.join(OPS)})")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version <= MAX_VERSION:
        raise EventError(f"{where}: entityversion must be a whole number from 1 to {MAX_VERSION}")
    subject, source, time = doc.get("subject"), doc.get("source"), doc.get("time")
    if not isinstance(event_id, str) or not event_id:
        raise EventError(f"{where}: id is missing")
    if not isinstance(subject, str) or not subject:
        raise EventError(f"{where}: subject (the record id) is missing")
    if not isinstance(source, str) or not isinstance(time, str):
        raise EventError(f"{where}: source and time are required")
    data = doc.get("data")
    if op != "deleted" and not isinstance(data, dict):
        raise EventError(f"{where}: data must hold the record's public state")
    changed = doc.get("changedfields") or ""
    actor = doc.get("actor")
    if actor is not None and not isinstance(actor, str):
        raise EventError(f"{where}: actor must be a string, got {actor!r}")
    # Trace context only links spans: one that is not text is left out, never parked for.
    traceparent, tracestate = doc.get("traceparent"), doc.get("tracestate")
    traceparent = traceparent if isinstance(traceparent, str) else None
    tracestate = tracestate if isinstance(tracestate, str) and traceparent else None
    epoch = doc.get("epoch", 1)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 < epoch <= MAX_VERSION:
        raise EventError(f"{where}: epoch must be a whole number from 1, got {epoch!r}")
    return Event(
        event_id,
        entity,
        subject,
        version,
        op,
        tuple(changed.split(",")) if changed else (),
        data if isinstance(data, dict) else None,
        source,
        time,
        actor,
        traceparent,
        tracestate,
        epoch,
    )
