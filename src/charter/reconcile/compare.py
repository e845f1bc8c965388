"""Finding the ids where a copy and its owner differ, at a cost that follows the
differences: both sides digest their rows grouped by a prefix of the id, inside their own
databases, in one pass each, at the same time (Store.digest_under, charter.digests); only
the groups whose digests differ are looked into again, all those of one level in one query a
side (a longer prefix under each, through the primary key), and small differing groups are
read, as (id, version, hash) rows, many groups at once. Two PostgreSQL sides digest by
PostgreSQL's own row hash (Store.native_hash: a fifth of the md5's cost); any other pair by
charter's canonical encoding; rows are always compared canonically. What this finds is a
candidate; whether it is drift is for charter.reconcile.classify, which reads each one
again."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from charter import clock, digests
from charter.digests import Digest
from charter.errors import OutOfTimeError
from charter.model import Copy, Entity, Field
from charter.reconcile import prefixes
from charter.stores import Store

FIRST_PARTS = 32768  # the first grouping of the whole table: one pass over each side, its
# groups small (at 1,000,000 rows, 21,094 of 47 rows: 100 differences read 9,000 rows; at
# 4096 parts, 1,320 groups of 758 rows read 147,148), their digests cheap to send
PARTS = 16  # at least this many parts to each later cut of a differing group
LEAF = 256  # a differing group with no more rows than this is read as rows
BATCH = 512  # differing groups cut (digested) or read as rows in one query a side

T = TypeVar("T")


@dataclass
class Differences:
    """The ids found to differ, with the version each side held when its rows were read
    (None: that side had no such id); how much was compared and read to find them."""

    ids: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    ranges: int = 0  # groups whose digests were compared
    rows: int = 0  # rows read (both sides)
    complete: bool = True  # False: the budget or the limit stopped the search
    left: int = 0  # differing groups not looked into, when not complete


class Sides:
    """The owner's table and the copy's, asked the same question at the same time (each
    in its own database, so the two run in parallel)."""

    def __init__(self, owner: Store, entity: Entity, store: Store, copy: Copy) -> None:
        self.owner, self.entity, self.store, self.copy = owner, entity, store, copy
        self.fields: list[Field] = [entity.fields[name] for name in copy.fields]
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="charter-reconcile")
        self._native: bool | None = None

    @property
    def native(self) -> bool:
        """Whether both sides hash a row alike by their own hash (Store.native_hash: both
        PostgreSQL, the same functions and column types), a fifth of the canonical one's
        cost: the groups are then digested that way; rows are read canonically."""
        if self._native is None:
            mine, theirs = self.both(lambda store, table: store.native_hash(table, self.fields))
            self._native = mine is not None and mine == theirs
        return self._native

    def both(self, ask: Callable[[Store, Entity | Copy], T]) -> tuple[T, T]:
        owned = self._pool.submit(ask, self.owner, self.entity)
        copied = ask(self.store, self.copy)  # while the owner answers: not after it
        return owned.result(), copied

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def differences(sides: Sides, deadline: float, limit: int) -> Differences:
    """The ids that differ, found by digests; stops at `deadline` (clock.monotonic) or
    once `limit` ids are found, saying so."""
    found = Differences()
    owned, copied = sides.both(lambda store, table: store.id_range(table))
    ends = [r for r in (owned, copied) if r is not None]
    if not ends:
        return found
    low, high = min(r[0] for r in ends), max(r[1] for r in ends)
    # under no prefix, though every id shares one: the first pass reads the whole table,
    # and through its primary key's index (a range) it read SQLite's table in random order
    queue = [("", prefixes.first_length(low, high, FIRST_PARTS))]
    return descend(sides, queue, found, deadline, limit)


def descend(
    sides: Sides,
    queue: list[tuple[str, int]],
    found: Differences,
    deadline: float,
    limit: int,
    leaves: list[str] | None = None,
) -> Differences:
    """Compare the groups of each (prefix, length) in `queue`, cutting differing ones
    again, reading small ones (`leaves`: groups known to differ, to read); shared with the
    incremental check, which starts from the buckets that differ. The prefixes cut at one
    length are digested together (up to BATCH in one query a side), so a level of the
    descent is one round trip whatever the number of differences; the leaves are read
    together once nothing is left to cut."""
    queue, leaves = list(queue), list(leaves or [])
    while queue or leaves:
        if clock.monotonic() > deadline or len(found.ids) >= limit:
            found.complete, found.left = False, len(queue) + len(leaves)
            break
        if not queue or len(leaves) >= BATCH:
            read(sides, leaves[:BATCH], found)
            del leaves[:BATCH]
            continue
        length = queue[-1][1]
        cut = [prefix for prefix, at in queue if at == length][:BATCH]
        taken = set(cut)
        rest = [(prefix, at) for prefix, at in queue if at != length or prefix not in taken]
        try:  # the budget bounds a pass too: the first is the whole table
            mine, theirs = sides.both(_digest(sides.fields, cut, length, sides.native, deadline))
        except OutOfTimeError:
            found.complete, found.left = False, len(queue) + len(leaves)
            break
        queue = rest
        found.ranges += len(mine.keys() | theirs.keys())
        cuts, most = [], 0
        for key in _differing(mine, theirs):
            size = max(mine.get(key, Digest()).count, theirs.get(key, Digest()).count)
            if size <= LEAF or len(key) < length:  # shorter: the group is one id
                leaves.append(key)
            else:
                cuts.append(key)
                most = max(most, size)
        # all cut to one length, as the largest needs: the next level is one query a side
        more = max(PARTS, -(-most * 8 // max(LEAF, 1)))
        queue += [(key, length + prefixes.step(more)) for key in cuts]
    return found


def _differing(mine: dict[str, Digest], theirs: dict[str, Digest]) -> list[str]:
    """The keys whose digests differ, in order: tens of thousands compared after a first
    pass, at a few attribute reads each (comparing each pair as Digests took 40 ms)."""
    keys = [k for k in theirs if k not in mine]
    for key, a in mine.items():
        b = theirs.get(key)
        if b is None or a.total != b.total or a.count != b.count:
            keys.append(key)
    return sorted(keys)


def _digest(
    fields: list[Field], under: list[str], length: int, native: bool, deadline: float
) -> Callable[[Store, Entity | Copy], dict[str, Digest]]:
    def ask(store: Store, table: Entity | Copy) -> dict[str, Digest]:
        return store.digest_under(table, fields, under, length, native, deadline)

    return ask


def read(sides: Sides, groups: list[str], found: Differences) -> None:
    """The rows of `groups` (prefixes) on both sides, compared one by one."""
    if not groups:
        return
    mine, theirs = sides.both(lambda store, table: store.digest_rows(table, sides.fields, groups))
    found.rows += len(mine) + len(theirs)
    owned = {i: (v, h) for i, v, h in mine}
    copied = {i: (v, h) for i, v, h in theirs}
    for entity_id in owned.keys() | copied.keys():
        a, b = owned.get(entity_id), copied.get(entity_id)
        if a != b:
            found.ids[entity_id] = (a[0] if a else None, b[0] if b else None)


# at most about how many buckets an incremental digest keeps of a whole table (never more
# than it has rows): at 10,000,000 rows over a day, 340,000 of 29 rows, where 21,000 of 470
# read 16 times the rows to tell 10 differences apart
BUCKETS = 1 << 20


def incremental(sides: Sides, deadline: float, limit: int) -> Differences:
    """The ids that differ, found from the buckets each database keeps as its rows change
    (Store.refresh_buckets, bucket_digest: a TicTac tree, its upper level kept beside the
    buckets): the upper level is compared (a copy that differs in nothing costs that: at
    most a few thousand sums a side, whatever its rows), then under its differing groups
    a character at a time down to the buckets, and only differing buckets are looked into
    as `differences` looks into a group."""
    found = Differences()
    fields = sides.fields
    (kept_owned, owned), (kept_copied, copied) = sides.both(
        lambda store, table: (store.bucket_length(table, fields), store.id_range(table))
    )
    length = kept_owned or kept_copied
    ends = [r for r in (owned, copied) if r is not None]
    if not ends:
        return found
    low, high = min(r[0] for r in ends), max(r[1] for r in ends)
    if length is None:
        length = prefixes.first_length(low, high, BUCKETS)
    kept = length
    sides.both(lambda store, table: store.refresh_buckets(table, fields, kept))
    top = digests.upper_length(low, length)  # the level the stores keep: read, not summed
    groups = [""]
    # then a character at a time (16 ways), so a differing group brings 16 sums a side,
    # not its 256 buckets
    for by in [top, *_levels(low, top, length)]:
        mine, theirs = sides.both(_buckets(fields, groups, by))
        keys = sorted(mine.keys() | theirs.keys())
        found.ranges += len(keys)
        groups = [k for k in keys if not mine.get(k, Digest()).same(theirs.get(k, Digest()))]
        if not groups:
            return found
    queue: list[tuple[str, int]] = []
    leaves: list[str] = []
    for key in groups:
        size = max(mine.get(key, Digest()).count, theirs.get(key, Digest()).count)
        if size <= LEAF or len(key) < length:
            leaves.append(key)
        else:
            queue.append((key, length + prefixes.step(PARTS)))
    return descend(sides, queue, found, deadline, limit, leaves)


def _levels(sample: str, top: int, length: int) -> list[int]:
    """The lengths between `top` and `length` a character apart (past a UUID's `-`, which
    cuts nothing), `length` last."""
    found: list[int] = []
    by = top
    while by < length:
        by += 1
        while by < length and sample[by - 1 : by] == "-":
            by += 1
        found.append(by)
    return found


def _buckets(
    fields: list[Field], groups: list[str], by: int
) -> Callable[[Store, Entity | Copy], dict[str, Digest]]:
    def ask(store: Store, table: Entity | Copy) -> dict[str, Digest]:
        return store.bucket_digest(table, fields, groups, by)

    return ask
