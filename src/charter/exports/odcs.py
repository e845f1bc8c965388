"""Each copy as an Open Data Contract Standard (ODCS v3.1.0) data contract: the table a
context keeps, its owner and the owner's team, its columns (only the fields it keeps),
where it is stored, and its window as a latency SLA: what the charter already says of
it, in the form data catalogues and contract tools read."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from charter import urls
from charter.exports.fields import INT64
from charter.exports.render import beside, fingerprint, seconds
from charter.model import Charter, Copy, Entity, Field

API_VERSION = "v3.1.0"
# charter type → ODCS logical type, and the options that say the rest
_LOGICAL: dict[str, tuple[str, dict[str, Any]]] = {
    "string": ("string", {}),
    "text": ("string", {}),
    "integer": ("integer", {"minimum": -INT64, "maximum": INT64 - 1}),
    "number": ("number", {}),
    "boolean": ("boolean", {}),
    "enum": ("string", {}),  # its values: a pattern (_field)
    "uuid": ("string", {"format": "uuid"}),
    "timestamp": ("timestamp", {"timezone": True}),
    "date": ("date", {"format": "yyyy-MM-dd"}),
}


def documents(charter: Charter, copy: str | None = None) -> list[dict[str, Any]]:
    """One contract per copy (or only `copy`'s), in the charter's order."""
    chosen = [c for c in charter.copies.values() if copy is None or c.name == copy]
    return [contract(charter, c) for c in chosen]


def contract(charter: Charter, copy: Copy) -> dict[str, Any]:
    entity = charter.entities[copy.of]
    owner = charter.contexts[entity.owner]
    keeper = charter.contexts[copy.context]
    breaks = f"; beyond it {copy.breaks}" if copy.breaks else ""
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "DataContract",
        "id": f"{charter.name}.{copy.name}",
        "name": copy.name,
        "version": "",
        "status": "active",
        "domain": entity.owner,
        "description": {
            "purpose": f"'{copy.context}' keeps the fields of {entity.name} it depends on: "
            f"{', '.join(copy.fields)}",
            "usage": f"read-only in '{copy.context}' (team {keeper.team}): changed only by "
            f"the events of {entity.name}'s owner '{entity.owner}'"
            + (f", which {entity.why}" if entity.why else ""),
            "limitations": f"at most {copy.window_s:g} s behind the owner{breaks}",
        },
        "team": {
            "name": owner.team,
            "description": f"owns {entity.name} in context '{entity.owner}': who to call "
            "when its data is wrong",
        },
        "schema": [_table(entity, copy)],
        "servers": [_server(charter, keeper.name, keeper.store)],
        "slaProperties": [
            {
                "id": "latency",
                "property": "latency",
                "value": seconds(copy.window_s),
                "unit": "s",
                "element": f"{copy.name}.synced_at",
                "driver": "operational",
                "description": f"a change committed in '{entity.owner}' is in '{copy.name}' "
                f"within {copy.window_s:g} s (the copy's window; `charter status` measures "
                f"it){breaks}",
            }
        ],
        "customProperties": [
            {"property": "charter", "value": charter.name},
            {"property": "entity", "value": entity.name},
            {"property": "owner", "value": entity.owner},
            {"property": "keptIn", "value": copy.context},
            {"property": "keptByTeam", "value": keeper.team},
            {"property": "breaks", "value": copy.breaks},
        ],
    }
    doc["version"] = fingerprint(doc)
    return doc


def _table(entity: Entity, copy: Copy) -> dict[str, Any]:
    key = {"primaryKey": True, "primaryKeyPosition": 1}
    columns = [
        {**key, **_column("id", "uuid", "the record's id, set by its owner")},
        _column("version", "integer", "the record's version; only a newer one is applied"),
        *(_field(entity.fields[name]) for name in copy.fields),
        _column("synced_at", "timestamp", "when the copy applied this version"),
    ]
    columns[1]["logicalTypeOptions"] = {"minimum": 1}
    return {
        "name": copy.name,
        "physicalName": copy.table,
        "physicalType": "table",
        "logicalType": "object",
        "businessName": entity.name,
        "description": f"a read-only copy of {entity.name} in '{copy.context}'",
        "properties": columns,
    }


def _field(field: Field) -> dict[str, Any]:
    column = _column(field.name, field.type, "", required=field.required)
    if field.type == "enum":
        column["logicalTypeOptions"] = {"pattern": f"^({'|'.join(field.values)})$"}
    if field.unique:
        column["unique"] = True
    return column


def _column(name: str, kind: str, description: str, required: bool = True) -> dict[str, Any]:
    logical, options = _LOGICAL[kind]
    column: dict[str, Any] = {"name": name, "physicalName": name, "logicalType": logical}
    if options:
        column["logicalTypeOptions"] = dict(options)
    column["required"] = required
    if description:
        column["description"] = description
    column["customProperties"] = [{"property": "charterType", "value": kind}]
    return column


def _server(charter: Charter, context: str, url: str) -> dict[str, Any]:
    """Where the copy's table is: the store of the context that keeps it (no password)."""
    if url.startswith(urls.POSTGRES):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        return {
            "server": context,
            "type": "postgresql",
            "host": parts.hostname or "localhost",
            "port": parts.port or 5432,
            "database": parts.path.lstrip("/") or parts.username or "postgres",  # as libpq
            "schema": query.get("schema", context),  # prepare() names it after the context
        }
    if url.startswith(urls.SQLITE):
        path = url[len(urls.SQLITE) :].split("?", 1)[0]
        return {
            "server": context,
            "type": "custom",
            "description": "an SQLite file",
            "path": beside(charter, path),
            "format": "sqlite",
        }
    return {"server": context, "type": "custom", "description": "in memory, in one process"}
