"""Ownership enforced by PostgreSQL itself (G1): roles and grants derived from the charter.

For each context on PostgreSQL, three login roles (charter.roles), each of which
reads every table of its own context:
  <system>_<context>            the service: writes only the entities it owns (and its outbox)
  <system>_<context>_projector  writes only its copies, checkpoints, tombstones, parked events
  <system>_<context>_reader     writes nothing
No role gets anything on another context's schema, so a service cannot read or
write another's tables. `plan()` compares what is wanted with what the server
has and returns only the statements that change something, so applying twice
changes nothing the second time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from charter.boundary import Guard
from charter.model import Charter
from charter.roles import PROJECTOR, READER, SERVICE, role_name
from charter.stores.postgres import split_url

OWNER_TABLES = {
    "charter_outbox": {"SELECT", "INSERT"},
    "charter_pending": {"SELECT", "INSERT", "DELETE"},
    "charter_command": {"SELECT", "INSERT"},  # each command's key, with its change
    "charter_schema": {"SELECT"},
    "charter_meta": {"SELECT"},
}
PROJECTOR_TABLES = {
    "charter_checkpoint": {"SELECT", "INSERT", "UPDATE"},
    "charter_lane": {"SELECT", "INSERT", "UPDATE"},
    "charter_tombstone": {"SELECT", "INSERT", "UPDATE"},
    "charter_parked": {"SELECT", "INSERT", "UPDATE", "DELETE"},  # parked --retry / --drop
    "charter_latency": {"SELECT", "INSERT", "UPDATE", "DELETE"},  # pruned past its retention
    "charter_drift": {"SELECT", "INSERT", "UPDATE"},  # each copy's last check (reconciliation)
    "charter_schema": {"SELECT"},
    "charter_meta": {"SELECT"},
}
WRITE = {"SELECT", "INSERT", "UPDATE", "DELETE"}

__all__ = ["ContextGrants", "execute", "plan", "role_name", "wanted"]


@dataclass
class ContextGrants:
    """What one context's roles should hold in its schema."""

    context: str
    url: str
    schema: str
    tables: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # role → table → privs

    @property
    def roles(self) -> list[str]:
        return list(self.tables)


def wanted(charter: Charter) -> list[ContextGrants]:
    result: list[ContextGrants] = []
    for context in charter.contexts.values():
        if not context.store.startswith(("postgresql://", "postgres://")):
            continue
        _, schema, _ = split_url(context.store)
        grants = ContextGrants(context.name, context.store, schema or context.name)
        owner, projector, reader = (
            role_name(charter.name, context.name, kind) for kind in (SERVICE, PROJECTOR, READER)
        )
        owned = {e.table: set(WRITE) for e in charter.owned_by(context.name)}
        copies = {c.table: set(WRITE) for c in charter.copies_in(context.name)}
        every = sorted({*owned, *copies, *OWNER_TABLES, *PROJECTOR_TABLES})
        # every role reads its own context (its copies, how they stand, what it relayed)
        grants.tables[reader] = {table: {"SELECT"} for table in every}
        grants.tables[owner] = _with(every, owned, OWNER_TABLES if owned else {})
        grants.tables[projector] = _with(every, copies, PROJECTOR_TABLES if copies else {})
        result.append(grants)
    return result


def _with(read: Iterable[str], *writes: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """SELECT on every table of `read`, and the privileges of `writes` on theirs."""
    tables = {table: {"SELECT"} for table in read}
    for granted in writes:
        for table, privileges in granted.items():
            tables[table] = tables.get(table, set()) | privileges
    return tables


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def plan_context(conn: psycopg.Connection[Any] | None, grants: ContextGrants) -> list[str]:
    """The statements that bring the server in line; all of them when `conn` is None."""
    schema = _quote(grants.schema)
    statements: list[str] = []
    for role in grants.roles:
        exists = conn is not None and bool(
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        )
        if not exists:
            statements.append(f"CREATE ROLE {_quote(role)} LOGIN")
        has_usage = (
            exists
            and conn is not None
            and _one(conn, "SELECT has_schema_privilege(%s, %s, 'USAGE')", (role, grants.schema))
        )
        if not has_usage:
            statements.append(f"GRANT USAGE ON SCHEMA {schema} TO {_quote(role)}")
        held = _held(conn, role, grants.schema) if exists and conn is not None else {}
        for table in sorted(set(grants.tables[role]) | set(held)):
            want = grants.tables[role].get(table, set())
            have = held.get(table, set())
            target = f"{schema}.{_quote(table)}"
            if want - have:
                privileges = ", ".join(sorted(want - have))
                statements.append(f"GRANT {privileges} ON {target} TO {_quote(role)}")
            if have - want:
                privileges = ", ".join(sorted(have - want))
                statements.append(f"REVOKE {privileges} ON {target} FROM {_quote(role)}")
        if "charter_outbox" in grants.tables[role] and "INSERT" in grants.tables[role].get(
            "charter_outbox", set()
        ):
            sequence = f"{grants.schema}.charter_outbox_seq_seq"
            has_sequence = (
                exists
                and conn is not None
                and _one(conn, "SELECT has_sequence_privilege(%s, %s, 'USAGE')", (role, sequence))
            )
            if not has_sequence:
                statements.append(
                    f"GRANT USAGE ON SEQUENCE {schema}.charter_outbox_seq_seq TO {_quote(role)}"
                )
    return statements


def _one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> bool:
    try:
        row = conn.execute(query, params).fetchone()
    except psycopg.errors.UndefinedTable:
        return False
    return bool(row and row[0])


def _held(conn: psycopg.Connection[Any], role: str, schema: str) -> dict[str, set[str]]:
    held: dict[str, set[str]] = {}
    rows = conn.execute(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = %s AND table_schema = %s",
        (role, schema),
    )
    for table, privilege in rows:
        if privilege in WRITE:
            held.setdefault(table, set()).add(privilege)
    return held


def plan(charter: Charter, connect: bool = True) -> dict[str, list[str]]:
    """context → statements. With connect=False, everything (for a server not reachable)."""
    result: dict[str, list[str]] = {}
    for grants in wanted(charter):
        if not connect:
            result[grants.context] = plan_context(None, grants)
            continue
        conninfo, _, _ = split_url(grants.url)
        with _connected(grants.context, grants.url, conninfo, autocommit=True) as conn:
            result[grants.context] = plan_context(conn, grants)
    return result


def execute(charter: Charter, statements: Mapping[str, Iterable[str]]) -> None:
    """Run each context's statements in one transaction on that context's database."""
    urls = {g.context: g.url for g in wanted(charter)}
    for context, sqls in statements.items():
        sqls = list(sqls)
        if not sqls:
            continue
        conninfo, _, _ = split_url(urls[context])
        with _connected(context, urls[context], conninfo) as conn, conn.transaction():
            for statement in sqls:
                conn.execute(statement)


@contextmanager
def _connected(
    context: str, url: str, conninfo: str, autocommit: bool = False
) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a context's database, whose errors are charter errors."""
    try:
        with psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=10) as conn:
            yield conn
    except psycopg.Error as exc:
        raise Guard(f"the store of context '{context}'", url).translate(exc) or exc from exc
