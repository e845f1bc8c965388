"""Every copy measured against its contract (G5): how many events and how many
seconds it is behind its owner, and whether that breaks its window."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from charter.model import Copy
from charter.system import System

OK, BREACH, NEVER_SYNCED = "OK", "BREACH", "NEVER_SYNCED"
GAP = "GAP"  # the bus compacted events the copy never applied: it is being filled again


@dataclass(frozen=True)
class LaneStatus:
    """One lane of a copy: the position it has applied (None: never), and the bus head."""

    lane: str
    position: int | None
    head: int
    last_applied_at: str | None


@dataclass(frozen=True)
class CopyStatus:
    copy: str
    of: str
    owner: str
    context: str
    window_s: float
    lag_events: int
    lag_s: float
    last_applied_at: str | None
    parked: int
    state: str
    lanes: tuple[LaneStatus, ...] = ()  # when the copy runs in lanes (charter.lanes)

    @property
    def synced(self) -> bool:
        return self.state != NEVER_SYNCED and self.lag_events == 0

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["in"] = doc.pop("context")
        return {key: doc[key] for key in JSON_KEYS}


JSON_KEYS = (
    "copy",
    "of",
    "owner",
    "in",
    "window_s",
    "lag_events",
    "lag_s",
    "last_applied_at",
    "parked",
    "state",
    "lanes",
)


def _age(moment: str | None, now: dt.datetime) -> float:
    if not moment:
        return 0.0
    try:
        then = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (now - then).total_seconds())


def copy_status(system: System, copy: Copy) -> CopyStatus:
    entity = system.charter.entities[copy.of]
    now = dt.datetime.now(dt.UTC)
    checkpoint = system.store(copy.context).checkpoint(copy)
    unrelayed = system.store(entity.owner).unrelayed(entity.name)
    on_bus = system.bus.backlog(copy.name, entity.name, checkpoint.position if checkpoint else 0)
    lag_events = unrelayed.events + on_bus.events
    lag_s = max(_age(unrelayed.oldest, now), _age(on_bus.oldest, now))
    parked = len(system.store(copy.context).parked(copy))
    lanes = system.store(copy.context).lanes(copy)
    whole = checkpoint.position if checkpoint else 0
    if all((lane.position or 0) < whole for lane in lanes):
        lanes = []  # a layout from an earlier run: the copy went on without it
    head = system.bus.head(entity.name) if lanes else 0
    if checkpoint is None:
        state = NEVER_SYNCED
    elif checkpoint.position < system.bus.compacted(entity.name):
        state = GAP
        lag_events = max(lag_events, 1)  # one lost event at least: never "synced"
    elif lag_s > copy.window_s:
        state = BREACH
    else:
        state = OK
    return CopyStatus(
        copy.name,
        copy.of,
        entity.owner,
        copy.context,
        copy.window_s,
        lag_events,
        round(lag_s, 3),
        checkpoint.applied_at if checkpoint else None,
        parked,
        state,
        tuple(
            LaneStatus(
                str(x.lane),
                None if x.position is None else max(x.position, whole),
                head,
                x.applied_at,
            )
            for x in lanes
        ),
    )


def status(system: System) -> list[CopyStatus]:
    return [copy_status(system, copy) for copy in system.charter.copies.values()]
