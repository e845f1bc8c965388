"""One record's story: what its owner made of it, version by version (the outbox is its
full history: public values, who and when; private fields by name only), and where each
copy of it stands (the version it holds and when it got it, or that it holds none)."""

from __future__ import annotations

import difflib
from typing import Any

from charter.errors import Error, NotFoundError
from charter.system import System
from charter.tables import states_of


def story(system: System, entity: str, entity_id: str) -> dict[str, Any]:
    """The story of `entity` `entity_id`; NotFoundError for an entity the charter does not
    name (with the nearest name) or a record its owner never had."""
    charter = system.charter
    spec = charter.entities.get(entity)
    if spec is None:
        close = difflib.get_close_matches(entity, list(charter.entities), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise NotFoundError(
            f"no entity '{entity}' in the charter (entities: {', '.join(charter.entities)}){hint}"
        )
    rows = system.store(spec.owner).history(entity, entity_id)
    if not rows:
        raise NotFoundError(f"'{spec.owner}' has no {entity} with id {entity_id!r}")
    versions = [
        {
            "version": r.version,
            "op": r.op,
            "changed": list(r.changed),
            "private_changed": list(r.private),
            "actor": r.actor,
            "time": r.time,
            "values": state,
        }
        for r, state in zip(rows, states_of(rows), strict=True)
    ]
    latest = rows[-1]
    return {
        "entity": entity,
        "id": entity_id,
        "owner": spec.owner,
        "team": charter.contexts[spec.owner].team,
        "version": latest.version,
        "deleted": latest.op == "deleted",
        "versions": versions,
        "copies": [
            _where(system, copy_name, entity_id, latest.version, latest.op)
            for copy_name in (c.name for c in charter.copies_of(entity))
        ],
    }


def _where(system: System, name: str, entity_id: str, version: int, op: str) -> dict[str, Any]:
    copy = system.charter.copies[name]
    doc: dict[str, Any] = {"copy": name, "in": copy.context, "window_s": copy.window_s}
    try:
        rows = list(system.store(copy.context).copy_rows(copy, {"id": entity_id}))
    except Error as exc:
        return doc | {"version": None, "where": "unknown", "error": str(exc)}
    if not rows:
        where = "deleted, as at its owner" if op == "deleted" else "not held"
        return doc | {"version": None, "synced_at": None, "values": None, "where": where}
    row = rows[0]
    held = int(row["version"])
    if op == "deleted":
        where = f"holds version {held}; its owner deleted it at version {version}"
    elif held >= version:
        where = "current"
    else:
        behind = version - held
        where = f"{behind} version{'s' if behind != 1 else ''} behind"
    return doc | {
        "version": held,
        "synced_at": row.get("synced_at"),
        "values": {f: row.get(f) for f in copy.fields},
        "where": where,
    }
