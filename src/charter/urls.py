"""The URLs a charter names for its stores and its bus: which schemes may be which, the
options each understands, and how to print one without its password. Checked when the
charter is loaded, so a bad URL is reported with its file and line, not at first use."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

SQLITE, POSTGRES, NATS, MEMORY = (
    "sqlite:///",
    ("postgresql://", "postgres://"),
    "nats://",
    "memory://",
)
STORE_SCHEMES = (SQLITE, *POSTGRES, MEMORY)
BUS_SCHEMES = (SQLITE, NATS, MEMORY)
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")  # SQLite's PRAGMA synchronous
NATS_MAX_REPLICAS = 5  # JetStream's limit
_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def redact(url: str) -> str:
    """A URL fit to print: any password replaced by ***."""
    return re.sub(r"(://[^:/@,]+):[^@/]*@", r"\1:***@", url)


def server(url: str) -> str:
    """Where a store or bus lives, as a person would name it: host:port (the first of
    several), a file's path, or the URL itself (redacted)."""
    if url.startswith(SQLITE):
        return url[len(SQLITE) :].split("?", 1)[0]
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    first = netloc.split(",", 1)[0]
    if url.startswith(NATS):
        return first if ":" in first else f"{first}:4222"
    if url.startswith(POSTGRES):
        if not first:
            return "the local socket"
        return first if ":" in first else f"{first}:5432"
    return redact(url)


def problems(url: str, role: str) -> list[tuple[str, str]]:
    """What is wrong with `url` as a `role` ('store' or 'bus'): (message, hint) pairs."""
    schemes = STORE_SCHEMES if role == "store" else BUS_SCHEMES
    shown = redact(url)
    if not url.startswith(schemes):
        known = url.startswith((*STORE_SCHEMES, *BUS_SCHEMES))
        usable = ", ".join(s + "…" for s in dict.fromkeys(schemes))
        what = "cannot be a bus" if role == "bus" else "cannot be a store"
        if not known:
            what = "is not a URL charter knows"
        elif url.startswith(POSTGRES):
            what = "cannot be a bus: PostgreSQL keeps a context's store"
        elif url.startswith(NATS):
            what = "cannot be a store: NATS carries the events between stores"
        return [(f"{role} '{shown}' {what}", f"a {role} is one of {usable}")]
    if url.startswith(SQLITE):
        return _sqlite(url, role)
    if url.startswith(POSTGRES):
        return _postgres(url)
    if url.startswith(NATS):
        return _nats(url)
    return []  # memory://: the in-memory backend takes no options here


def _options(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def _unknown(role: str, key: str, known: tuple[str, ...]) -> tuple[str, str]:
    return (f"{role} URL: unknown option '{key}'", f"options it understands: {', '.join(known)}")


def _sqlite(url: str, role: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not url[len(SQLITE) :].split("?", 1)[0]:
        found.append((f"{role} URL '{url}' names no file", "sqlite:///path/to/file.db"))
    for key, value in _options(url):
        if key != "synchronous":
            found.append(_unknown(f"SQLite {role}", key, ("synchronous",)))
        elif value.upper() not in SYNCHRONOUS:
            found.append(
                (
                    f"SQLite {role} URL: synchronous={value} is not a setting SQLite knows",
                    f"one of {', '.join(s.lower() for s in SYNCHRONOUS)} (FULL when not given)",
                )
            )
    return found


def _postgres(url: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (reading it checks it)
    except ValueError:
        found.append(
            (
                f"PostgreSQL store URL '{redact(url)}': the port is not a number",
                "postgresql://user@host:5432/database",
            )
        )
    libpq: list[str] = []
    for key, value in _options(url):
        if key == "schema":
            if not _SCHEMA.match(value):
                found.append(
                    (
                        f"PostgreSQL store URL: schema '{value}' is not a plain name",
                        "letters, digits and underscores, not starting with a digit",
                    )
                )
        elif key == "pool":
            if not value.isdigit() or int(value) < 1:
                found.append(
                    (
                        f"PostgreSQL store URL: pool={value} is not a number of connections",
                        "a whole number ≥ 1, e.g. pool=10 (the default)",
                    )
                )
        else:
            libpq.append(f"{key}={value}")
    if libpq:
        found.extend(_libpq(libpq))
    return found


def _libpq(params: list[str]) -> list[tuple[str, str]]:
    """Parameters other than charter's own go to libpq, which knows its own list."""
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # without the PostgreSQL driver there is nothing to ask
        return []
    found = []
    for param in params:
        try:
            conninfo_to_dict("postgresql://localhost/?" + param)
        except ProgrammingError as exc:
            found.append(
                (
                    f"PostgreSQL store URL: {str(exc).strip()}",
                    "options are schema, pool, and libpq's connection parameters "
                    "(sslmode, connect_timeout, application_name, …)",
                )
            )
    return found


def _nats(url: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    netloc = url[len(NATS) :].partition("?")[0].rstrip("/").rpartition("@")[2]
    if not [h for h in netloc.split(",") if h.strip()]:
        found.append((f"NATS bus URL '{redact(url)}' names no server", "nats://host:4222"))
    for key, value in _options(url):
        if key not in ("replicas", "partitions"):
            found.append(_unknown("NATS bus", key, ("replicas", "partitions")))
        elif not value.isdigit() or int(value) < 1:
            found.append(
                (
                    f"NATS bus URL: {key}={value} is not a whole number ≥ 1",
                    "replicas: 1 to 5 (3 for a stream that matters); partitions: 16 by default",
                )
            )
        elif key == "replicas" and int(value) > NATS_MAX_REPLICAS:
            found.append(
                (
                    f"NATS bus URL: replicas={value}, but JetStream keeps at most "
                    f"{NATS_MAX_REPLICAS} replicas",
                    "use 3 for a stream that matters",
                )
            )
    return found
