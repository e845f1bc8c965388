"""The NATS JetStream bus, a package (being split by concern; see readers.py for now)."""

from charter.buses.nats.readers import (
    COMPACTED,
    FETCH_BUDGET_S,
    NOTES,
    POSITION,
    BusError,
    NatsBus,
    NatsUrl,
    RefusedError,
    note_subject,
    parse_url,
    stream_name,
    token,
)

__all__ = [
    "COMPACTED",
    "FETCH_BUDGET_S",
    "NOTES",
    "POSITION",
    "BusError",
    "NatsBus",
    "NatsUrl",
    "RefusedError",
    "note_subject",
    "parse_url",
    "stream_name",
    "token",
]
