"""The traffic held against the charter: writes by non-owners (a superuser, an old role, a
context writing what another owns, a service writing its copies), tables written by more
than one context, reads of another context's tables and statements joining two contexts'
tables, tables no context owns, statements that could not be parsed, and (from pgAudit's
object audit, set up by `charter apply --audit-only`) what enforcement would refuse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from charter.audit.actors import Actor, Actors
from charter.audit.parse import Table
from charter.audit.traffic import Shape, Traffic
from charter.model import Charter
from charter.urls import POSTGRES

NON_OWNER_WRITE = "non_owner_write"
SHARED_TABLE = "shared_table"
CROSS_READ = "cross_context_read"
CROSS_JOIN = "cross_context_join"
UNOWNED = "unowned_table"
UNKNOWN = "unknown_statements"
WOULD_REFUSE = "would_be_refused"
KINDS = (NON_OWNER_WRITE, WOULD_REFUSE, SHARED_TABLE, CROSS_READ, CROSS_JOIN, UNOWNED, UNKNOWN)

INTERNAL = (
    "charter_outbox",
    "charter_pending",
    "charter_relay",
    "charter_checkpoint",
    "charter_lane",
    "charter_tombstone",
    "charter_parked",
    "charter_schema",
    "charter_meta",
)
ENTITY, COPY, BOOKKEEPING = "entity", "copy", "internal"


@dataclass(frozen=True, slots=True)
class Place:
    """What the charter says a table is: an entity at its owner, a copy in the context
    that keeps it, or charter's own bookkeeping in a context's store."""

    context: str
    kind: str  # entity, copy, internal
    name: str  # the entity's, the copy's, or the table's name
    entity: str = ""  # what it holds: the entity (of a copy too)


def schema_of(url: str, context: str) -> str | None:
    """The schema a context's PostgreSQL store keeps its tables in (None: not PostgreSQL,
    so its tables are matched by name in any schema)."""
    if not url.startswith(POSTGRES):
        return None
    return dict(parse_qsl(urlsplit(url).query)).get("schema") or context


class Catalog:
    """Every table the charter declares, found by schema and name."""

    def __init__(self, charter: Charter) -> None:
        self.schemas = {name: schema_of(c.store, name) for name, c in charter.contexts.items()}
        self._named: dict[str, list[tuple[str | None, Place]]] = {}
        for entity in charter.entities.values():
            self._add(entity.table, Place(entity.owner, ENTITY, entity.name, entity.name))
        for copy in charter.copies.values():
            self._add(copy.table, Place(copy.context, COPY, copy.name, copy.of))
        for context in charter.contexts:
            for table in INTERNAL:
                self._add(table, Place(context, BOOKKEEPING, table))

    def _add(self, table: str, place: Place) -> None:
        self._named.setdefault(table, []).append((self.schemas.get(place.context), place))

    def place(self, table: Table, actor: Actor) -> tuple[Table, Place | None]:
        """The table as the server would resolve it, and what the charter says it is. An
        unqualified name is looked for in the session's own context's schema first, then
        in public (a search_path's usual order)."""
        found = self._named.get(table.name, [])
        if table.schema is not None:
            exact = [p for s, p in found if s == table.schema] or [p for s, p in found if not s]
            return table, exact[0] if exact else None
        if not found:
            return Table("public", table.name), None
        mine = self.schemas.get(actor.context or "")
        for wanted in (mine, "public", None):
            for schema, place in found:
                if schema == wanted:
                    return Table(schema or "public", table.name), place
        schema, place = found[0]
        return Table(schema, table.name), place


@dataclass
class Finding:
    kind: str
    who: str  # the context, or "role X" for a session of no context
    tables: tuple[str, ...]
    statements: int = 0
    owner: str = ""  # whose table it is (the context that owns or keeps it)
    holds: str = ""  # the entity or copy it is
    ops: set[str] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)
    contexts: set[str] = field(default_factory=set)  # a join's contexts; a table's writers
    writers: dict[str, int] = field(default_factory=dict)  # a shared table's writers
    roles: set[str] = field(default_factory=set)  # the roles the statements ran under
    first: str = ""
    last: str = ""
    sample: str = ""

    def seen(self, shape: Shape | None, count: int, first: str, last: str, sample: str) -> None:
        self.statements += count
        if shape is not None:
            self.roles.add(shape.who.user)
        if first and (not self.first or first < self.first):
            self.first = first
        if last and last > self.last:
            self.last = last
        self.sample = self.sample or sample

    @property
    def message(self) -> str:
        table = ", ".join(self.tables)
        what = f" ({self.holds} of {self.owner})" if self.owner else ""
        n = f"{self.statements} statement{'s' if self.statements != 1 else ''}"
        if self.kind == NON_OWNER_WRITE:
            return f"{self.who} writes {table}{what}: {', '.join(sorted(self.ops))}, {n}"
        if self.kind == WOULD_REFUSE:
            return (
                f"{self.who}: {', '.join(sorted(self.ops))} on {table}{what} would be "
                f"refused under charter apply, {n}"
            )
        if self.kind == SHARED_TABLE:
            writers = ", ".join(f"{w} ({c})" for w, c in sorted(self.writers.items()))
            return f"{table}{what} is written by {len(self.writers)}: {writers}"
        if self.kind == CROSS_READ:
            cols = f" [{', '.join(sorted(self.columns))}]" if self.columns else ""
            return f"{self.who} reads {table}{what}{cols} directly, {n}"
        if self.kind == CROSS_JOIN:
            return (
                f"{self.who} joins the tables of {', '.join(sorted(self.contexts))} in one "
                f"statement: {table}, {n}"
            )
        if self.kind == UNOWNED:
            by = ", ".join(sorted(self.contexts))
            return f"{table} belongs to no context of the charter; used by {by}, {n}"
        return f"{self.who}: {n} PostgreSQL's parser refused (counted as unknown)"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "who": self.who,
            "tables": list(self.tables),
            "owner": self.owner or None,
            "holds": self.holds or None,
            "statements": self.statements,
            "ops": sorted(self.ops),
            "columns": sorted(self.columns),
            "contexts": sorted(self.contexts),
            "writers": dict(sorted(self.writers.items())),
            "roles": sorted(self.roles),
            "first": self.first or None,
            "last": self.last or None,
            "sample": self.sample,
            "message": self.message,
        }


@dataclass
class Report:
    """`charter audit`'s answer: what was read, who was seen, and every finding."""

    statements: int
    unknown: int
    sessions: dict[str, dict[str, Any]]
    findings: list[Finding]
    sources: list[str] = field(default_factory=list)

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def as_json(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "statements": self.statements,
            "parsed": self.statements - self.unknown,
            "unknown": self.unknown,
            "sessions": self.sessions,
            "findings": [f.as_json() for f in self.findings],
        }


def findings(traffic: Traffic, charter: Charter, actors: Actors) -> Report:
    """Every finding in `traffic` against `charter`, sessions placed by `actors`."""
    catalog = Catalog(charter)
    found: dict[tuple[Any, ...], Finding] = {}
    writers: dict[str, dict[str, int]] = {}  # table → writer → statements
    places: dict[str, Place] = {}
    sessions: dict[str, dict[str, Any]] = {}

    def finding(key: tuple[Any, ...], make: Finding) -> Finding:
        return found.setdefault(key, make)

    for shape in traffic.shapes:
        actor = actors.of(shape.who)
        session = sessions.setdefault(
            actor.label,
            {"context": actor.context, "roles": [], "applications": [], "statements": 0},
        )
        session["statements"] += shape.count
        for key, value in (("roles", shape.who.user), ("applications", shape.who.application)):
            if value and value not in session[key]:
                session[key].append(value)
        seen = (shape, shape.count, shape.first, shape.last, shape.text)
        if shape.accesses is None:
            finding((UNKNOWN, actor.label), Finding(UNKNOWN, actor.label, ())).seen(*seen)
            continue
        for access in shape.accesses:
            touched: dict[str, str] = {}  # table → its context, for joins
            for table in sorted(access.tables):
                if table.system:
                    continue
                where, place = catalog.place(table, actor)
                name = str(where)
                if place is None:
                    f = finding((UNOWNED, name), Finding(UNOWNED, "", (name,)))
                    f.contexts.add(actor.label)
                    f.seen(*seen)
                    continue
                places[name] = place
                touched[name] = place.context
                mine = place.context == actor.context
                if table in access.writes:
                    writers.setdefault(name, {}).setdefault(actor.label, 0)
                    writers[name][actor.label] += shape.count
                    if not (mine and actor.may_write(place.kind)):
                        f = finding(
                            (NON_OWNER_WRITE, actor.label, name),
                            Finding(NON_OWNER_WRITE, actor.label, (name,), 0, *_whose(place)),
                        )
                        f.ops |= access.writes[table]
                        f.seen(*seen)
                if table in access.reads and not mine:
                    f = finding(
                        (CROSS_READ, actor.label, name),
                        Finding(CROSS_READ, actor.label, (name,), 0, *_whose(place)),
                    )
                    f.columns |= access.columns.get(table, frozenset())
                    f.seen(*seen)
            contexts = set(touched.values())
            if len(contexts) > 1 and access.command not in ("DDL", "TRUNCATE"):
                tables = tuple(sorted(touched))
                f = finding(
                    (CROSS_JOIN, actor.label, tables), Finding(CROSS_JOIN, actor.label, tables)
                )
                f.contexts |= contexts
                f.seen(*seen)
    for name, by in writers.items():
        if len(by) > 1:
            f = Finding(SHARED_TABLE, "", (name,), sum(by.values()), *_whose(places[name]))
            f.writers = dict(by)
            f.contexts = set(by)
            found[(SHARED_TABLE, name)] = f
    for sighting in traffic.sightings:
        actor = actors.of(sighting.who)
        table = Table(*_split(sighting.relation))
        where, place = catalog.place(table, actor)
        owner = _whose(place) if place else ("", "")
        f = finding(
            (WOULD_REFUSE, actor.label, str(where)),
            Finding(WOULD_REFUSE, actor.label, (str(where),), 0, *owner),
        )
        f.ops.add(sighting.access)
        f.roles.add(sighting.who.user)
        f.seen(None, sighting.count, sighting.first, sighting.last, sighting.sample)
    order = {kind: n for n, kind in enumerate(KINDS)}
    ordered = sorted(found.values(), key=lambda f: (order[f.kind], f.who, f.tables))
    return Report(traffic.statements, traffic.unknown, sessions, ordered)


def _whose(place: Place) -> tuple[str, str]:
    return place.context, place.name


def _split(relation: str) -> tuple[str | None, str]:
    schema, dot, name = relation.rpartition(".")
    return (schema or None, name) if dot else (None, relation)
