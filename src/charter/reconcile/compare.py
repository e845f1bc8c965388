"""Finding the ids where a copy and its owner differ, at a cost that follows the
differences: both sides digest the same id ranges inside their own databases (Store.digest,
charter.digests); a range whose digests differ is cut again, and only a small differing
range is read, as (id, version, hash) rows. What this finds is a candidate; whether it is
drift is for charter.reconcile.classify, which reads each one again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from charter import clock
from charter.digests import Digest
from charter.model import Copy, Entity, Field
from charter.reconcile.ranges import split
from charter.stores import Store

FIRST_PARTS = 1024  # the first cut of the whole id range: one pass over each table
PARTS = 64  # each later cut of a differing range
LEAF = 2048  # a differing range with no more rows than this is read as rows

T = TypeVar("T")


@dataclass
class Differences:
    """The ids found to differ, with the version each side held when its rows were read
    (None: that side had no such id); how much was compared and read to find them."""

    ids: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    ranges: int = 0  # ranges whose digests were compared
    rows: int = 0  # rows read (both sides)
    complete: bool = True  # False: the budget or the limit stopped the search
    left: int = 0  # differing ranges not looked into, when not complete


@dataclass(frozen=True, slots=True)
class _Part:
    low: str
    high: str | None
    splits: tuple[str, ...]


class Sides:
    """The owner's table and the copy's, asked the same question at the same time (each
    in its own database, so the two run in parallel)."""

    def __init__(self, owner: Store, entity: Entity, store: Store, copy: Copy) -> None:
        self.owner, self.entity, self.store, self.copy = owner, entity, store, copy
        self.fields: list[Field] = [entity.fields[name] for name in copy.fields]
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="charter-reconcile")

    def both(self, ask: Callable[[Store, Entity | Copy], T]) -> tuple[T, T]:
        owned = self._pool.submit(ask, self.owner, self.entity)
        return owned.result(), ask(self.store, self.copy)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def differences(sides: Sides, deadline: float, limit: int) -> Differences:
    """The ids that differ, found by digests; stops at `deadline` (clock.monotonic) or
    once `limit` ids are found, saying so."""
    found = Differences()
    fields = sides.fields
    owned, copied = sides.both(lambda store, table: store.id_range(table))
    ends = [r for r in (owned, copied) if r is not None]
    if not ends:
        return found
    low, high = min(r[0] for r in ends), max(r[1] for r in ends)
    queue = [_Part(low, None, tuple(split(low, high, FIRST_PARTS)))]
    while queue:
        if clock.monotonic() > deadline or len(found.ids) >= limit:
            found.complete, found.left = False, sum(len(p.splits) + 1 for p in queue)
            break
        part = queue.pop()
        mine, theirs = sides.both(_digest(fields, part))
        bounds: Sequence[str | None] = [part.low, *part.splits, part.high]
        found.ranges += len(mine)
        for number, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            if a.same(b):
                continue
            start, end = bounds[number], bounds[number + 1]
            assert start is not None
            cuts = _cuts(a, b)
            if max(a.count, b.count) <= LEAF or not cuts:
                _read(sides, start, end, found)
            else:
                queue.append(_Part(start, end, tuple(cuts)))
    return found


def _digest(fields: list[Field], part: _Part) -> Callable[[Store, Entity | Copy], list[Digest]]:
    def ask(store: Store, table: Entity | Copy) -> list[Digest]:
        return store.digest(table, fields, part.low, part.high, part.splits)

    return ask


def _cuts(a: Digest, b: Digest) -> list[str]:
    lows = [d.low for d in (a, b) if d.low is not None]
    highs = [d.high for d in (a, b) if d.high is not None]
    return split(min(lows), max(highs), PARTS) if lows and highs else []


def _read(sides: Sides, low: str, high: str | None, found: Differences) -> None:
    mine, theirs = sides.both(
        lambda store, table: store.digest_rows(table, sides.fields, low, high)
    )
    found.rows += len(mine) + len(theirs)
    owned = {i: (v, h) for i, v, h in mine}
    copied = {i: (v, h) for i, v, h in theirs}
    for entity_id in owned.keys() | copied.keys():
        a, b = owned.get(entity_id), copied.get(entity_id)
        if a != b:
            found.ids[entity_id] = (a[0] if a else None, b[0] if b else None)
