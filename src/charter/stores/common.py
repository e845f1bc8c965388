"""What every SQL store says and decides the same way, whatever its dialect:
messages of the guards, refusals of unsafe schema changes, rows read back."""

from __future__ import annotations

from typing import Any

from charter.errors import SchemaChangeError
from charter.events import Event
from charter.model import Copy, Entity, Field
from charter.stores.base import OutboxRow, Parked, Row

OUTBOX_COLUMNS = "seq, event_id, entity, entity_id, version, op, changed, time, body"
OUTBOX_COLUMNS_OF_O = ", ".join("o." + c for c in OUTBOX_COLUMNS.split(", "))  # alias `o`


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
    select: str, where: Row | None, names: list[str], null_safe_equal: str
) -> tuple[str, list[Any]]:
    """`select` narrowed to rows whose fields equal `where` (NULL equal to NULL)."""
    if not where:
        return select, []
    for name in where:
        if name not in names:
            raise KeyError(f"no field '{name}' (fields: {', '.join(names)})")
    clause = " AND ".join(f'"{name}" {null_safe_equal}' for name in where)
    return f"{select} WHERE {clause}", list(where.values())


def outbox_row(row: tuple[Any, ...]) -> OutboxRow:
    seq, event_id, entity, entity_id, version, op, changed, time, body = row
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
