"""What the server saw, gathered: each session's statements grouped by their normalised
text (a million pgbench statements are a handful of shapes), each shape parsed once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from charter.audit.parse import Access, Parser
from charter.audit.sources import OBJECT, Seen, Who

UNPARSED_LIMIT = 10_000  # distinct unparseable texts kept; beyond, counted together


@dataclass
class Shape:
    """Statements of one session kind (`who`) that differ only in their constants."""

    who: Who
    text: str  # normalised (constants as $1 …), or as logged when the parser refused it
    accesses: tuple[Access, ...] | None  # None: PostgreSQL's parser refused it
    count: int = 0
    first: str = ""  # when first and last seen, as the server wrote it ("" when unknown)
    last: str = ""
    source: str = ""


@dataclass
class Sighting:
    """pgAudit's object audit saw `who` access `relation` (READ or WRITE)."""

    who: Who
    relation: str
    access: str
    sample: str
    count: int = 0
    first: str = ""
    last: str = ""


@dataclass
class Traffic:
    shapes: list[Shape] = field(default_factory=list)
    sightings: list[Sighting] = field(default_factory=list)

    @property
    def statements(self) -> int:
        return sum(s.count for s in self.shapes)

    @property
    def unknown(self) -> int:
        return sum(s.count for s in self.shapes if s.accesses is None)

    @classmethod
    def collect(cls, seen: Iterable[Seen], parser: Parser | None = None) -> Traffic:
        parser = parser or Parser()
        counts: dict[tuple[Who, str | None, str], _Tally] = {}
        sightings: dict[tuple[Who, str, str], Sighting] = {}
        unparsed = 0
        key_of = parser.key
        for s in seen:
            if s.source == OBJECT:
                found = sightings.get((s.who, s.relation, s.access))
                if found is None:
                    found = Sighting(s.who, s.relation, s.access, s.text, 0, s.time)
                    sightings[(s.who, s.relation, s.access)] = found
                found.count += s.calls
                found.last = s.time
                continue
            key = key_of(s.text)
            raw = "" if key is not None else s.text
            if key is None:
                unparsed += 1
                if unparsed > UNPARSED_LIMIT:
                    raw = "(further statements the parser refused, not kept one by one)"
            tally = counts.get((s.who, key, raw))
            if tally is None:
                tally = counts[(s.who, key, raw)] = _Tally(s.time, s.source)
            tally.count += s.calls
            tally.last = s.time
        shapes = [
            Shape(
                who,
                key if key is not None else raw,
                parser.accesses(key) if key is not None else None,
                t.count,
                t.first,
                t.last,
                t.source,
            )
            for (who, key, raw), t in counts.items()
        ]
        return cls(shapes, list(sightings.values()))


class _Tally:
    __slots__ = ("count", "first", "last", "source")

    def __init__(self, first: str, source: str) -> None:
        self.count, self.first, self.last, self.source = 0, first, first, source
