"""Field values: check what a caller gives against the field's type and turn it
into the one canonical form stored and sent on the wire (JSON-ready)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Any

from charter import clock
from charter.errors import ValidationError
from charter.model import Entity, Field

Canonical = str | int | float | bool | None


def _bad(entity: str, field: Field, value: Any, expected: str) -> ValidationError:
    return ValidationError(
        f"{entity}.{field.name}: expected {expected}, got {value!r} ({type(value).__name__})"
    )


def timestamp_text(moment: dt.datetime) -> str:
    """Fixed-width UTC text, so that text order is time order inside any store (the year
    padded to four digits by hand: strftime's %Y writes year 1 as "1" on Linux)."""
    utc = moment.astimezone(dt.UTC)
    return f"{utc.year:04d}" + utc.strftime("-%m-%dT%H:%M:%S.%fZ")


_second: list[object] = [None, ""]  # the last whole second formatted, and its text


def now_text() -> str:
    """Now, as timestamp_text() would write it; the seconds part is formatted once a second."""
    micros = clock.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    if _second[0] != second:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{fraction:06d}Z"


def _timestamp(entity: str, field: Field, value: Any) -> str:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _bad(entity, field, value, "an ISO 8601 timestamp") from None
    if not isinstance(value, dt.datetime):
        raise _bad(entity, field, value, "a timestamp")
    if value.tzinfo is None:
        raise ValidationError(
            f"{entity}.{field.name}: timestamp {value.isoformat()} has no time zone; "
            "give an aware datetime (e.g. tzinfo=datetime.UTC)"
        )
    return timestamp_text(value)


def _date(entity: str, field: Field, value: Any) -> str:
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value)
        except ValueError:
            raise _bad(entity, field, value, "an ISO 8601 date") from None
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise _bad(entity, field, value, "a date")
    return value.isoformat()


def _string(entity: str, field: Field, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(entity, field, value, "a string")
    return value


def _integer(entity: str, field: Field, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(entity, field, value, "a whole number")
    if not -(2**63) <= value < 2**63:
        raise _bad(entity, field, value, "a whole number that fits in 64 bits")
    return value


def _number(entity: str, field: Field, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(entity, field, value, "a number")
    return float(value)


def _boolean(entity: str, field: Field, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(entity, field, value, "true or false")
    return value


def _enum(entity: str, field: Field, value: Any) -> str:
    if value not in field.values:
        raise ValidationError(
            f"{entity}.{field.name}: {value!r} is not one of {', '.join(field.values)}"
        )
    return str(value)


def _uuid(entity: str, field: Field, value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise _bad(entity, field, value, "a UUID") from None


_TEXT = frozenset({"string", "text"})
_DECODED = frozenset({"timestamp", "date", "boolean"})

ENCODERS: dict[str, Callable[[str, Field, Any], Canonical]] = {
    "string": _string,
    "text": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "enum": _enum,
    "uuid": _uuid,
    "timestamp": _timestamp,
    "date": _date,
}


def encode(entity: Entity, field: Field, value: Any) -> Canonical:
    if type(value) is str and field.type in _TEXT:  # the common case, without a call
        return value
    if value is None:
        if field.required:
            raise ValidationError(f"{entity.name}.{field.name} is required")
        return None
    return ENCODERS[field.type](entity.name, field, value)


def decode(field: Field, value: Any) -> Any:
    """Stored or wire form → the Python value a reader expects."""
    if value is None or field.type not in _DECODED:
        return value
    if field.type == "timestamp":
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if field.type == "date":
        return dt.date.fromisoformat(str(value))
    if field.type == "boolean":
        return bool(value)
    return value


def check_new(entity: Entity, values: dict[str, Any]) -> dict[str, Canonical]:
    """All fields of a new record, defaults filled, each checked."""
    unknown = set(values) - set(entity.fields)
    if unknown:
        raise ValidationError(
            f"{entity.name} has no field {', '.join(sorted(unknown))}; "
            f"its fields are {', '.join(entity.fields)}"
        )
    result: dict[str, Canonical] = {}
    for field in entity.fields.values():
        value = values.get(field.name, field.default)
        result[field.name] = encode(entity, field, value)
    return result


def check_changes(entity: Entity, values: dict[str, Any]) -> dict[str, Canonical]:
    unknown = set(values) - set(entity.fields)
    if unknown:
        raise ValidationError(
            f"{entity.name} has no field {', '.join(sorted(unknown))}; "
            f"its fields are {', '.join(entity.fields)}"
        )
    return {name: encode(entity, entity.fields[name], v) for name, v in values.items()}
