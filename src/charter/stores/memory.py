"""The reference store: one context's data in this process's memory (``memory://NAME``).

Small and obviously right, so that it can be read as the meaning of the `Store`
protocol, and fast to set up, so that users' own unit tests and charter's simulation
(charter.sim) can run a whole system without a database. Every open of the same URL in
one process sees the same data; nothing survives the process. One owner transaction at a
time holds the store (as SQLite's BEGIN IMMEDIATE does); its changes stay in the
transaction until it commits, so a reader never sees half of one.

A world that misbehaves on purpose sets `fault`: it is called with the name of every
operation before the operation touches anything, and may raise (the simulation's crash).
There is no other way in than charter's API, so no guard is needed against other writers."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from charter import clock, digests, latency, values
from charter.digests import Digest
from charter.errors import ConstraintError, SchemaChangeError
from charter.events import Event
from charter.lanes import Lane
from charter.model import Charter, Copy, Entity, Field, NoOverlap
from charter.records import (
    Backlog,
    Checkpoint,
    Drift,
    Fence,
    LaneCheckpoint,
    Mend,
    OutboxRow,
    Parked,
    RecordedCommand,
    Row,
    latest_lanes,
)
from charter.stores import fencing, waiting
from charter.stores.common import (
    LatencyMinutes,
    check_extension,
    extension_problems,
    overlap_refused,
)

_DELETED = None  # in a transaction's changes: the id was deleted


@dataclass
class _Data:
    """What one memory:// URL holds: as a database would, tables and their bookkeeping."""

    schema: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    entities: dict[str, dict[str, Row]] = field(default_factory=dict)
    outbox: list[OutboxRow] = field(default_factory=list)
    relayed: int = 0
    leader: str | None = None  # the relay that leads the outbox
    copies: dict[str, dict[str, Row]] = field(default_factory=dict)
    checkpoints: dict[str, tuple[int, str | None, tuple[str, ...]]] = field(default_factory=dict)
    lanes: dict[tuple[str, int, int], tuple[int, str | None]] = field(default_factory=dict)
    tombstones: dict[tuple[str, str], int] = field(default_factory=dict)
    buckets: dict[str, int] = field(default_factory=dict)  # bucket_key → length asked
    parked: dict[str, list[Parked]] = field(default_factory=dict)
    applied: list[tuple[str, str, int, str]] | None = None  # (copy, id, version, lane)
    latency: dict[tuple[str, int], dict[int, int]] = field(default_factory=dict)  # (copy, minute)
    unique: dict[tuple[str, str], dict[object, str]] = field(default_factory=dict)
    changes: waiting.Registry = field(default_factory=waiting.Registry)  # by copy
    commands: dict[str, RecordedCommand] = field(default_factory=dict)  # charter_command
    drift: dict[str, Drift] = field(default_factory=dict)  # charter_drift: copy → last check
    fences: dict[str, dict[int, Fence]] = field(default_factory=dict)  # charter_fence: G10
    lock: threading.RLock = field(default_factory=threading.RLock)  # any read or write
    writer: threading.Lock = field(default_factory=threading.Lock)  # one owner tx at a time

    def index(self, entity: str, entity_id: str, before: Row | None, after: Row | None) -> None:
        """Keep the `unique` index (value → id) of `entity` in step with one change."""
        for (name, field_name), held in self.unique.items():
            if name != entity:
                continue
            if before is not None and held.get(before.get(field_name)) == entity_id:
                del held[before.get(field_name)]
            if after is not None and after.get(field_name) is not None:
                held[after[field_name]] = entity_id


_OPEN: dict[str, _Data] = {}
_OPEN_LOCK = threading.Lock()


def forget(url: str) -> None:
    """Drop what a memory:// URL holds (a test's clean-up)."""
    with _OPEN_LOCK:
        _OPEN.pop(_key(url), None)


def in_this_process(url: str) -> bool:
    """Whether something in this process opened the memory:// URL already."""
    with _OPEN_LOCK:
        return _key(url) in _OPEN


def _key(url: str) -> str:
    return url.split("?", 1)[0]


class MemoryStore:
    """One context's tables as dictionaries."""

    def __init__(self, url: str) -> None:
        self.url = url
        with _OPEN_LOCK:
            self._data = _OPEN.setdefault(_key(url), _Data())
        self.fault: Callable[[str], None] | None = None
        self._latency = LatencyMinutes()

    def _touch(self, operation: str) -> None:
        if self.fault is not None:
            self.fault(operation)

    def log_applies(self) -> list[tuple[str, str, int, str]]:
        """From now on, note every version a copy takes from `apply` as (copy, id, version,
        lane) in the list returned: a way to see that each is applied once."""
        with self._data.lock:
            if self._data.applied is None:
                self._data.applied = []
            return self._data.applied

    # -- fences (G10: charter transfer) ------------------------------------------

    def fence(
        self, entity: Entity, parts: Sequence[int] | None, epoch: int, holder: str, state: str
    ) -> None:
        """From now on this store writes `parts` of `entity` only as `state` says: taken
        under the writer lock, so the owner transaction in flight ends first."""
        self._touch("fence")
        data = self._data
        with data.writer, data.lock:
            held = data.fences.setdefault(entity.name, {})
            if parts is None:
                held.clear()
            for part in fencing.parts_of(parts):
                held[part] = Fence(entity.name, part, epoch, state, holder)

    def unfence(self, entity: Entity, parts: Sequence[int] | None) -> None:
        data = self._data
        with data.writer, data.lock:
            held = data.fences.setdefault(entity.name, {})
            for part in fencing.parts_of(parts):
                held.pop(part, None)

    def fences(self, entity: str) -> list[Fence]:
        with self._data.lock:
            return sorted(self._data.fences.get(entity, {}).values(), key=lambda f: f.part)

    def promote(
        self,
        entity: Entity,
        parts: Sequence[int] | None,
        epoch: int,
        holder: str,
        rows: Sequence[Row],
        gone: Sequence[str] = (),
        state: str = fencing.OWNER,
    ) -> None:
        """At once: `rows` written (versions kept), `gone` deleted, `parts` this store's."""
        self._touch("promote")
        data = self._data
        with data.writer, data.lock:
            held = data.fences.setdefault(entity.name, {})
            if parts is None:
                held.clear()
            for part in fencing.parts_of(parts):
                held[part] = Fence(entity.name, part, epoch, fencing.OWNER, holder)
            table = data.entities.setdefault(entity.name, {})
            for entity_id in [*gone, *(r["id"] for r in rows)]:
                before = table.pop(entity_id, None)
                data.index(entity.name, entity_id, before, None)
            for row in rows:
                table[row["id"]] = dict(row)
                data.index(entity.name, row["id"], None, table[row["id"]])
            for part in fencing.parts_of(parts):
                held[part] = Fence(entity.name, part, epoch, state, holder)

    # -- schema ---------------------------------------------------------------

    def prepare(self, charter: Charter, context: str) -> None:
        self._touch("prepare")
        data = self._data
        self._latency.prepared(charter)
        with data.lock:
            for entity in charter.owned_by(context):
                rows = data.entities.setdefault(entity.name, {})
                new = self._extend(
                    "entity", entity.name, entity.table, list(entity.fields.values()), len(rows)
                )
                for f in new:
                    default = None if f.default is None else values.encode(entity, f, f.default)
                    for row in rows.values():
                        row[f.name] = default
                self._check_rules(entity, rows)
                for f in entity.fields.values():
                    if f.unique:
                        data.unique[(entity.name, f.name)] = {
                            r[f.name]: i for i, r in rows.items() if r.get(f.name) is not None
                        }
            for copy in charter.copies_in(context):
                entity = charter.entities[copy.of]
                rows = data.copies.setdefault(copy.name, {})
                fields = [entity.fields[name] for name in copy.fields]
                for f in self._extend("copy", copy.name, copy.table, fields, len(rows)):
                    for row in rows.values():
                        row[f.name] = None
                data.parked.setdefault(copy.name, [])

    def check(self, charter: Charter, context: str) -> list[SchemaChangeError]:
        data, found = self._data, []
        with data.lock:
            for entity in charter.owned_by(context):
                rows = len(data.entities.get(entity.name, {}))
                found += self._problems("entity", entity.name, entity.table, entity.fields, rows)
            for copy in charter.copies_in(context):
                fields = {n: charter.entities[copy.of].fields[n] for n in copy.fields}
                rows = len(data.copies.get(copy.name, {}))
                found += self._problems("copy", copy.name, copy.table, fields, rows)
        return found

    def _problems(
        self, kind: str, name: str, table: str, fields: dict[str, Field], rows: int
    ) -> list[SchemaChangeError]:
        recorded = self._data.schema.get((kind, name), {})
        listed = list(fields.values())
        return extension_problems(kind, name, table, listed, recorded, set(recorded), rows)

    def _check_rules(self, entity: Entity, rows: dict[str, Row]) -> None:
        """A no_overlap rule new or changed since the store last enforced it must hold for
        the records already there."""
        enforced = self._data.schema.setdefault(("no_overlap", entity.name), {})
        for number, rule in enumerate(entity.constraints, 1):
            if enforced.get(str(number)) == rule.describe():
                continue
            listed = list(rows.values())
            for at, row in enumerate(listed):
                other = _overlapping(rule, row, listed[at + 1 :])
                if other is not None:
                    raise overlap_refused(entity, rule, (row["id"], other["id"]))
            enforced[str(number)] = rule.describe()

    def _extend(
        self, kind: str, name: str, table: str, fields: list[Field], rows: int
    ) -> list[Field]:
        """The fields that are new; SchemaChangeError for a change that would lose data."""
        recorded = self._data.schema.setdefault((kind, name), {})
        new = [
            f
            for f in fields
            if check_extension(kind, name, table, f, recorded.get(f.name), rows, f.name in recorded)
        ]
        recorded.update({f.name: f.type for f in fields})
        return new

    # -- owner side -------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[_Writes]:
        return _Transaction(self)

    def fetch(self, entity: Entity, entity_id: str) -> Row | None:
        self._touch("fetch")
        with self._data.lock:
            row = self._data.entities[entity.name].get(entity_id)
            return _owner_row(entity, row) if row else None

    def rows(self, entity: Entity, where: Row | None = None) -> Iterator[Row]:
        self._touch("rows")
        names = ["id", "version", *entity.fields]
        _check_where(where, names)
        with self._data.lock:
            found = [_owner_row(entity, r) for r in self._data.entities[entity.name].values()]
        yield from sorted(_matching(found, where), key=_by_id)

    # -- relay side -------------------------------------------------------------

    def outbox(self, after: int, limit: int) -> list[OutboxRow]:
        self._touch("outbox")
        with self._data.lock:  # seq n is at index n - 1: the outbox only grows
            return self._data.outbox[max(after, 0) : max(after, 0) + limit]

    def pending(self, limit: int, skip: Sequence[OutboxRow] = ()) -> list[OutboxRow]:
        self._touch("pending")
        with self._data.lock:
            after = max(self._data.relayed, skip[-1].seq if skip else 0)
            return self._data.outbox[after : after + limit]

    def mark_relayed(self, rows: Sequence[OutboxRow]) -> None:
        self._touch("mark_relayed")
        if rows:
            with self._data.lock:
                self._data.relayed = max(self._data.relayed, rows[-1].seq)

    def lead(self, holder: str) -> bool:
        self._touch("lead")
        with self._data.lock:
            if self._data.leader is None:
                self._data.leader = holder
            return self._data.leader == holder

    def release(self, holder: str) -> None:
        """Also what a process's end does (charter.sim calls it for a crashed relay)."""
        with self._data.lock:
            if self._data.leader == holder:
                self._data.leader = None

    def rewind(self, after: int = 0) -> None:
        self._touch("rewind")
        with self._data.lock:
            self._data.relayed = after

    def unrelayed(self, entity: str) -> Backlog:
        self._touch("unrelayed")
        with self._data.lock:
            rows = [r for r in self._data.outbox[self._data.relayed :] if r.entity == entity]
        return Backlog(len(rows), min((r.time for r in rows), default=None))

    def history(self, entity: str, entity_id: str) -> list[OutboxRow]:
        self._touch("history")
        with self._data.lock:
            rows = [r for r in self._data.outbox if r.entity == entity and r.entity_id == entity_id]
        return sorted(rows, key=lambda r: r.version)

    def current(self, entity: Entity, after: str = "", limit: int = 1000) -> list[OutboxRow]:
        self._touch("current")
        with self._data.lock:
            live = {
                i: r["version"] for i, r in self._data.entities[entity.name].items() if i > after
            }
            events = {
                r.entity_id: r
                for r in self._data.outbox
                if r.entity == entity.name and live.get(r.entity_id) == r.version
            }
        return [events[i] for i in sorted(events)][:limit]

    # -- copy side --------------------------------------------------------------

    def checkpoint(self, copy: Copy, lane: Lane | None = None) -> Checkpoint | None:
        self._touch("checkpoint")
        with self._data.lock:
            return self._checkpoint(copy, lane)

    def _checkpoint(self, copy: Copy, lane: Lane | None) -> Checkpoint | None:
        """The whole copy's position: its own, or the lowest of a complete set of lanes if
        higher (charter.lanes); a lane's: its own, or the whole copy's if higher."""
        saved = self._data.checkpoints.get(copy.name)
        if saved is None:
            return None
        position, applied_at, fields = saved
        layouts: dict[int, list[tuple[int, str | None]]] = {}
        for (name, lanes, _), where in self._data.lanes.items():
            if name == copy.name:
                layouts.setdefault(lanes, []).append(where)
        for lanes, rows in layouts.items():
            if len(rows) == lanes:  # a complete set of lanes
                position = max(position, min(p for p, _ in rows))
                applied_at = max([applied_at or "", *(a or "" for _, a in rows)]) or None
        if lane is not None:
            mine = self._data.lanes.get((copy.name, lane.lanes, lane.number))
            position = max(position, mine[0] if mine else 0)
        return Checkpoint(position, applied_at, fields)

    def lanes(self, copy: Copy) -> list[LaneCheckpoint]:
        self._touch("lanes")
        with self._data.lock:
            rows = [
                (lanes, number, position, applied_at)
                for (name, lanes, number), (position, applied_at) in self._data.lanes.items()
                if name == copy.name
            ]
        return latest_lanes(rows)

    def apply(
        self,
        copy: Copy,
        items: Sequence[tuple[int, Event]],
        parked: Sequence[Parked],
        position: int,
        lane: Lane | None = None,
        latencies: Sequence[tuple[int, float]] = (),
    ) -> list[Parked]:
        self._touch("apply")
        data, now = self._data, values.now_text()
        with data.lock:
            current = self._checkpoint(copy, lane)
            start = current.position if current else 0
            self._record_latency(copy, latencies, start)
            for at, event in items:
                if at > start and self._apply_event(copy, event, now) and data.applied is not None:
                    data.applied.append(
                        (copy.name, event.entity_id, event.version, str(lane or ""))
                    )
            already = {p.position for p in data.parked[copy.name]}
            data.parked[copy.name].extend(
                _stamped(p, now) for p in parked if p.position > start and p.position not in already
            )
            if position > start and lane is not None:
                key = (copy.name, lane.lanes, lane.number)
                if position > data.lanes.get(key, (0, None))[0]:
                    data.lanes[key] = (position, now)
            elif position > start:
                data.checkpoints[copy.name] = (position, now, copy.fields)
        changes = data.changes(copy.name)
        changes.bump(waiting.taken(items, (), start) if changes.waiting else None)
        return []  # a dictionary takes any value: nothing fails to be stored

    def _record_latency(
        self, copy: Copy, latencies: Sequence[tuple[int, float]], start: int
    ) -> None:
        """Count the latencies of the events past `start` in this minute; forget the minutes
        past the retention (once a minute)."""
        minute = latency.minute(clock.time_ns())
        oldest = self._latency.prune_before(copy, minute)
        if oldest is not None:
            for key in [k for k in self._data.latency if k[0] == copy.name and k[1] < oldest]:
                del self._data.latency[key]
        counts = self._latency.counts(latencies, start)
        if counts:
            latency.add(self._data.latency.setdefault((copy.name, minute), {}), counts)

    def latency(self, copy: Copy, since: int) -> dict[int, int]:
        self._touch("latency")
        counts: dict[int, int] = {}
        with self._data.lock:
            for (name, minute), held in self._data.latency.items():
                if name == copy.name and minute >= since:
                    latency.add(counts, held)
        return counts

    def _apply_event(self, copy: Copy, event: Event, now: str) -> bool:
        """The version guard (G3, G4): only a newer version than the copy's, and never one
        at or below the version at which the id was deleted. Whether it was taken."""
        rows = self._data.copies[copy.name]
        held = rows.get(event.entity_id)
        if held is not None and held["version"] >= event.version:
            return False
        if self._data.tombstones.get((copy.name, event.entity_id), 0) >= event.version:
            return False
        if event.op == "deleted":
            rows.pop(event.entity_id, None)
            self._data.tombstones[(copy.name, event.entity_id)] = event.version
        else:
            rows[event.entity_id] = _copy_row(
                copy, event.entity_id, event.version, event.state, now
            )
        return True

    def backfill(self, copy: Copy, rows: Iterator[tuple[str, int, Row]], position: int) -> int:
        self._touch("backfill")
        data, now = self._data, values.now_text()
        staged = [(i, v, dict(state)) for i, v, state in rows]  # read before taking the lock
        with data.lock:
            table = data.copies[copy.name]
            for entity_id, version, state in staged:
                held = table.get(entity_id)
                if held is not None and held["version"] > version:
                    continue
                if data.tombstones.get((copy.name, entity_id), 0) >= version:
                    continue
                table[entity_id] = _copy_row(copy, entity_id, version, state, now)
            saved = data.checkpoints.get(copy.name)
            at = min(position, saved[0]) if saved else position
            data.checkpoints[copy.name] = (at, now, copy.fields)
        data.changes(copy.name).bump()
        return len(staged)

    def versions(self, copy: Copy) -> dict[str, int]:
        """The version the copy holds of each id it ever held; a deleted id's is the version
        that deleted it (for checkers: charter.sim)."""
        with self._data.lock:
            held = {i: v for (name, i), v in self._data.tombstones.items() if name == copy.name}
            held.update({i: r["version"] for i, r in self._data.copies[copy.name].items()})
        return held

    def recorded_commands(self) -> dict[str, RecordedCommand]:
        """The command keys this store has recorded (charter_command), with their answers
        (for checkers: charter.sim)."""
        with self._data.lock:
            return dict(self._data.commands)

    def copy_rows(self, copy: Copy, where: Row | None = None) -> Iterator[Row]:
        self._touch("copy_rows")
        names = ["id", "version", *copy.fields, "synced_at"]
        _check_where(where, names)
        with self._data.lock:
            table = self._data.copies[copy.name]
            if where and "id" in where:  # one record: CopyReader.get
                held = table.get(where["id"])
                candidates = [] if held is None else [held]
            else:
                candidates = list(table.values())
            found = [{n: r.get(n) for n in names} for r in candidates]
        yield from sorted(_matching(found, where), key=_by_id)

    def wait_applied(self, copy: Copy, entity_id: str, version: int, timeout: float) -> int:
        self._touch("wait_applied")
        changes = self._data.changes(copy.name)
        with changes.wanting(entity_id, version) as wanted:
            return waiting.wait_applied(
                lambda: self._held(copy, entity_id), version, timeout, changes.watch(), wanted
            )

    def _held(self, copy: Copy, entity_id: str) -> int:
        with self._data.lock:
            row = self._data.copies[copy.name].get(entity_id)
            deleted = self._data.tombstones.get((copy.name, entity_id), 0)
            return max(row["version"] if row else 0, deleted)

    def parked(self, copy: Copy) -> list[Parked]:
        self._touch("parked")
        with self._data.lock:
            return sorted(self._data.parked[copy.name], key=lambda p: p.position)

    def retry_parked(
        self, copy: Copy, events: Sequence[tuple[int, Event]], kept: Sequence[Parked]
    ) -> list[Parked]:
        self._touch("retry_parked")
        data, now = self._data, values.now_text()
        with data.lock:
            for _, event in sorted(events, key=lambda item: item[0]):
                self._apply_event(copy, event, now)
            gone = {at for at, _ in events}
            reasons = {p.position: p.reason for p in kept}
            data.parked[copy.name] = [
                dataclasses.replace(p, reason=reasons.get(p.position, p.reason))
                for p in data.parked[copy.name]
                if p.position not in gone
            ]
            stay = [p for p in data.parked[copy.name] if p.position in reasons]
        data.changes(copy.name).bump()
        return stay

    def drop_parked(self, copy: Copy, positions: Sequence[int]) -> list[Parked]:
        self._touch("drop_parked")
        with self._data.lock:
            parked = self._data.parked[copy.name]
            dropped = [p for p in parked if p.position in positions]
            self._data.parked[copy.name] = [p for p in parked if p.position not in positions]
        return dropped

    # -- reconciliation -------------------------------------------------------------

    def _table(self, table: Entity | Copy) -> dict[str, Row]:
        if isinstance(table, Copy):
            return self._data.copies[table.name]
        return self._data.entities[table.name]

    def id_range(self, table: Entity | Copy) -> tuple[str, str] | None:
        self._touch("id_range")
        with self._data.lock:
            ids = list(self._table(table))
        return (min(ids), max(ids)) if ids else None

    def digest(
        self,
        table: Entity | Copy,
        fields: Sequence[Field],
        prefix: str,
        length: int,
        deadline: float | None = None,
    ) -> dict[str, Digest]:
        digests.in_time(deadline)  # a pass here is quick
        rows = self._hashed(table, fields, [prefix])
        return digests.group(((i, hashed) for i, _, hashed in rows), prefix, length)

    def digest_under(
        self,
        table: Entity | Copy,
        fields: Sequence[Field],
        prefixes: Sequence[str],
        length: int,
        native: bool = False,
        deadline: float | None = None,
    ) -> dict[str, Digest]:
        digests.in_time(deadline)  # a pass here is quick
        rows = self._hashed(table, fields, prefixes)
        return digests.group(((i, hashed) for i, _, hashed in rows), "", length)

    def native_hash(self, table: Entity | Copy, fields: Sequence[Field]) -> str | None:
        return None  # the reference: charter's encoding only

    def digest_rows(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str]
    ) -> list[tuple[str, int, int]]:
        return self._hashed(table, fields, prefixes)

    def _hashed(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str]
    ) -> list[tuple[str, int, int]]:
        """The rows under `prefixes` with their hashes: what every digest here is made of."""
        self._touch("digest")
        kinds, names = digests.codes(fields), [f.name for f in fields]
        starts = tuple(prefixes)
        with self._data.lock:
            rows = [r for i, r in self._table(table).items() if starts and i.startswith(starts)]
            found = [
                (r["id"], r["version"], digests.row_hash(kinds, _key_and(r, names))) for r in rows
            ]
        return sorted(found)

    def bucket_length(self, table: Entity | Copy, fields: Sequence[Field]) -> int | None:
        with self._data.lock:
            return self._data.buckets.get(digests.bucket_key(table.table, fields))

    def refresh_buckets(self, table: Entity | Copy, fields: Sequence[Field], length: int) -> None:
        key = digests.bucket_key(table.table, fields)
        with self._data.lock:
            if isinstance(table, Copy):  # a copy has one set of fields, as the databases do
                for other in [k for k in self._data.buckets if k.startswith(f"{table.table}:")]:
                    del self._data.buckets[other]
            self._data.buckets[key] = length

    def bucket_digest(
        self, table: Entity | Copy, fields: Sequence[Field], prefixes: Sequence[str], by: int
    ) -> dict[str, Digest]:
        """The reference: computed from the rows each time (a memory store has nothing to
        save by keeping them)."""
        found: dict[str, Digest] = {}
        for prefix in prefixes:
            found.update(self.digest(table, fields, prefix, by))
        return found

    def drop_buckets(self, table: Entity | Copy, fields: Sequence[Field]) -> None:
        with self._data.lock:
            self._data.buckets.pop(digests.bucket_key(table.table, fields), None)

    def tombstone(self, copy: Copy, entity_id: str) -> int | None:
        self._touch("tombstone")
        with self._data.lock:
            return self._data.tombstones.get((copy.name, entity_id))

    def mend(self, copy: Copy, mends: Sequence[Mend]) -> int:
        self._touch("mend")
        data, now, changed = self._data, values.now_text(), 0
        with data.lock:
            rows = data.copies[copy.name]
            for mend in mends:
                key = (copy.name, mend.entity_id)
                held = rows.get(mend.entity_id)
                if not mend.takes(
                    None if held is None else held["version"], data.tombstones.get(key)
                ):
                    continue
                changed += 1
                if mend.over is not None:
                    data.tombstones.pop(key, None)
                if mend.state is None:
                    rows.pop(mend.entity_id, None)
                    data.tombstones[key] = max(data.tombstones.get(key, 0), mend.version)
                else:
                    rows[mend.entity_id] = _copy_row(
                        copy, mend.entity_id, mend.version, mend.state, now
                    )
        return changed

    def record_drift(self, drift: Drift) -> None:
        self._touch("record_drift")
        with self._data.lock:
            self._data.drift[drift.copy] = drift

    def drift(self, copy: Copy) -> Drift | None:
        self._touch("drift")
        with self._data.lock:
            return self._data.drift.get(copy.name)

    def close(self) -> None:
        """Nothing to release: the data stays for the next open of the same URL."""


class _Transaction:
    """One owner transaction: holds the store's writer lock; its changes are kept apart
    and made visible together at commit."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def __enter__(self) -> _Writes:
        self._store._touch("begin")
        self._store._data.writer.acquire()
        self._writes = _Writes(self._store)
        return self._writes

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        data = self._store._data
        try:
            if kind is None:
                self._store._touch("commit")
                self._writes._commit()
        finally:
            data.writer.release()


class _Writes:
    """The store's half of one owner transaction: changed rows by (entity, id), and the
    events to append, applied to the store at commit."""

    def __init__(self, store: MemoryStore) -> None:
        self._store, self._data = store, store._data
        self._changes: dict[tuple[str, str], Row | None] = {}
        self._events: list[tuple[Event, bytes, tuple[str, ...]]] = []
        self._commands: dict[str, RecordedCommand] = {}

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Changes made inside are undone, alone, when the block raises."""
        changes, events, commands = dict(self._changes), list(self._events), dict(self._commands)
        try:
            yield
        except BaseException:
            self._changes, self._events, self._commands = changes, events, commands
            raise

    def command(self, key: str) -> RecordedCommand | None:
        self._store._touch("tx.command")
        if key in self._commands:
            return self._commands[key]
        with self._data.lock:
            return self._data.commands.get(key)

    def record_command(self, command: RecordedCommand) -> None:
        self._store._touch("tx.record_command")
        if self.command(command.key) is not None:
            raise ConstraintError(f"command key {command.key!r} was handled already")
        self._commands[command.key] = command

    def _row(self, entity: Entity, entity_id: str) -> Row | None:
        key = (entity.name, entity_id)
        if key in self._changes:
            return self._changes[key]
        with self._data.lock:
            return self._data.entities[entity.name].get(entity_id)

    def _taken(self, entity: Entity, field: str, value: object, entity_id: str) -> bool:
        """Whether another record, as this transaction sees it, holds `value` in `field`."""
        for (name, other), row in self._changes.items():
            if name == entity.name and other != entity_id and row and row.get(field) == value:
                return True
        with self._data.lock:
            holder = self._data.unique.get((entity.name, field), {}).get(value)
        return (
            holder is not None
            and holder != entity_id
            and (entity.name, holder) not in self._changes
        )

    def _visible(self, entity: Entity) -> dict[str, Row]:
        """Every row of `entity` as this transaction sees it."""
        with self._data.lock:
            rows = dict(self._data.entities[entity.name])
        for (name, entity_id), row in self._changes.items():
            if name == entity.name:
                if row is _DELETED:
                    rows.pop(entity_id, None)
                else:
                    rows[entity_id] = row
        return rows

    def fetch(self, entity: Entity, entity_id: str) -> Row | None:
        self._store._touch("tx.fetch")
        row = self._row(entity, entity_id)
        return _owner_row(entity, row) if row else None

    def _fenced(self, entity: Entity, entity_id: str) -> None:
        with self._data.lock:
            fences = self._data.fences.get(entity.name)
            error = fencing.refused(entity.name, fences.values(), entity_id) if fences else None
        if error is not None:
            raise error

    def insert(self, entity: Entity, row: Row) -> None:
        self._store._touch("tx.insert")
        self._fenced(entity, row["id"])
        self._check_constraints(entity, row)
        self._changes[(entity.name, row["id"])] = dict(row)

    def update(self, entity: Entity, entity_id: str, old_version: int, row: Row) -> bool:
        self._store._touch("tx.update")
        self._fenced(entity, entity_id)
        held = self._row(entity, entity_id)
        if held is None or held["version"] != old_version:
            return False
        self._check_constraints(entity, row)
        self._changes[(entity.name, entity_id)] = dict(row)
        return True

    def delete(self, entity: Entity, entity_id: str, old_version: int) -> bool:
        self._store._touch("tx.delete")
        self._fenced(entity, entity_id)
        held = self._row(entity, entity_id)
        if held is None or held["version"] != old_version:
            return False
        self._changes[(entity.name, entity_id)] = _DELETED
        return True

    def append(
        self,
        events: Sequence[Event],
        bodies: Sequence[bytes],
        private: Sequence[tuple[str, ...]] = (),
    ) -> None:
        self._store._touch("tx.append")
        names = private or [()] * len(events)
        self._events.extend(zip(events, bodies, names, strict=True))

    def _check_constraints(self, entity: Entity, row: Row) -> None:
        """`unique` through the committed rows' index and this transaction's changes;
        `no_overlap` among the rows that share the rule's `per` values."""
        for f in entity.fields.values():
            value = row.get(f.name)
            if f.unique and value is not None and self._taken(entity, f.name, value, row["id"]):
                raise ConstraintError(
                    f"{entity.name}.{f.name} must be unique: {value!r} is already used by "
                    f"another {entity.name}"
                )
        if not entity.constraints:
            return
        others = [r for i, r in self._visible(entity).items() if i != row["id"]]
        for rule in entity.constraints:
            if _overlapping(rule, row, others) is not None:
                raise ConstraintError(
                    f"{entity.name} no_overlap: another {entity.name} with the same "
                    f"{', '.join(rule.per) or 'scope'} overlaps [{rule.start}, {rule.end})"
                )

    def _commit(self) -> None:
        data = self._data
        with data.lock:
            for (name, entity_id), row in self._changes.items():
                before = data.entities[name].pop(entity_id, None)
                if row is not _DELETED:
                    data.entities[name][entity_id] = row
                data.index(name, entity_id, before, row)
            seq = data.outbox[-1].seq if data.outbox else 0
            for event, body, private in self._events:
                seq += 1
                data.outbox.append(OutboxRow.of(event, body, seq, private))
            data.commands.update(self._commands)


def _overlapping(rule: NoOverlap, row: Row, others: Iterable[Row]) -> Row | None:
    """The first of `others` whose range intersects `row`'s under `rule`, if any."""
    start, end = row.get(rule.start), row.get(rule.end)
    if start is None or end is None or _left_out(rule.unless, row):
        return None
    for other in others:
        if any(other.get(p) != row.get(p) for p in rule.per) or _left_out(rule.unless, other):
            continue
        low, high = other.get(rule.start), other.get(rule.end)
        if low is not None and high is not None and low < end and start < high:
            return other
    return None


def _left_out(unless: tuple[str, tuple[str, ...]] | None, row: Row) -> bool:
    """Whether a no_overlap rule's `unless` leaves the record out (a cancelled one)."""
    return unless is not None and row.get(unless[0]) in unless[1]


def _owner_row(entity: Entity, row: Row) -> Row:
    return {"id": row["id"], "version": row["version"]} | {n: row.get(n) for n in entity.fields}


def _copy_row(copy: Copy, entity_id: str, version: int, state: Row | None, now: str) -> Row:
    state = state or {}
    row: Row = {"id": entity_id, "version": version}
    row.update({name: state.get(name) for name in copy.fields})
    row["synced_at"] = now
    return row


def _key_and(row: Row, names: list[str]) -> list[Any]:
    """A row's id, version and the values of `names`, as charter.digests hashes them."""
    return [row["id"], row["version"], *[row.get(name) for name in names]]


def _stamped(parked: Parked, now: str) -> Parked:
    return dataclasses.replace(parked, parked_at=now)


def _check_where(where: Row | None, names: list[str]) -> None:
    for name in where or ():
        if name not in names:
            raise KeyError(f"no field '{name}' (fields: {', '.join(names)})")


def _matching(rows: list[Row], where: Row | None) -> list[Row]:
    if not where:
        return rows
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _by_id(row: Row) -> Any:
    return row["id"]
