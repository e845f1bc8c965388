"""The contract published where tools read it: `charter export asyncapi | jsonschema |
odcs`. Each is built from the charter alone (no store or bus is opened), describes only
public fields, and is the same text for the same charter.

| module | what |
|---|---|
| fields | a charter field as JSON Schema, shared by all three |
| asyncapi | AsyncAPI 3.0: the bus, a channel per entity, send by the owner, receive by each copy |
| jsonschema | JSON Schema 2020-12: each entity's event data, each copy's row |
| odcs | Open Data Contract Standard v3.1.0: one contract per copy |
| render | YAML or JSON text; a contract's version (a fingerprint of its content) |"""

from __future__ import annotations

from typing import Any

from charter.errors import ValidationError
from charter.exports import asyncapi, jsonschema, odcs
from charter.exports.render import FORMATS, render
from charter.model import Charter, _hint

KINDS = ("asyncapi", "jsonschema", "odcs")

__all__ = ["FORMATS", "KINDS", "documents", "render"]


def documents(charter: Charter, kind: str, copy: str | None = None) -> list[dict[str, Any]]:
    """The export `kind` of `charter`: one document, or for odcs one per copy (`copy`: only
    that one's)."""
    if copy is not None and kind != "odcs":
        raise ValidationError(f"only an odcs export is per copy; {kind} describes them all")
    if copy is not None and copy not in charter.copies:
        hint = _hint(copy, tuple(charter.copies)) or f"copies: {', '.join(charter.copies)}"
        raise ValidationError(f"no copy '{copy}' in the charter; {hint}")
    if kind == "asyncapi":
        return [asyncapi.document(charter)]
    if kind == "jsonschema":
        return [jsonschema.document(charter)]
    if kind == "odcs":
        return odcs.documents(charter, copy)
    raise ValidationError(f"no export '{kind}'; one of {', '.join(KINDS)}")
