"""How far behind its owner a copy is (G5): the events it has not applied yet, those the
owner's relay has not published and those on the bus after its checkpoint, and how old the
oldest of them is. `charter status` compares it with the copy's window; a wait for a
version that ran out of time says it (`CopyReader.wait_for`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from charter import clock
from charter.buses import Bus
from charter.model import Copy, Entity
from charter.records import Backlog, Checkpoint
from charter.stores import Store
from charter.visibility import topic_of


@dataclass(frozen=True, slots=True)
class Lag:
    events: int
    seconds: float
    checkpoint: Checkpoint | None  # where the copy as a whole has got to (None: never ran)


def measure(
    copy: Copy,
    entity: Entity,
    store: Store,
    owner: Store | None,
    bus: Bus,
    others: Sequence[Store] = (),
) -> Lag:
    """The lag of `copy` (of `entity`), kept in `store`, read on the topic the copy reads
    (charter.visibility). Without the `owner`'s store (a context's own
    roles may not read it) the lag is what is on the bus. `others`: the stores of the
    contexts that own some partitions of it since a move (charter transfer), whose events
    not yet relayed count too."""
    now = dt.datetime.fromtimestamp(clock.time_s(), dt.UTC)
    checkpoint = store.checkpoint(copy)
    unrelayed = owner.unrelayed(copy.of) if owner is not None else Backlog(0, None)
    for other in others if owner is not None else ():
        more = other.unrelayed(copy.of)
        oldest = min(filter(None, (unrelayed.oldest, more.oldest)), default=None)
        unrelayed = Backlog(unrelayed.events + more.events, oldest)
    on_bus = bus.backlog(
        copy.name, topic_of(entity, copy), checkpoint.position if checkpoint else 0
    )
    seconds = max(age(unrelayed.oldest, now), age(on_bus.oldest, now))
    return Lag(unrelayed.events + on_bus.events, seconds, checkpoint)


def age(moment: str | None, now: dt.datetime) -> float:
    """Seconds from a commit time (ISO 8601 text) to `now`; 0 for none or a bad one."""
    if not moment:
        return 0.0
    try:
        then = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (now - then).total_seconds())
