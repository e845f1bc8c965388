"""Every copy measured against its contract (G5): how many events and how many
seconds it is behind its owner, and whether that breaks its window. A copy with parked
events is wrong for those ids however fresh it is: DEGRADED (a broken window still wins).
A copy whose last reconciliation (charter.reconcile, kept in its store) found drift is
DRIFT: rows differ from the owner beyond what is in flight.

And how it has kept its promise, from its latency histogram (charter.latency): p50 and
p99 over the last 5 minutes, and the share of events applied within its window over the
last hour and day. A span of N minutes is this minute and the N - 1 before it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from charter import clock, lag, latency
from charter.errors import Error
from charter.model import Copy
from charter.records import Drift
from charter.system import System
from charter.visibility import topic_of

OK, BREACH, NEVER_SYNCED, DEGRADED = "OK", "BREACH", "NEVER_SYNCED", "DEGRADED"
UNKNOWN = "UNKNOWN"  # could not be measured: a store or the bus failed (`error` says which)
GAP = "GAP"  # the bus compacted events the copy never applied: it is being filled again
DRIFT = "DRIFT"  # its last reconciliation found rows that differ from the owner beyond in flight
FAILING = frozenset({BREACH, DEGRADED, GAP, DRIFT})  # what `charter status --strict` exits 3 on


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
    error: str = ""  # why the state is UNKNOWN
    latency_p50_s: float | None = None  # over the last 5 minutes; None: nothing applied
    latency_p99_s: float | None = None
    within_window_1h: float | None = None  # share (0 to 1) applied within the window
    within_window_1d: float | None = None
    drift: int | None = None  # ids drifted at its last check (None: never checked)
    last_check: Drift | None = None  # that check, as its store keeps it (charter_drift)

    @property
    def synced(self) -> bool:
        return self.state not in (NEVER_SYNCED, UNKNOWN) and self.lag_events == 0

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["in"] = doc.pop("context")
        doc["drift"] = None if self.last_check is None else drift_json(self.last_check)
        result = {key: doc[key] for key in JSON_KEYS}
        if self.state == UNKNOWN:
            result["lag_events"] = result["lag_s"] = None  # not 0: nobody knows
            result["error"] = self.error
        return result


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
    "latency_p50_s",
    "latency_p99_s",
    "within_window_1h",
    "within_window_1d",
    "drift",
)  # and "error", when the state is UNKNOWN
SPANS_MIN = (5, 60, 1440)  # the spans of the quantiles, and of the two shares


def drift_json(check: Drift) -> dict[str, Any]:
    """A copy's last check, for `charter status --json`."""
    return {
        "rows": check.rows,
        "counts": check.counts,
        "checked_at": check.checked_at,
        "took_s": check.took_s,
        "complete": check.complete,
        "sample": check.sample,
        "repaired": check.repaired,
        "error": check.error or None,
    }


Kept = tuple[float | None, float | None, float | None, float | None]
NOTHING_KEPT: Kept = (None, None, None, None)


def kept(system: System, copy: Copy) -> Kept:
    """How `copy` kept its promise, from its latency histogram: p50 and p99 (seconds) over
    the last 5 minutes, the share within its window over the last hour and day; None where
    nothing was applied in the span."""
    store, now = system.store(copy.context), latency.minute(clock.time_ns())
    recent, hour, day = (store.latency(copy, now - span + 1) for span in SPANS_MIN)
    return (
        _rounded(latency.quantile(recent, 0.5)),
        _rounded(latency.quantile(recent, 0.99)),
        _rounded(latency.within(hour, copy.window_s)),
        _rounded(latency.within(day, copy.window_s)),
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def copy_status(
    system: System, copy: Copy, owner: bool = True, history: bool = False
) -> CopyStatus:
    """`copy` against its contract. Without `owner`, the owner's store is not read (a
    context's own roles may not): the lag is what is on the bus. With `history`, also how
    it kept its promise (kept)."""
    entity = system.charter.entities[copy.of]
    owner_store = system.store(entity.owner) if owner else None
    others = [system.store(c) for c in entity.owners if c != entity.owner] if owner else []
    measured = lag.measure(
        copy, entity, system.store(copy.context), owner_store, system.bus, others
    )
    checkpoint, lag_events, lag_s = measured.checkpoint, measured.events, measured.seconds
    topic = topic_of(entity, copy)  # what the copy reads (charter.visibility)
    parked = len(system.store(copy.context).parked(copy))
    last_check = system.store(copy.context).drift(copy)
    lanes = system.store(copy.context).lanes(copy)
    whole = checkpoint.position if checkpoint else 0
    if all((lane.position or 0) < whole for lane in lanes):
        lanes = []  # a layout from an earlier run: the copy went on without it
    head = system.bus.head(topic) if lanes else 0
    if checkpoint is None or checkpoint.fields != copy.fields:
        state = NEVER_SYNCED  # with these fields: a fill of the new ones is still to come
    elif checkpoint.position < system.bus.compacted(topic):
        state = GAP
        lag_events = max(lag_events, 1)  # one lost event at least: never "synced"
    elif lag_s > copy.window_s:
        state = BREACH
    elif last_check is not None and last_check.rows:
        state = DRIFT
    elif parked:
        state = DEGRADED
    else:
        state = OK
    p50, p99, hour, day = kept(system, copy) if history else NOTHING_KEPT
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
        latency_p50_s=p50,
        latency_p99_s=p99,
        within_window_1h=hour,
        within_window_1d=day,
        drift=None if last_check is None else last_check.rows,
        last_check=last_check,
    )


def status(system: System, context: str | None = None) -> list[CopyStatus]:
    """Every copy (or those kept in `context`, reading only its store and the bus). A copy
    that cannot be measured is there too, UNKNOWN, with the error that stopped it."""
    charter = system.charter
    if context is not None:
        system.context(context)  # an unknown name fails here, with a hint
    copies = charter.copies_in(context) if context else list(charter.copies.values())
    rows = []
    for copy in copies:
        try:
            rows.append(copy_status(system, copy, owner=context is None, history=True))
        except Error as exc:
            rows.append(unknown(system, copy, exc))
    return rows


def unknown(system: System, copy: Copy, exc: Error) -> CopyStatus:
    owner = system.charter.entities[copy.of].owner
    cells = (copy.name, copy.of, owner, copy.context, copy.window_s, 0, 0.0, None, 0)
    return CopyStatus(*cells, UNKNOWN, error=str(exc))
