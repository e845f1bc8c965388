"""The system as it really is, read from PostgreSQL: which sessions read and wrote which
tables (`sources` → `parse` → `traffic`), held against the charter (`actors`, `findings`),
or, for a system that has none yet, a draft charter inferred from it (`suggest`).

Statements are parsed with pglast (the extra `charter[audit]`); importing this package
needs nothing, `require()` says what to install when it is missing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from charter import clock
from charter.errors import Error, MissingExtraError
from charter.model import Charter, parse_duration

if TYPE_CHECKING:
    from charter.audit.findings import Report
    from charter.audit.sources import Seen
    from charter.audit.traffic import Traffic

__all__ = ["audit", "read", "require", "since"]


def require() -> None:
    """pglast is there, or a MissingExtraError saying how to install it."""
    try:
        import pglast  # noqa: F401
    except ModuleNotFoundError:
        raise MissingExtraError(
            "charter audit parses SQL with pglast, which is not installed here: "
            "pip install 'charter[audit]'",
            extra="audit",
            package="pglast",
        ) from None


def since(text: str) -> dt.datetime:
    """--since: a duration back from now (30m, 2h, 7d) or a time (ISO 8601; UTC unless it
    says its offset)."""
    back = parse_duration(text)
    if back is not None:
        return dt.datetime.fromtimestamp(clock.time_s() - back, dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Error(
            f"--since {text!r} is neither a duration (30m, 2h, 7d) nor a time "
            "(2025-01-31T12:00:00+00:00)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def read(
    logs: Sequence[Path] = (),
    stat_statements: str | None = None,
    after: dt.datetime | None = None,
) -> Traffic:
    """The traffic in these server logs and/or the live pg_stat_statements at a URL."""
    require()
    from charter.audit.sources import read_log, read_stat_statements
    from charter.audit.traffic import Traffic

    def seen() -> Iterator[Seen]:
        for path in logs:
            yield from read_log(path, after)
        if stat_statements:
            yield from read_stat_statements(stat_statements)

    return Traffic.collect(seen())


def audit(
    charter: Charter,
    logs: Sequence[Path] = (),
    stat_statements: str | None = None,
    mapping: Mapping[str, str] | None = None,
    after: dt.datetime | None = None,
) -> Report:
    """The findings of `charter audit`: the traffic read, held against `charter`."""
    require()
    from charter.audit.actors import Actors
    from charter.audit.findings import findings

    actors = Actors(charter, mapping)  # a bad mapping fails before the logs are read
    report = findings(read(logs, stat_statements, after), charter, actors)
    report.sources = [str(p) for p in logs] + (["pg_stat_statements"] if stat_statements else [])
    return report
