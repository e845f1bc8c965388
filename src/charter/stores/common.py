"""What every SQL store says and decides the same way, whatever its dialect:
messages of the guards, refusals of unsafe schema changes, rows read back."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import orjson

from charter import latency
from charter.errors import SchemaChangeError
from charter.events import Event
from charter.model import DEFAULT_LATENCY_RETENTION_S, Charter, Copy, Entity, Field, NoOverlap
from charter.records import DRIFT_KINDS, Drift, OutboxRow, Parked, Row

OUTBOX_COLUMNS = "seq, event_id, entity, entity_id, version, op, changed, time, body"
OUTBOX_COLUMNS_OF_O = ", ".join("o." + c for c in OUTBOX_COLUMNS.split(", "))  # alias `o`
HISTORY_COLUMNS = OUTBOX_COLUMNS + ", actor, private_changed"  # for the owner's history
# Added to charter_outbox after it first shipped: nullable, so a store from before keeps
# its rows (they read as no actor, no private fields).
OUTBOX_ADDED_COLUMNS = ("actor", "private_changed")


def entity_guard_message(entity: Entity, team: str) -> str:
    return (
        f"charter: {entity.name} is owned by context '{entity.owner}' (team {team}) and "
        f"changes only through charter's owner API, so that every change publishes its event"
    )


def copy_guard_message(copy: Copy, entity: Entity, owner: str, team: str) -> str:
    return (
        f"charter: {copy.table} is a read-only copy of {entity.name}, owned by context "
        f"'{owner}' (team {team}); only charter's projector writes it. "
        f"Change {entity.name} through '{owner}'."
    )


def check_extension(
    kind: str, name: str, table: str, field: Field, old_type: str | None, rows: int, present: bool
) -> bool:
    """Whether `field` needs a new column; SchemaChangeError if the change would lose or
    corrupt the data already there."""
    if old_type is not None and old_type != field.type:
        raise SchemaChangeError(
            f"{name}.{field.name} changed type from {old_type} to {field.type} "
            f"(charter line {field.line}); the store holds {rows} rows written as "
            f"{old_type}. Add a new field with the new type and move the data instead.",
            field.line,
        )
    if present:
        return False
    if kind == "entity" and field.default is None and field.required and rows:
        raise SchemaChangeError(
            f"{name}.{field.name} is new and required, but {table} already holds "
            f"{rows} rows that have no value for it (charter line {field.line}). "
            "Give it a default or mark it required: false.",
            field.line,
        )
    return True


def counted(rule: NoOverlap, row: str, literal: Callable[[str], str]) -> str:
    """An SQL condition: the record `row` (an alias and a dot, or "") counts for the rule,
    i.e. its `unless` field holds none of the values that leave it out (NULL counts)."""
    if rule.unless is None:
        return "TRUE"
    name, values = rule.unless
    column = f'{row}"{name}"'
    return f"({column} IS NULL OR {column} NOT IN ({', '.join(map(literal, values))}))"


def overlap_refused(entity: Entity, rule: NoOverlap, pair: tuple[Any, Any]) -> SchemaChangeError:
    """A no_overlap rule made stricter while the store holds records it would refuse."""
    return SchemaChangeError(
        f"{entity.name} no_overlap ({rule.describe()}, charter line {rule.line}): records "
        f"{pair[0]} and {pair[1]} already overlap under it. Change or delete one of them "
        "first, or keep the rule as it was."
    )


def extension_problems(
    kind: str,
    name: str,
    table: str,
    fields: list[Field],
    recorded: dict[str, str],
    present: set[str],
    rows: int,
) -> list[SchemaChangeError]:
    """What extending an existing table to `fields` would refuse (check_extension, for
    every field), found without changing anything: for `charter check`."""
    found = []
    for field in fields:
        try:
            check_extension(
                kind, name, table, field, recorded.get(field.name), rows, field.name in present
            )
        except SchemaChangeError as exc:
            found.append(exc)
    return found


def where_clause(
    select: str, where: Row | None, names: list[str], placeholder: str
) -> tuple[str, list[Any]]:
    """`select` narrowed to rows whose fields equal `where` (None: IS NULL), written with
    `=` so an index serves it (PostgreSQL uses none for IS NOT DISTINCT FROM: a copy's row
    read by id scanned the whole table)."""
    if not where:
        return select, []
    for name in where:
        if name not in names:
            raise KeyError(f"no field '{name}' (fields: {', '.join(names)})")
    clause = " AND ".join(
        f'"{name}" IS NULL' if value is None else f'"{name}" = {placeholder}'
        for name, value in where.items()
    )
    return f"{select} WHERE {clause}", [v for v in where.values() if v is not None]


def outbox_row(row: tuple[Any, ...]) -> OutboxRow:
    """An outbox row from OUTBOX_COLUMNS, or from HISTORY_COLUMNS."""
    seq, event_id, entity, entity_id, version, op, changed, time, body, *more = row
    actor, private = more or (None, None)
    return OutboxRow(
        seq,
        event_id,
        entity,
        entity_id,
        version,
        op,
        tuple(changed.split(",")) if changed else (),
        time,
        bytes(body),
        actor,
        tuple(private.split(",")) if private else (),
    )


def outbox_values(
    events: Sequence[Event], bodies: Sequence[bytes], private: Sequence[tuple[str, ...]]
) -> list[tuple[Any, ...]]:
    """The values of the transaction's outbox rows, in the order of OUTBOX_INSERT."""
    names = private or [()] * len(events)
    return [
        (
            *(e.id, e.entity, e.entity_id, e.version, e.op, ",".join(e.changed), e.time),
            *(b, e.actor, ",".join(p) or None),
        )
        for e, b, p in zip(events, bodies, names, strict=True)
    ]


OUTBOX_INSERT = (
    "(event_id, entity, entity_id, version, op, changed, time, body, actor, private_changed)"
)


def unstorable(copy: Copy, position: int, event: Event, exc: Exception) -> Parked:
    """An event the copy's database refused, parked with the database's reason."""
    return Parked(
        copy.name,
        event.entity_id,
        event.version,
        event.id,
        position,
        f"event {event.id} (version {event.version}) cannot be stored: {str(exc).strip()}",
        event.encode(),
    )


class LatencyMinutes:
    """A store's side of the copies' latency histograms (charter.latency): what an apply
    counts, and when a copy's minutes older than the charter's latency_retention are to go
    (once a minute per copy, in an apply: never a transaction of its own)."""

    def __init__(self) -> None:
        self.kept = math.ceil(DEFAULT_LATENCY_RETENTION_S / 60)  # minutes, this one included
        self._pruned: dict[str, int] = {}  # copy → the minute it was last pruned in

    def prepared(self, charter: Charter) -> None:
        self.kept = math.ceil(charter.latency_retention_s / 60)

    def counts(self, latencies: Sequence[tuple[int, float]], start: int) -> dict[int, int]:
        """Bucket → count of the latencies of the events past `start` (the checkpoint)."""
        if self.kept <= 0 or not latencies:
            return {}
        if latencies[0][0] > start:  # all of them (positions ascend): the usual case
            values = Counter(map(itemgetter(1), latencies))
        else:
            values = Counter(s for at, s in latencies if at > start)
        counts: dict[int, int] = {}
        for seconds, count in values.items():  # a few: one per owner transaction
            at = latency.bucket(seconds)
            counts[at] = counts.get(at, 0) + count
        return counts

    def prune_before(self, copy: Copy, minute: int) -> int | None:
        """The oldest minute `copy` keeps, when its older minutes are to be deleted in the
        apply that records `minute`; None when they were this minute already."""
        if self._pruned.get(copy.name) == minute:
            return None
        self._pruned[copy.name] = minute
        return minute - self.kept + 1


DRIFT_COLUMNS: tuple[str, ...] = ("copy", "checked_at", "took", "complete", *DRIFT_KINDS)
DRIFT_COLUMNS += ("sample", "repaired", "error")
"""charter_drift's columns, in order: the last check of each copy (records.Drift)."""


def drift_values(drift: Drift) -> tuple[Any, ...]:
    """`drift` as a row of charter_drift (DRIFT_COLUMNS)."""
    counts = tuple(int(drift.counts.get(kind, 0)) for kind in DRIFT_KINDS)
    repaired = None if drift.repaired is None else orjson.dumps(drift.repaired).decode()
    return (
        drift.copy,
        drift.checked_at,
        float(drift.took_s),
        1 if drift.complete else 0,
        *counts,
        orjson.dumps(drift.sample).decode(),
        repaired,
        drift.error or None,
    )


def drift_of(row: Sequence[Any]) -> Drift:
    """A row of charter_drift (DRIFT_COLUMNS) read back."""
    copy, checked_at, took, complete, *rest = row
    counts = dict(zip(DRIFT_KINDS, rest[: len(DRIFT_KINDS)], strict=True))
    sample, repaired, error = rest[len(DRIFT_KINDS) :]
    return Drift(
        str(copy),
        str(checked_at),
        float(took),
        {kind: int(n) for kind, n in counts.items() if n},
        orjson.loads(sample) if sample else {},
        bool(complete),
        error or "",
        None if repaired is None else orjson.loads(repaired),
    )
