"""Where the statements come from: PostgreSQL's server log (csvlog or jsonlog; the lines of
`log_statement`, of `log_min_duration_statement`, or pgAudit's `AUDIT:` lines), and the live
`pg_stat_statements`. Each source yields `Seen` rows: who ran what, when, how many times.

A statement logged twice (by `log_statement` when it starts and again with its duration
when it ends, or by pgAudit once per relation) is counted once."""

from __future__ import annotations

import csv
import datetime as dt
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from charter.errors import Error

STATEMENT, PGAUDIT, OBJECT, STAT_STATEMENTS = (
    "log",
    "pgaudit",
    "pgaudit-object",
    "pg_stat_statements",
)


class Who(NamedTuple):
    """A session as the server names it."""

    user: str
    database: str
    application: str


@dataclass(frozen=True, slots=True)
class Seen:
    """One statement (or, from pg_stat_statements, `calls` of one), with who ran it. For a
    pgAudit OBJECT line, `relation` and `access` say what pgAudit saw (READ or WRITE)."""

    time: str
    who: Who
    session: str
    text: str
    source: str
    calls: int = 1
    relation: str = ""
    access: str = ""


class LogError(Error):
    """A log that cannot be read as a PostgreSQL csvlog or jsonlog."""


csv.field_size_limit(sys.maxsize)  # a long statement is one long field
_ACTION = re.compile(r"(?:statement|execute [^:]*): ", re.S)  # after "duration: … ms  "
CSV_COLUMNS = 26  # PostgreSQL 14+ (13 has 24; the ones read here are all in the first 23)


def read_log(path: Path, since: dt.datetime | None = None) -> Iterator[Seen]:
    """The statements in a csvlog (`*.csv`) or jsonlog (`*.json`) file; by its first
    character when the name says neither."""
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as stream:
            first = stream.read(1)
            stream.seek(0)
            if path.suffix == ".json" or (path.suffix != ".csv" and first == "{"):
                rows: Iterable[_Row] = _json_rows(stream, path)
            else:
                rows = _csv_rows(stream, path)
            yield from _statements(rows, since)
    except OSError as exc:
        raise LogError(f"cannot read the log {path}: {exc.strerror}") from None


class _Row(NamedTuple):
    time: str
    user: str
    database: str
    session: str
    message: str
    application: str


def _csv_rows(stream: Any, path: Path) -> Iterator[_Row]:
    for number, row in enumerate(csv.reader(stream), 1):
        if len(row) < 23:
            raise LogError(
                f"{path}:{number}: not a PostgreSQL csvlog line ({len(row)} fields, csvlog has "
                f"{CSV_COLUMNS}); set log_destination = 'csvlog' (or 'jsonlog')"
            )
        if row[11] == "LOG":
            yield _Row(row[0], row[1], row[2], row[5], row[13], row[22])


def _json_rows(stream: Any, path: Path) -> Iterator[_Row]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise LogError(f"{path}:{number}: not a PostgreSQL jsonlog line") from None
        if doc.get("error_severity") == "LOG":
            yield _Row(
                doc.get("timestamp", ""),
                doc.get("user", ""),
                doc.get("dbname", ""),
                doc.get("session_id", ""),
                doc.get("message", ""),
                doc.get("application_name", ""),
            )


def _statements(rows: Iterable[_Row], since: dt.datetime | None) -> Iterator[Seen]:
    plain: set[str] = set()  # sessions whose statements log_statement logs as they start
    audited: dict[str, tuple[str, str]] = {}  # session → its last pgAudit (statement, sub)
    for row in rows:
        message = row.message
        head = message[:10]
        if head.startswith("statement:"):
            source, text = STATEMENT, message[11:]
            plain.add(row.session)
        elif head.startswith("execute "):
            source, text = STATEMENT, message.partition(": ")[2]
            plain.add(row.session)
        elif head.startswith("duration:"):
            found = _ACTION.search(message)
            if found is None or row.session in plain:
                continue  # bind/parse, or counted already when it started
            source, text = STATEMENT, message[found.end() :]
        elif head.startswith("AUDIT: "):
            seen = _audit(row, audited, row.session in plain)
            if seen is None or (since is not None and moment(row.time) < since):
                continue
            yield from seen
            continue
        else:
            continue
        if since is not None and moment(row.time) < since:
            continue
        yield Seen(
            row.time, Who(row.user, row.database, row.application), row.session, text, source
        )


def _audit(row: _Row, audited: dict[str, tuple[str, str]], logged: bool) -> list[Seen] | None:
    """pgAudit's line: AUDIT: SESSION|OBJECT,statement id,substatement id,class,command,
    object type,object name,statement,parameter. A SESSION line's statement counts once per
    (sub)statement, unless log_statement logs this session's statements already (`logged`);
    an OBJECT line (object audit: `charter apply --audit-only`) is what pgAudit saw of one
    relation, not a statement of its own."""
    try:
        fields = next(csv.reader([row.message[7:]]))
    except (csv.Error, StopIteration):
        return None
    if len(fields) < 8:
        return None
    kind, statement, sub, access, _command, _type, relation, text = fields[:8]
    who = Who(row.user, row.database, row.application)
    if kind == "OBJECT":
        return [Seen(row.time, who, row.session, text, OBJECT, 1, relation, access)]
    if logged or audited.get(row.session) == (statement, sub):
        return None
    audited[row.session] = (statement, sub)
    return [Seen(row.time, who, row.session, text, PGAUDIT)]


_ZONES = {"UTC": dt.UTC, "GMT": dt.UTC, "Z": dt.UTC}
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})?$")


def moment(text: str) -> dt.datetime:
    """A log line's time (csvlog and jsonlog: '2025-01-31 12:00:00.123 UTC'), aware."""
    stamp, _, zone = text.rpartition(" ")
    if not stamp:
        stamp, zone = text, "UTC"
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        raise LogError(f"cannot read the time {text!r} in the log") from None
    tz = _ZONES.get(zone)
    if tz is None:
        offset = _OFFSET.match(zone)
        if offset is None:
            raise LogError(
                f"cannot read the time zone {zone!r} in the log, to compare with --since: "
                "set log_timezone = 'UTC' on the server (or a numeric offset)"
            )
        sign = -1 if offset.group(1) == "-" else 1
        minutes = int(offset.group(2)) * 60 + int(offset.group(3) or 0)
        tz = dt.timezone(sign * dt.timedelta(minutes=minutes))
    return when.replace(tzinfo=tz)


def read_stat_statements(url: str) -> Iterator[Seen]:
    """The statements pg_stat_statements has counted in the database at `url` (every
    database's, when the role may see them), each with its calls. It keeps no times."""
    from charter.boundary import Guard, driver

    with driver("pg_stat_statements", url):
        import psycopg
    guard = Guard("pg_stat_statements", url)
    query = (
        "SELECT coalesce(r.rolname, ''), coalesce(d.datname, ''), s.query, s.calls "
        "FROM pg_stat_statements s LEFT JOIN pg_roles r ON r.oid = s.userid "
        "LEFT JOIN pg_database d ON d.oid = s.dbid"
    )
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            try:
                rows = conn.execute(query + " WHERE s.toplevel").fetchall()
            except psycopg.errors.UndefinedColumn:  # before PostgreSQL 14
                rows = conn.execute(query).fetchall()
    except psycopg.errors.UndefinedTable:
        raise Error(
            f"pg_stat_statements is not installed in {guard}: CREATE EXTENSION "
            "pg_stat_statements (with shared_preload_libraries = 'pg_stat_statements')"
        ) from None
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise Error(
            f"pg_stat_statements is not loaded by the server of {guard}: add it to "
            "shared_preload_libraries and restart"
        ) from None
    except psycopg.Error as exc:
        raise guard.translate(exc) or Error(str(exc)) from None
    for user, database, text, calls in rows:
        yield Seen("", Who(user, database, ""), "", text, STAT_STATEMENTS, int(calls))
