"""`charter apply --audit-only`: enforcement tried before it is switched on. Instead of
restricting a context's roles, pgAudit's object audit is set up so that exactly the
accesses `charter apply` would refuse are logged, and none is refused.

pgAudit logs an access to a table (an `AUDIT: OBJECT` line) when its session's audit role
(`pgaudit.role`) holds the privilege that access uses. So for each context and each kind of
role charter makes (service, projector, reader) there is an audit role,
`<system>_<context>_<kind>_audit`, holding on every table of the charter's schemas exactly
the privileges (SELECT, INSERT, UPDATE, DELETE) that the real role would *not* be granted
(`grants.wanted`): all of them on another context's tables, a copy's writes for a
service, an entity's writes for a projector, every write for a reader. Each login role is
pointed at its audit role in its database (`ALTER ROLE … IN DATABASE … SET pgaudit.role`):
charter's own roles where they exist, and the roles a `--map ROLE=CONTEXT` names (the
roles a system uses today, before it runs under charter's). `charter audit` then lists
what was logged. Planned as a diff against the server, so applying twice changes nothing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from charter.boundary import Guard
from charter.errors import Error
from charter.grants import WRITE, wanted
from charter.model import Charter
from charter.roles import KINDS, SERVICE, role_name
from charter.stores.postgres import split_url
from charter.urls import server


def audit_role(system: str, context: str, kind: str) -> str:
    """The audit role of a context's role of `kind`."""
    return role_name(system, context, f"{kind}_audit")


@dataclass
class Database:
    """The contexts whose stores are in one PostgreSQL database."""

    conninfo: str
    url: str
    contexts: dict[str, str] = field(default_factory=dict)  # context → schema


def databases(charter: Charter) -> list[Database]:
    found: dict[str, Database] = {}
    for grants in wanted(charter):
        conninfo, _, _ = split_url(grants.url)
        db = found.setdefault(conninfo, Database(conninfo, grants.url))
        db.contexts[grants.context] = grants.schema
    return list(found.values())


def plan(charter: Charter, mapping: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Each database's statements (by the first context in it), only what changes."""
    granted = {g.context: g for g in wanted(charter)}
    mapped = dict(mapping or {})
    unknown = sorted(set(mapped.values()) - set(charter.contexts))
    if unknown:
        raise Error(f"--map names no context of the charter: {unknown}")
    result: dict[str, list[str]] = {}
    for db in databases(charter):
        first = next(iter(db.contexts))
        with _connected(first, db.url, db.conninfo) as conn:
            _require_pgaudit(conn, first, db.url)
            tables = _tables(conn, sorted(set(db.contexts.values())))
            statements: list[str] = []
            for context, schema in db.contexts.items():
                for kind in KINDS:
                    role = role_name(charter.name, context, kind)
                    allowed = granted[context].tables[role]
                    want = {
                        (s, t): WRITE - (allowed.get(t, set()) if s == schema else set())
                        for s, t in tables
                    }
                    statements += _audit_role(conn, audit_role(charter.name, context, kind), want)
                    logins = [role] + [
                        name for name, ctx in mapped.items() if ctx == context and kind == SERVICE
                    ]
                    for login in logins:
                        statements += _point(conn, login, audit_role(charter.name, context, kind))
            result[first] = statements
    return result


def execute(charter: Charter, statements: Mapping[str, list[str]]) -> None:
    for db in databases(charter):
        first = next(iter(db.contexts))
        sqls = statements.get(first, [])
        if not sqls:
            continue
        with _connected(first, db.url, db.conninfo) as conn, conn.transaction():
            for sql in sqls:
                conn.execute(sql)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _require_pgaudit(conn: psycopg.Connection[Any], context: str, url: str) -> None:
    row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    loaded = [p.strip() for p in str(row[0] if row else "").split(",")]
    if "pgaudit" not in loaded:
        raise Error(
            f"pgAudit is not loaded by the server of context '{context}' "
            f"({server(url)}): add shared_preload_libraries = 'pgaudit' to its "
            "configuration and restart it (Debian: postgresql-15-pgaudit), then apply again"
        )


def _tables(conn: psycopg.Connection[Any], schemas: list[str]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE' ORDER BY 1, 2",
        (schemas,),
    ).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def _exists(conn: psycopg.Connection[Any], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _audit_role(
    conn: psycopg.Connection[Any], role: str, want: Mapping[tuple[str, str], set[str]]
) -> list[str]:
    statements = [] if _exists(conn, role) else [f"CREATE ROLE {_quote(role)} NOLOGIN"]
    held: dict[tuple[str, str], set[str]] = {}
    if not statements:
        rows = conn.execute(
            "SELECT table_schema, table_name, privilege_type "
            "FROM information_schema.role_table_grants WHERE grantee = %s",
            (role,),
        ).fetchall()
        for schema, table, privilege in rows:
            held.setdefault((str(schema), str(table)), set()).add(str(privilege))
    for key in sorted(set(want) | set(held)):
        target = f"{_quote(key[0])}.{_quote(key[1])}"
        more = want.get(key, set()) - held.get(key, set())
        less = (held.get(key, set()) & WRITE) - want.get(key, set())
        if more:
            statements.append(f"GRANT {', '.join(sorted(more))} ON {target} TO {_quote(role)}")
        if less:
            statements.append(f"REVOKE {', '.join(sorted(less))} ON {target} FROM {_quote(role)}")
    return statements


def _point(conn: psycopg.Connection[Any], login: str, audit: str) -> list[str]:
    """`login`'s sessions in this database audited by `audit` (a role not there yet is
    left alone: it is pointed when it exists, at the next apply)."""
    if not _exists(conn, login):
        return []
    row = conn.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
        "JOIN pg_database d ON d.oid = s.setdatabase "
        "WHERE r.rolname = %s AND d.datname = current_database()",
        (login,),
    ).fetchone()
    if row and f"pgaudit.role={audit}" in (row[0] or []):
        return []
    database = conn.execute("SELECT current_database()").fetchone()
    name = _quote(str(database[0])) if database else ""
    return [f"ALTER ROLE {_quote(login)} IN DATABASE {name} SET pgaudit.role = '{audit}'"]


@contextmanager
def _connected(context: str, url: str, conninfo: str) -> Iterator[psycopg.Connection[Any]]:
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            yield conn
    except psycopg.Error as exc:
        raise Guard(f"the store of context '{context}'", url).translate(exc) or exc from exc
