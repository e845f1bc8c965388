"""A draft charter inferred from the traffic of a system that has none: contexts from the
sessions (a mapping, else their application names, else their roles), each table's owner
from who writes it (who creates its rows first: the owner is the one that creates ids),
copies from who reads another context's tables (the columns it reads become the copy's
fields), and every table written by several contexts as a comment to resolve. Each
owner's `why` gives the evidence in counts. `charter check` accepts the draft as it is."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from charter import model
from charter.audit.actors import Actors, context_name
from charter.audit.parse import Table
from charter.audit.traffic import Traffic
from charter.model import RESERVED_FIELDS

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
TYPES = {
    "smallint": "integer",
    "integer": "integer",
    "bigint": "integer",
    "numeric": "number",
    "real": "number",
    "double precision": "number",
    "boolean": "boolean",
    "uuid": "uuid",
    "timestamp with time zone": "timestamp",
    "timestamp without time zone": "timestamp",
    "date": "date",
    "text": "text",
}  # PostgreSQL's data_type → a charter field type (anything else: string)


@dataclass
class Usage:
    """How the traffic used one table."""

    table: Table
    writes: Counter[str] = field(default_factory=Counter)  # context → statements
    inserts: Counter[str] = field(default_factory=Counter)
    ops: dict[str, Counter[str]] = field(default_factory=dict)  # context → op → statements
    reads: Counter[str] = field(default_factory=Counter)
    columns: dict[str, set[str]] = field(default_factory=dict)  # reader → columns read
    seen: set[str] = field(default_factory=set)  # every column the traffic named

    @property
    def owner(self) -> str:
        """Who creates its rows (most INSERTs), else who writes it most, else who reads it
        most (then said in its why)."""
        for counts in (self.inserts, self.writes, self.reads):
            if counts:
                return max(sorted(counts), key=lambda c: counts[c])
        return ""


def usage(traffic: Traffic, actors: Actors) -> dict[Table, Usage]:
    found: dict[Table, Usage] = {}
    for shape in traffic.shapes:
        if shape.accesses is None:
            continue
        who = actors.of(shape.who).context or context_name(shape.who.user)
        for access in shape.accesses:
            for table in access.tables:
                if table.system:
                    continue
                where = Table(table.schema or "public", table.name)
                use = found.setdefault(where, Usage(where))
                if table in access.writes:
                    use.writes[who] += shape.count
                    ops = use.ops.setdefault(who, Counter())
                    for op in access.writes[table]:
                        ops[op] += shape.count
                    if "INSERT" in access.writes[table] or "COPY" in access.writes[table]:
                        use.inserts[who] += shape.count
                if table in access.reads:
                    use.reads[who] += shape.count
                    use.columns.setdefault(who, set()).update(access.columns.get(table, ()))
                use.seen.update(access.columns.get(table, ()))
                use.seen.update(access.written.get(table, ()))
    return found


def suggest(
    traffic: Traffic,
    mapping: Mapping[str, str] | None = None,
    columns: Mapping[Table, Mapping[str, str]] | None = None,
    server: str | None = None,
    name: str | None = None,
) -> str:
    """The draft charter, as YAML with comments. `columns`: each table's columns and their
    PostgreSQL types, when the database could be asked (`column_types`); `server`: the
    PostgreSQL URL its stores name (else localhost and the database the sessions used)."""
    actors = Actors(None, mapping)
    uses = sorted(usage(traffic, actors).values(), key=lambda u: (u.owner, u.table))
    uses = [u for u in uses if u.owner]
    databases = Counter(s.who.database for s in traffic.shapes if s.who.database)
    database = databases.most_common(1)[0][0] if databases else "postgres"
    system = context_name(name or database)
    owned: dict[str, list[Usage]] = {}
    for use in uses:
        owned.setdefault(use.owner, []).append(use)
    contexts = sorted({u.owner for u in uses} | {c for u in uses for c in (*u.writes, *u.reads)})
    lines = [
        f"# A draft charter inferred by `charter audit --suggest` from {traffic.statements} "
        f"statements ({traffic.unknown} unknown).",
        "# Read every comment: teams, types and windows are guesses; each CONFLICT is a table",
        "# that several contexts write, and the charter allows one owner.",
        "charter: 1",
        f"name: {system}",
        "contexts:",
    ]
    for context in contexts:
        tables = owned.get(context, [])
        schemas = Counter(u.table.schema or "public" for u in tables)
        schema = schemas.most_common(1)[0][0] if schemas else "public"
        store = _store(server, database, schema)
        if len(schemas) > 1:
            lines.append(f"  # {context} owns tables in several schemas: {', '.join(schemas)}")
        lines.append(f"  {context}:")
        lines.append(f"    team: {context}-team  # who to call when its data is wrong")
        lines.append(f"    store: {json.dumps(store)}")
    lines.append("entities:")
    entities: dict[Table, str] = {}
    fields_of: dict[Table, list[str]] = {}
    for use in uses:
        entity = _entity_name(use.table, set(entities.values()))
        entities[use.table] = entity
        known = dict((columns or {}).get(use.table, {}))
        names = sorted(n for n in (use.seen | set(known)) - {"*"} if _field_ok(n))
        fields_of[use.table] = names
        writers = {c: n for c, n in use.writes.items() if c != use.owner}
        if writers:
            lines.append(
                f"  # CONFLICT: {use.table} is written by {len(use.writes)} contexts: "
                + "; ".join(_ops(use, c) for c in sorted(use.writes))
            )
            lines.append(
                f"  # keep one owner ({use.owner} creates its rows); the others ask it to "
                "make the change, or keep a copy"
            )
        if model.snake_case(entity) != use.table.name:
            lines.append(f"  # table {use.table}: an entity of another name; rename one of them")
        lines.append(f"  {entity}:")
        lines.append(f"    owner: {use.owner}")
        lines.append(f"    why: {json.dumps(_why(use))}")
        if names:
            lines.append("    fields:")
            for column in names:
                kind = TYPES.get(known.get(column, ""), "string")
                guess = "" if column in known else "  # type not read from the database"
                lines.append(f"      {column}: {kind}{guess}")
        skipped = sorted(c for c in use.seen | set(known) if c != "*" and not _field_ok(c))
        if skipped:
            lines.append(f"    # columns charter keeps itself or cannot name: {', '.join(skipped)}")
    copies: list[str] = []
    for use in uses:
        for reader in sorted(use.reads):
            if reader == use.owner:
                continue
            read = use.columns.get(reader, set())
            wanted = (
                fields_of[use.table] if "*" in read else sorted(read & set(fields_of[use.table]))
            )
            evidence = f"{use.reads[reader]} statements read {use.table}"
            if not wanted:
                copies.append(
                    f"  # {reader} reads {use.table} ({evidence}), only its ids: no copy drafted"
                )
                continue
            copies += [
                f"  {context_name(reader + '_' + use.table.name)}:  # {evidence} directly",
                f"    in: {reader}",
                f"    of: {entities[use.table]}",
                f"    fields: [{', '.join(wanted)}]",
                "    window: 5s  # a guess: how stale may it get?",
                f"    breaks: {json.dumps(f'what {reader} shows from {use.table} is out of date')}",
            ]
    lines.append("copies:" if any(not c.lstrip().startswith("#") for c in copies) else "copies: {}")
    lines += copies
    text = "\n".join(lines) + "\n"
    model.loads(text)  # a draft charter check would refuse is a bug here, not the user's
    return text


def _store(server: str | None, database: str, schema: str) -> str:
    if server:
        parts = urlsplit(server)
        user, at, host = parts.netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}@{host}" if at else host  # never its password
        return urlunsplit(parts._replace(netloc=netloc, query=f"schema={schema}", fragment=""))
    return f"postgresql://localhost/{database}?schema={schema}"


def _entity_name(table: Table, taken: set[str]) -> str:
    name = context_name(table.name)
    if name in taken:
        name = context_name(f"{table.schema}_{table.name}")
    return name


def _field_ok(column: str) -> bool:
    return (
        bool(_NAME.match(column))
        and column not in RESERVED_FIELDS
        and not column.startswith("charter_")
    )


def _ops(use: Usage, context: str) -> str:
    ops = use.ops.get(context, Counter())
    detail = ", ".join(f"{n} {op}" for op, n in sorted(ops.items()))
    return f"{context} ({detail})"


def _why(use: Usage) -> str:
    """The evidence for the owner, in counts."""
    owner = use.owner
    if not use.writes:
        readers = ", ".join(f"{c} ({n})" for c, n in sorted(use.reads.items()))
        return f"no writes seen; owner guessed from its readers: {readers} statements"
    text = f"writes {use.table}: {_ops(use, owner).partition(' ')[2].strip('()')}"
    others = {c: n for c, n in use.reads.items() if c != owner}
    if others:
        text += "; read by " + ", ".join(f"{c} ({n})" for c, n in sorted(others.items()))
    return text


def column_types(url: str, tables: list[Table]) -> dict[Table, dict[str, str]]:
    """Each table's columns and their types, read from the database at `url`."""
    from charter.boundary import Guard, driver

    with driver("the database to read column types from", url):
        import psycopg
    found: dict[Table, dict[str, str]] = {}
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            for table in tables:
                rows = conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = %s",
                    (table.schema or "public", table.name),
                ).fetchall()
                if rows:
                    found[table] = {str(c): str(t) for c, t in rows}
    except psycopg.Error as exc:
        raise Guard("the database to read column types from", url).translate(exc) or exc from exc
    return found


def draft(
    logs: list[Path],
    stat_statements: str | None,
    mapping: Mapping[str, str],
    after: dt.datetime | None,
    columns_from: str | None,
) -> str:
    """`charter audit --suggest`: read the traffic, ask the database for the columns' types
    when it can be asked, and draft."""
    from charter.audit import read

    traffic = read(logs, stat_statements, after)
    types: dict[Table, dict[str, str]] = {}
    if columns_from:
        uses = usage(traffic, Actors(None, mapping))
        types = column_types(columns_from, sorted(uses))
    return suggest(traffic, mapping, types, columns_from)
