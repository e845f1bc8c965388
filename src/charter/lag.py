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
from charter.records import Checkpoint
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
    contexts that own some of its partitions since a move (charter transfer), whose
    outboxes hold events of it too."""
    now = dt.datetime.fromtimestamp(clock.time_s(), dt.UTC)
    checkpoint = store.checkpoint(copy)
    outboxes = ([owner] if owner is not None else []) + list(others)
    unrelayed = [o.unrelayed(copy.of) for o in outboxes]
    on_bus = bus.backlog(
        copy.name, topic_of(entity, copy), checkpoint.position if checkpoint else 0
    )
    seconds = max([age(u.oldest, now) for u in unrelayed] + [age(on_bus.oldest, now)])
    return Lag(sum(u.events for u in unrelayed) + on_bus.events, seconds, checkpoint)


def age(moment: str | None, now: dt.datetime) -> float:
    """Seconds from a commit time (ISO 8601 text) to `now`; 0 for none or a bad one."""
    if not moment:
        return 0.0
    try:
        then = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (now - then).total_seconds())
