"""Who may read what on the bus: an entity's events whole, on its own topic (visibility
public), or, per copy, only the copy's fields on a topic of that copy (visibility
contract: expose only what is necessary).

A *topic* is what the `Bus` protocol's `entity` argument names: a log of its own, with
its own head, positions of its copies, backlog and compaction. An entity's topic is its
name (``Customer``); a copy's is the entity and the copy (``Customer@order_customers``).
Positions stay the bus's (one sequence for every topic), so a position means the same
on every topic. On NATS a copy's topic is a subject of its own, which the server lets
only that copy's context read (charter.natsauth); the SQLite bus keeps every topic in
one file, which anyone who can read the file reads whole.

Under contract visibility the relay publishes, for each committed event, one event per
copy of the entity: the same record, version, op, commit time and actor, `data` and the
changed fields cut to the copy's fields, and an event id made of the event's and the
copy's name (so publishing it again is a duplicate the bus drops). A change that touches
none of a copy's fields is still published to it: the copy's version must follow the
owner's. The whole public event is not published at all (nothing reads it).

When an entity's visibility changes on a running system, its copies read other topics from
where they were: what the old relay published on the old topics after a copy's position
would never reach it. The relay under the new charter sees it (`left_behind`: an old topic
holds events newer than a new one) and, before anything else, publishes each record's
newest event again on the new topics (`Relay.carry_over`); only one relay leads an outbox,
so once it leads nothing more goes to the old topics. The copies' version guard skips what
they hold; positions are the bus's, so those events lie after every copy's position."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from charter.model import CONTRACT, Charter, Copy, Entity
from charter.records import OutboxRow

SEPARATOR = "@"  # between an entity and a copy in a copy's topic (no name can hold it)


def copy_topic(entity: str, copy: str) -> str:
    """The topic of `copy`, a copy of `entity`, under contract visibility."""
    return f"{entity}{SEPARATOR}{copy}"


def split(topic: str) -> tuple[str, str | None]:
    """(entity, copy) of a copy's topic; (entity, None) of an entity's."""
    entity, _, copy = topic.partition(SEPARATOR)
    return entity, copy or None


def topic_of(entity: Entity, copy: Copy) -> str:
    """The topic `copy` reads: its own under contract visibility, else its entity's."""
    return copy_topic(entity.name, copy.name) if entity.visibility == CONTRACT else entity.name


def left_behind(head: Callable[[str], int], entity: Entity, copies: Sequence[Copy]) -> bool:
    """Whether the last events of `entity` went to the topics of its other visibility (its
    copies' under public visibility, its own under contract): the visibility changed since,
    and a copy may have missed them. `head`: a topic's newest position (Bus.head)."""
    if not copies:
        return False
    own = [copy_topic(entity.name, copy.name) for copy in copies]
    if entity.visibility == CONTRACT:
        old = head(entity.name)
        return old > 0 and any(head(topic) < old for topic in own)
    return max(head(topic) for topic in own) > head(entity.name)


def topics(charter: Charter) -> dict[str, list[str]]:
    """Every topic the charter's relays publish on (or published on before the charter
    said otherwise) -> the copies that read it: what compaction must wait for. An entity
    under contract visibility keeps its own topic with no copy, so that what is left on
    it from before goes once it is older than the retention."""
    found: dict[str, list[str]] = {}
    for name, entity in charter.entities.items():
        found[name] = []
        for copy in charter.copies_of(name):
            found.setdefault(topic_of(entity, copy), []).append(copy.name)
    return found


def narrow(row: OutboxRow, copy: Copy, doc: dict[str, Any] | None = None) -> OutboxRow:
    """`row`'s event as `copy` gets it on its topic: only its fields, its own event id.
    `doc`: the body already decoded (it is not changed)."""
    doc = dict(orjson.loads(row.body) if doc is None else doc)
    event_id = f"{row.event_id}{SEPARATOR}{copy.name}"
    doc["id"] = event_id
    data = doc.get("data")
    if isinstance(data, dict):
        doc["data"] = {name: data[name] for name in copy.fields if name in data}
    changed = tuple(name for name in row.changed if name in copy.fields)
    doc["changedfields"] = ",".join(changed)
    return OutboxRow(  # (not dataclasses.replace: this runs per event and copy)
        row.seq,
        event_id,
        copy_topic(row.entity, copy.name),
        row.entity_id,
        row.version,
        row.op,
        changed,
        row.time,
        orjson.dumps(doc),
        row.actor,
        row.private,
    )


class Routes:
    """Where a relay puts the events of the entities its context owns: an entity under
    public visibility whole on its own topic, one under contract visibility narrowed once
    per copy on the copy's topic (none at all when it has no copy)."""

    def __init__(self, owned: Iterable[Entity], copies: Iterable[Copy]) -> None:
        every = list(copies)
        self.narrowed: dict[str, list[Copy]] = {
            e.name: [c for c in every if c.of == e.name] for e in owned if e.visibility == CONTRACT
        }

    def outgoing(self, rows: Sequence[OutboxRow]) -> Sequence[OutboxRow]:
        """What goes on the bus for `rows`, in their order."""
        if not self.narrowed:
            return rows
        out: list[OutboxRow] = []
        for row in rows:
            copies = self.narrowed.get(row.entity)
            if copies is None:
                out.append(row)
            elif copies:
                doc = orjson.loads(row.body)  # once for all its copies
                out += [narrow(row, copy, doc) for copy in copies]
        return out
