"""Fences (G10): which records of an entity a store may still write while and after its
ownership moves (`charter transfer`). A store keeps one row per entity and partition
(-1: the whole entity) in `charter_fence`; a partition's own row wins over the whole
entity's; no row means the store writes as its charter says. Every store refuses a write
to a record whose row says `fenced` or `waiting`, inside the write's own transaction
(SQLite and PostgreSQL: a trigger), so no writer can slip past a fence once it commits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from charter.errors import FencedError, ValidationError
from charter.lanes import PARTITIONS, partition
from charter.records import Fence

OWNER, FENCED, WAITING = "owner", "fenced", "waiting"
STATES = (OWNER, FENCED, WAITING)
WHOLE = -1  # a fence row's part for the whole entity
PREFIX = "charter-fence: "  # how a trigger's refusal starts, so a store maps it to FencedError


def parts_of(parts: Sequence[int] | None) -> tuple[int, ...]:
    """The rows a fence of `parts` writes: each partition, or WHOLE."""
    if parts is None:
        return (WHOLE,)
    for part in parts:
        if not 0 <= part < PARTITIONS:
            raise ValidationError(f"partition {part} is not between 0 and {PARTITIONS - 1}")
    return tuple(sorted(set(parts)))


def ruling(fences: Iterable[Fence], entity_id: str) -> Fence | None:
    """The fence row that decides about `entity_id`: its partition's, else the whole's."""
    part = partition(entity_id, PARTITIONS)
    whole = None
    for fence in fences:
        if fence.part == part:
            return fence
        if fence.part == WHOLE:
            whole = fence
    return whole


def refusal(fence: Fence) -> str:
    """Why a store refuses a write, in words."""
    where = "the whole entity" if fence.part == WHOLE else f"partition {fence.part}"
    if fence.state == FENCED:
        return f"fenced: {where} moved to '{fence.holder}' at epoch {fence.epoch}"
    return f"{where} is moving here (epoch {fence.epoch}) and not yet promoted"


def refused(entity: str, fences: Iterable[Fence], entity_id: str) -> FencedError | None:
    """The error for a write of `entity_id` a store with `fences` must refuse, or None."""
    fence = ruling(fences, entity_id)
    if fence is None or fence.state == OWNER:
        return None
    return FencedError(entity, refusal(fence))


def from_message(entity: str, text: str) -> FencedError:
    """A trigger's refusal (PREFIX + the words of `refusal`) as the error."""
    return FencedError(entity, text.split(PREFIX, 1)[1].strip() or "fenced")


def sqlite_schema() -> str:
    return (
        "CREATE TABLE IF NOT EXISTS charter_fence (entity TEXT NOT NULL, part INTEGER NOT "
        "NULL, epoch INTEGER NOT NULL, state TEXT NOT NULL, holder TEXT NOT NULL, "
        "PRIMARY KEY (entity, part)) WITHOUT ROWID"
    )


def sqlite_triggers(entity: str, table: str) -> list[str]:
    """The triggers that refuse a fenced write on SQLite: `charter_partition` is the
    function `_sqlite` registers on every connection charter opens."""
    made = []
    for action, row in (("INSERT", "NEW"), ("UPDATE", "OLD"), ("DELETE", "OLD")):
        name = f"{table}_charter_fence_{action.lower()}"
        ruling_sql = (
            f"(SELECT state FROM charter_fence "
            f"WHERE entity = '{entity}' AND part IN (-1, charter_partition({row}.id)) "
            "ORDER BY part DESC LIMIT 1)"
        )
        made.append(
            f'CREATE TRIGGER IF NOT EXISTS "{name}" BEFORE {action} ON "{table}" '
            f"WHEN coalesce({ruling_sql}, 'owner') != 'owner' "
            f"BEGIN SELECT RAISE(ABORT, '{PREFIX}{entity}'); END"
        )
    return made


def crc32_table() -> list[int]:
    """zlib's CRC-32 table, for PostgreSQL (which has no crc32 before 18)."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else (c >> 1)
        table.append(c)
    return table
