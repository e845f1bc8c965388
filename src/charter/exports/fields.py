"""A charter field as JSON Schema: the one mapping every export shares, so the AsyncAPI
payloads, the JSON Schema documents and the ODCS columns cannot disagree about a type.

It describes the canonical form (charter.values): what the owner stores and sends on the
wire, which is JSON already. Only keywords that draft-07 (AsyncAPI's schema dialect) and
2020-12 read alike are used."""

from __future__ import annotations

from typing import Any

from charter.events import MAX_VERSION
from charter.model import Copy, Entity, Field

INT64 = 2**63
# charter type → its JSON Schema, not yet nullable
_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "text": {"type": "string"},
    "integer": {"type": "integer", "minimum": -INT64, "maximum": INT64 - 1},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "uuid": {"type": "string", "format": "uuid"},
    "timestamp": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
}

ID = {"type": "string", "format": "uuid", "description": "the record's id, set by its owner"}
VERSION = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_VERSION,
    "description": "1, 2, 3 … per id; a copy applies only a newer one",
}
SYNCED_AT = {
    "type": "string",
    "format": "date-time",
    "description": "when the copy applied this version",
}


def field_schema(field: Field) -> dict[str, Any]:
    """One field's values; null allowed when the field is not required."""
    if field.type == "enum":
        schema: dict[str, Any] = {"enum": list(field.values)}
        if not field.required:
            schema["enum"].append(None)
    else:
        schema = dict(_TYPES[field.type])
        if not field.required:
            schema["type"] = [schema["type"], "null"]
    if field.default is not None:
        schema["default"] = field.default
    return schema


def fields_schema(
    entity: Entity, names: tuple[str, ...], *, closed: bool, description: str = ""
) -> dict[str, Any]:
    """An object holding `names` of `entity` (each always present, null where allowed).
    `closed`: nothing else may be in it (what the owner sends); open: what a reader depends
    on, among other fields it ignores."""
    schema: dict[str, Any] = {"type": "object"}
    if description:
        schema["description"] = description
    schema["properties"] = {name: field_schema(entity.fields[name]) for name in names}
    schema["required"] = list(names)
    if closed:
        schema["additionalProperties"] = False
    return schema


def data_schema(entity: Entity) -> dict[str, Any]:
    """The data of an event about `entity`: its full public state, nothing else."""
    return fields_schema(
        entity,
        entity.public_names,
        closed=True,
        description=f"the public state of one {entity.name} after a change, as "
        f"'{entity.owner}' publishes it",
    )


def copy_row_schema(entity: Entity, copy: Copy) -> dict[str, Any]:
    """A row of a copy: id, version, the copied fields, synced_at."""
    names = copy.fields
    description = f"a row of copy '{copy.name}' in '{copy.context}': {entity.name} as it keeps it"
    schema = fields_schema(entity, names, closed=True, description=description)
    schema["properties"] = {
        "id": ID,
        "version": VERSION,
        **schema["properties"],
        "synced_at": SYNCED_AT,
    }
    schema["required"] = ["id", "version", *names, "synced_at"]
    return schema
