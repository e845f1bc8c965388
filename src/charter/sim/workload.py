"""What the owners write in a simulated run: values for any charter's fields, drawn so
that `unique` and `no_overlap` collide now and then."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

from charter.model import Entity, Field

_DAY = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
_WORDS = ("ada", "bo", "cy", "dee", "eli", "fay", "gus", "hal")


def _ranged(entity: Entity) -> dict[str, str]:
    """Fields of a no_overlap rule: start or end of its range, or one of its `per` fields."""
    roles: dict[str, str] = {}
    for rule in entity.constraints:
        roles[rule.start], roles[rule.end] = "start", "end"
        roles.update({name: "per" for name in rule.per})
    return roles


def value(rng: random.Random, field: Field, role: str = "") -> Any:
    if not field.required and role == "" and rng.random() < 0.2:
        return None
    kind = field.type
    if kind in ("string", "text"):
        if field.unique:
            return f"{field.name}-{rng.randrange(40)}"
        return rng.choice(_WORDS[:3] if role == "per" else _WORDS)
    if kind == "integer":
        return rng.randrange(3) if role == "per" else rng.randrange(1000)
    if kind == "number":
        return rng.randrange(100_000) / 100
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "enum":
        return rng.choice(field.values)
    if kind == "uuid":
        pool = 3 if role == "per" else 1 << 64
        return str(uuid.UUID(int=rng.randrange(pool) + 1))
    if kind == "date":
        return (_DAY + dt.timedelta(days=rng.randrange(30))).date()
    return _DAY + dt.timedelta(minutes=15 * rng.randrange(96))  # timestamp


def new_record(rng: random.Random, entity: Entity) -> dict[str, Any]:
    roles = _ranged(entity)
    fields = {name: value(rng, f, roles.get(name, "")) for name, f in entity.fields.items()}
    for rule in entity.constraints:  # a range of one to three hours, start before end
        start = _DAY + dt.timedelta(hours=rng.randrange(8))
        fields[rule.start] = start
        fields[rule.end] = start + dt.timedelta(hours=1 + rng.randrange(3))
    return fields


def changes(rng: random.Random, entity: Entity) -> dict[str, Any]:
    """One or two fields of a record, changed (not a range's end alone: it could end
    before its start)."""
    roles = _ranged(entity)
    names = [n for n in entity.fields if roles.get(n) not in ("start", "end")]
    if not names or (entity.constraints and rng.random() < 0.3):
        ranged = new_record(rng, entity)
        return {n: ranged[n] for n in roles if roles[n] in ("start", "end")}
    picked = rng.sample(names, min(len(names), 1 + rng.randrange(2)))
    return {n: value(rng, entity.fields[n], roles.get(n, "")) for n in picked}
