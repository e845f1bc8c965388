"""The charter's data as one JSON Schema (2020-12) document: the data of each entity's
events (its public state, as its owner publishes it) and the row of each copy (id,
version, the fields it keeps, synced_at), each under $defs, for any tool or test that
checks a payload or a row."""

from __future__ import annotations

from typing import Any

from charter.exports.fields import copy_row_schema, data_schema
from charter.exports.render import fingerprint
from charter.model import Charter

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def document(charter: Charter) -> dict[str, Any]:
    """`$defs`: `<Entity>` for each entity's event data, `copy.<name>` for each copy's row
    (an entity's name has no dot, so the two never meet)."""
    defs: dict[str, Any] = {}
    for entity in charter.entities.values():
        defs[entity.name] = data_schema(entity)
    for copy in charter.copies.values():
        defs[f"copy.{copy.name}"] = copy_row_schema(charter.entities[copy.of], copy)
    doc: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": f"urn:charter:{charter.name}",
        "title": charter.name,
        "description": f"The data of charter '{charter.name}': each entity's event data "
        "and each copy's row. Written by `charter export jsonschema`.",
        "$defs": defs,
    }
    doc["$comment"] = f"version {fingerprint(doc)}"
    return doc
