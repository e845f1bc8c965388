"""The rows that stores and buses hand each other through the pipeline: an outbox row (an
event as its owner recorded it), a delivery (an event as the bus hands it out), a copy's
checkpoint and lanes, a parked event, a backlog. Kept here, below both protocols, so
neither the store protocol nor the bus protocol imports the other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from charter.events import Event
from charter.lanes import Lane

FILL_MARKER = "~fill~"  # in the event id of every event a fill publishes (charter.fills)
FILL_REQUEST, FILL_MARK = "fillreq", "fill"  # the kinds of a fill's notes (charter.fills)
# In the event id of every event a repair publishes (charter.reconcile.repair): a fill's
# marker too, so a bus tells its lag by when it was published, as it does a fill's.
REPAIR_MARKER = FILL_MARKER + "repair~"
# In the event id of every event a relay publishes again after a change of visibility
# (Relay.carry_over): a fill's marker too, so its lag is counted from when it was published,
# and a projector does not time it (it was committed long before, and mostly applied).
CARRIED_MARKER = FILL_MARKER + "again~"
_OVER = "~over~"

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An event as the owner recorded it, in commit order."""

    seq: int
    event_id: str
    entity: str
    entity_id: str
    version: int
    op: str
    changed: tuple[str, ...]
    time: str
    body: bytes
    actor: str | None = None  # who made the change (history only; it is in the body too)
    private: tuple[str, ...] = ()  # private fields it set: names only, never published

    @classmethod
    def of(
        cls, event: Event, body: bytes, seq: int = 0, private: tuple[str, ...] = ()
    ) -> OutboxRow:
        """The outbox row of `event`, encoded as `body`, at `seq`."""
        return cls(
            seq,
            event.id,
            event.entity,
            event.entity_id,
            event.version,
            event.op,
            event.changed,
            event.time,
            body,
            event.actor,
            private,
        )


@dataclass(frozen=True, slots=True)
class Parked:
    """An event a copy could not apply, kept with the reason, so its id can be mended."""

    copy: str
    entity_id: str
    version: int
    event_id: str
    position: int
    reason: str
    body: bytes
    parked_at: str = ""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    position: int
    applied_at: str | None
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LaneCheckpoint:
    """How far one lane of a copy has got (None: it never applied anything)."""

    lane: Lane
    position: int | None
    applied_at: str | None


def latest_lanes(rows: Sequence[tuple[int, int, int, str | None]]) -> list[LaneCheckpoint]:
    """The lanes of the layout that applied last, from (lanes, lane, position, applied_at)
    rows; the lanes of it that never ran are there too, with no position."""
    if not rows:
        return []
    lanes = max(rows, key=lambda row: row[3] or "")[0]
    have = {row[1]: row for row in rows if row[0] == lanes}
    return [
        LaneCheckpoint(Lane(k, lanes), *(have[k][2:] if k in have else (None, None)))
        for k in range(1, lanes + 1)
    ]


@dataclass(frozen=True, slots=True)
class Backlog:
    """Events not yet through one step of the pipeline: how many, and the oldest commit time."""

    events: int
    oldest: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event as the bus hands it out: its position on the bus, the CloudEvent body, and
    the partition of its record (charter.lanes), known without reading the body. What the
    bus knows of the event besides the body names it when the body cannot (parked events)."""

    position: int
    body: bytes
    partition: int = 0
    event_id: str = ""  # as published (a fill's events carry a suffix: FillMark)
    subject: str = ""  # the record's id, where the bus keeps it apart from the body


@dataclass(frozen=True, slots=True)
class Mend:
    """One record of a copy put right from its owner (charter.reconcile.repair), by the
    copy's projector: the owner's state at `version` (None: deleted). It is written where
    the copy holds no newer version (the same version too: a copy written past charter);
    with `over` (the owner went back, and the operator accepted it) also over exactly that
    version, and the copy forgets that it saw the record deleted later."""

    entity_id: str
    version: int
    state: Row | None
    over: int | None = None

    def takes(self, held: int | None, tombstone: int | None) -> bool:
        """Whether the copy, holding version `held` (None: no row) and having seen the
        record deleted at `tombstone` (None: never), takes this mend."""
        if self.over is not None and self.over in (held, tombstone):
            return True
        if held is not None:
            return held <= self.version
        return self.state is None or tombstone is None or tombstone < self.version


def repair_id(event_id: str, token: str, over: int | None = None) -> str:
    """The event id under which a repair publishes an owner's event again (the bus drops
    an id it holds); `over`: the version of the copy it may replace."""
    return f"{event_id}{REPAIR_MARKER}{token}" + (f"{_OVER}{over}" if over is not None else "")


def repair_over(event_id: str) -> int | None:
    """The `over` of a repair's event id (repair_id)."""
    _, found, over = event_id.rpartition(_OVER)
    return int(over) if found and over.isdigit() else None


@dataclass(frozen=True, slots=True)
class CommandDelivery:
    """A command as the bus hands it to its owner (charter.commands): its idempotency key,
    its name, the request (JSON), and what the bus needs to answer it and to let it go
    (`ticket`: a row, a message)."""

    key: str
    name: str
    body: bytes
    ticket: Any = None


@dataclass(frozen=True, slots=True)
class RecordedCommand:
    """A command its owner has handled, as its store keeps it (charter_command): the key,
    the command's name, its outcome as answered (JSON: the result or the refusal), when."""

    key: str
    name: str
    result: bytes
    time: str


DRIFT_KINDS = ("missing", "extra", "stale", "divergent", "ahead", "in_flight")
"""The kinds of difference a check counts (charter.reconcile.classify), each a column of
charter_drift; all but in_flight are drift."""


@dataclass(frozen=True, slots=True)
class Drift:
    """The last check of a copy against its owner, as its own store keeps it (charter_drift,
    one row per copy): when, how long it took, how many ids of each kind it found (in
    flight too, which is no drift), a sample of the drifted ids of each kind, whether it
    looked at the whole copy, the error that stopped it, and what a repair before it
    published (by kind: the check is the one made after the repair)."""

    copy: str
    checked_at: str
    took_s: float
    counts: dict[str, int]
    sample: dict[str, list[str]]
    complete: bool = True
    error: str = ""
    repaired: dict[str, int] | None = None

    @property
    def rows(self) -> int:
        """How many ids drifted (in flight is not drift)."""
        return sum(n for kind, n in self.counts.items() if kind != "in_flight")


@dataclass(frozen=True, slots=True)
class Fence:
    """What a store says about writing some records of an entity (G10, `charter transfer`):
    partition `part` (-1: the whole entity) is this store's to write at `epoch` (`owner`),
    no longer (`fenced`: it moved to `holder`), or not yet (`waiting`: moving here)."""

    entity: str
    part: int
    epoch: int
    state: str
    holder: str
