"""What each difference is. Both sides are read again, one id at a time (the owner may have
written, the copy applied, since the digests were taken), and the owner's history says
when the first version the copy lacks was committed: within the copy's window it is in
flight (shown, never called drift); beyond it, drift of one of five kinds."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from charter import digests
from charter.model import Copy, Entity
from charter.records import Row
from charter.stores import Store

MISSING = "missing"  # the owner has the record, the copy does not
EXTRA = "extra"  # the copy holds an id the owner deleted or never had
STALE = "stale"  # the copy's version is older, and the newer one beyond its window
IN_FLIGHT = "in_flight"  # older, but within the window: on its way
DIVERGENT = "divergent"  # the same version with other values: the copy was written past charter
AHEAD = "ahead"  # the copy holds a version the owner never reached: the owner went back
KINDS = (MISSING, EXTRA, STALE, DIVERGENT, AHEAD, IN_FLIGHT)
DRIFT = frozenset({MISSING, EXTRA, STALE, DIVERGENT, AHEAD})


@dataclass(frozen=True)
class Finding:
    """One id that differs: its kind, each side's version (None: it has no such id), when
    the first version the copy lacks was committed, and (divergent) both sides' values."""

    id: str
    kind: str
    owner_version: int | None
    copy_version: int | None
    since: str | None = None
    owner_values: Row | None = None
    copy_values: Row | None = None

    @property
    def drift(self) -> bool:
        return self.kind in DRIFT

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "owner_version": self.owner_version,
            "copy_version": self.copy_version,
            "since": self.since,
        }
        if self.owner_values is not None or self.copy_values is not None:
            doc["owner_values"], doc["copy_values"] = self.owner_values, self.copy_values
        return doc


def _age(moment: str, now: float) -> float:
    then = dt.datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()
    return max(0.0, now - then)


def classify(
    owner: Store, entity: Entity, store: Store, copy: Copy, entity_id: str, now: float
) -> Finding | None:
    """The kind of difference at `entity_id` now (clock seconds); None when there is none
    any more (the copy caught up, or both deleted it, since the digests).

    The copy is read before the owner: a copy only takes versions its owner reached, so
    read in this order it can never look ahead of an owner that is writing (read the other
    way round, an owner read at v5, then writing v6, then the copy applying it and read at
    v6, looked ahead)."""
    theirs = next(iter(store.copy_rows(copy, {"id": entity_id})), None)
    mine = owner.fetch(entity, entity_id)
    if mine is None and theirs is None:
        return None
    have = None if theirs is None else int(theirs["version"])
    current = None if mine is None else int(mine["version"])
    if theirs is None and current is not None:
        deleted = store.tombstone(copy, entity_id)
        if deleted is not None and deleted >= current:
            # the copy took a delete the owner never reached (the owner went back): ahead,
            # never "missing", which a repair could not mend (the tombstone refuses it)
            return Finding(entity_id, AHEAD, current, deleted)
    if have is not None and current is not None and have > current:
        return Finding(entity_id, AHEAD, current, have)
    if have is not None and have == current:
        assert mine is not None and theirs is not None
        if _same(entity, copy, mine, theirs):
            return None
        picked = {name: mine.get(name) for name in copy.fields}
        held = {name: theirs.get(name) for name in copy.fields}
        return Finding(entity_id, DIVERGENT, current, have, None, picked, held)
    history = owner.history(entity.name, entity_id)
    if mine is None:  # the copy holds it; the owner does not (now)
        last = history[-1] if history else None
        if last is None or last.op != "deleted" or have is None or last.version <= have:
            return Finding(entity_id, EXTRA, None, have, last.time if last else None)
        kind = IN_FLIGHT if _age(last.time, now) <= copy.window_s else EXTRA
        return Finding(entity_id, kind, None, have, last.time)
    lacked = [row for row in history if row.version > (have or 0)]
    since = lacked[0].time if lacked else None
    late = since is None or _age(since, now) > copy.window_s
    kind = (MISSING if have is None else STALE) if late else IN_FLIGHT
    return Finding(entity_id, kind, current, have, since)


def _same(entity: Entity, copy: Copy, mine: Row, theirs: Row) -> bool:
    """Whether the two hold the same values on the copy's fields, as the digests compare
    them (charter.digests: a store may hand a boolean back as 1, a number as 3)."""
    fields = [entity.fields[name] for name in copy.fields]
    kinds = digests.codes(fields)
    key = [mine["id"], mine["version"]]
    left = digests.row_text(kinds, [*key, *(mine.get(f) for f in copy.fields)])
    right = digests.row_text(kinds, [*key, *(theirs.get(f) for f in copy.fields)])
    return left == right
