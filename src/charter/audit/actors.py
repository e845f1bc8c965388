"""Which context a session speaks for: by a mapping given on the command line (a role or
an application name → a context), by the roles `charter apply` makes (`<system>_<context>`,
`…_projector`, `…_reader`), or by an application name (or a role) that is a context's name.
A session none of these place is of no context: its writes are a non-owner's by definition."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from charter.audit.sources import Who
from charter.errors import Error
from charter.model import Charter
from charter.roles import PROJECTOR, READER, SERVICE, whose

ANY = "any"  # placed by name, not by a role of charter's: service or projector, unknown
# application names that say which client ran, not which service: never a context's name
CLIENTS = frozenset(
    {"", "psql", "pgbench", "pg_dump", "pg_restore", "pgAdmin", "DBeaver", "[unknown]"}
)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it, in the charter's words: a context (and the kind of role, when a role of
    charter's says it), or, for a session of no context, its role."""

    context: str | None
    kind: str  # service, projector, reader, or ANY
    role: str
    application: str

    @property
    def label(self) -> str:
        if self.context is not None:
            return self.context
        app = f" ({self.application})" if self.application not in CLIENTS else ""
        return f"role {self.role}{app}"

    def may_write(self, kind: str) -> bool:
        """May this actor's role write a table of its own context that holds `kind` (an
        entity, a copy, or charter's own bookkeeping)?"""
        if self.kind == READER:
            return False
        if kind == "entity":
            return self.kind in (SERVICE, ANY)
        if kind == "copy":
            return self.kind in (PROJECTOR, ANY)
        return True


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """NAME=CONTEXT pairs (NAME: a role or an application name) from the command line."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, context = pair.partition("=")
        if not sep or not name.strip() or not context.strip():
            raise Error(f"--map {pair!r}: write it as NAME=CONTEXT (a role or application name)")
        mapping[name.strip()] = context.strip()
    return mapping


class Actors:
    """Places sessions in contexts, the same way for every statement of a run."""

    def __init__(self, charter: Charter | None, mapping: Mapping[str, str] | None = None) -> None:
        self.charter = charter
        self.mapping = dict(mapping or {})
        if charter is not None:
            unknown = sorted(set(self.mapping.values()) - set(charter.contexts))
            if unknown:
                names = ", ".join(charter.contexts)
                raise Error(f"--map names no context of the charter: {unknown} (contexts: {names})")
        self._placed: dict[Who, Actor] = {}

    def of(self, who: Who) -> Actor:
        found = self._placed.get(who)
        if found is None:
            found = self._placed[who] = self._place(who)
        return found

    def _place(self, who: Who) -> Actor:
        user, app = who.user, who.application
        for name in (app, user):
            if name and name in self.mapping:
                return Actor(self.mapping[name], ANY, user, app)
        if self.charter is None:  # inferring contexts: the application, else the role
            name = app if app not in CLIENTS else user
            return Actor(context_name(name), ANY, user, app)
        role = whose(self.charter, user)
        if role is not None:
            return Actor(role[0], role[1], user, app)
        for name in (app, user):
            if name in self.charter.contexts:
                return Actor(name, ANY, user, app)
        return Actor(None, ANY, user, app)


def context_name(name: str) -> str:
    """A name fit for a charter (letters, digits, underscores, a letter first)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "unnamed"
    return cleaned if cleaned[0].isalpha() else f"c_{cleaned}"
