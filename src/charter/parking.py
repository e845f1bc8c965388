"""The way out for parked events (G8): apply them again once their cause is mended (the
charter corrected, a column widened), or forget them, with a note in the log. What a copy
has parked leaves it DEGRADED (charter.status) until one or the other."""

from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass
from typing import Any

from charter.errors import EventError, NotFoundError, ValidationError
from charter.events import Event, decode
from charter.model import Copy
from charter.projector import check
from charter.records import Parked
from charter.system import System

log = logging.getLogger("charter.parking")


@dataclass(frozen=True)
class Outcome:
    """A parked event tried again: resolved (applied where newer than the copy's version
    for its id; an older one changes nothing), or still parked, with its reason now."""

    parked: Parked
    resolved: bool
    reason: str


def copies(system: System, name: str | None = None) -> list[Copy]:
    """Every copy, or the one named; NotFoundError, with the nearest name, for another."""
    charter = system.charter
    if name is None:
        return list(charter.copies.values())
    if name not in charter.copies:
        close = difflib.get_close_matches(name, list(charter.copies), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise NotFoundError(
            f"no copy '{name}' in {charter.path} "
            f"(copies: {', '.join(charter.copies) or 'none'}){hint}"
        )
    return [charter.copies[name]]


def parked(system: System, copy: str | None = None, ident: str | None = None) -> list[Parked]:
    """The events parked in every copy (or `copy`), of every record (or the record or event
    whose id is `ident`), in bus order per copy."""
    return [
        p
        for c in copies(system, copy)
        for p in system.store(c.context).parked(c)
        if ident in (None, p.entity_id, p.event_id)
    ]


def retry(system: System, copy: str | None = None, ident: str | None = None) -> list[Outcome]:
    """Apply the parked events again as the projector would, under today's charter."""
    outcomes: list[Outcome] = []
    for spec in copies(system, copy):
        store = system.store(spec.context)
        mine = [p for p in store.parked(spec) if ident in (None, p.entity_id, p.event_id)]
        if not mine:
            continue
        entity = system.charter.entities[spec.of]
        team = system.charter.contexts[entity.owner].team
        fields = [entity.fields[name] for name in spec.fields]
        events: list[tuple[int, Event]] = []
        kept: list[Parked] = []
        for p in mine:
            try:
                events.append((p.position, check(decode(p.body), entity, team, fields)))
            except (EventError, ValidationError) as exc:
                kept.append(dataclasses.replace(p, reason=str(exc)))
        stay = {p.position: p.reason for p in store.retry_parked(spec, events, kept)}
        for p in mine:
            outcome = Outcome(p, p.position not in stay, stay.get(p.position, ""))
            if outcome.resolved:
                log.info("copy %s: parked event %s resolved on retry", spec.name, _name(p))
            outcomes.append(outcome)
    return outcomes


def drop(system: System, copy: str | None = None, ident: str | None = None) -> list[Parked]:
    """Forget parked events, each noted in the log with what it was and why it was parked:
    the copy stays without them (reconcile, or a newer version, mends the record)."""
    dropped: list[Parked] = []
    for spec in copies(system, copy):
        store = system.store(spec.context)
        mine = [p.position for p in store.parked(spec) if ident in (None, p.entity_id, p.event_id)]
        if not mine:
            continue
        for p in store.drop_parked(spec, mine):
            log.warning(
                "copy %s: dropped parked event %s, parked at %s: %s",
                spec.name,
                _name(p),
                p.parked_at,
                p.reason,
            )
            dropped.append(p)
    return dropped


def _name(p: Parked) -> str:
    return f"{p.event_id} (record {p.entity_id}, version {p.version}, bus position {p.position})"


def as_json(parked: Parked) -> dict[str, Any]:
    """A parked event as `charter parked --json` and the dashboard show it (no body)."""
    return {
        "copy": parked.copy,
        "id": parked.entity_id,
        "version": parked.version,
        "event_id": parked.event_id,
        "position": parked.position,
        "reason": parked.reason,
        "parked_at": parked.parked_at,
    }
