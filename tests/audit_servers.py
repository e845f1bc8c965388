"""A PostgreSQL of the audit tests' own (`pg_server`), set up as a server to be audited is:
every statement logged as csvlog and jsonlog, pgAudit and pg_stat_statements preloaded.
The shared server at 127.0.0.1:5432 is never reconfigured.

    with audited() as pg:
        ...traffic...
        pg.flushed()          # the log holds everything sent so far
        pg.csv, pg.json       # the log files"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests import pg_server

SETTINGS = {
    "logging_collector": "on",
    "log_destination": "csvlog,jsonlog",
    "log_filename": "server.log",
    "log_rotation_size": "0",
    "log_statement": "all",
    "log_timezone": "UTC",
    "shared_preload_libraries": "pgaudit,pg_stat_statements",
}


class Audited:
    def __init__(self, pg: pg_server.Server) -> None:
        self.pg = pg
        self.url = pg.url
        self.port = pg.port
        self.logs = pg.folder / "logs"

    @property
    def csv(self) -> Path:
        return self.logs / "server.csv"

    @property
    def json(self) -> Path:
        return self.logs / "server.json"

    def as_role(self, role: str, application: str = "") -> psycopg.Connection[tuple[object, ...]]:
        url = self.url.replace("postgres@", f"{role}@")
        return psycopg.connect(url, autocommit=True, application_name=application)

    def sql(self, *statements: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    def now(self) -> str:
        """The server's clock, to audit --since this moment."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        return str(row[0].isoformat())

    def pgbench(self, *args: str, user: str = "postgres", application: str = "") -> None:
        env = dict(os.environ, PGHOST=pg_server.HOST, PGPORT=str(self.port), PGUSER=user)
        if application:
            env["PGAPPNAME"] = application
        subprocess.run(
            ["pgbench", *args, "postgres"], env=env, check=True, capture_output=True, timeout=120
        )

    def flushed(self, timeout: float = 20.0) -> None:
        """Wait until the logging collector has written everything sent before this call."""
        marker = f"charter-audit-marker-{uuid.uuid4().hex}"
        self.sql(f"SELECT '{marker}'")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.exists() and marker in p.read_text() for p in (self.csv, self.json)):
                return
            time.sleep(0.05)
        raise AssertionError(f"the server's log never showed {marker}")


@contextlib.contextmanager
def audited() -> Iterator[Audited]:
    if not (pg_server.BIN.parent / "lib" / "pgaudit.so").exists():
        raise RuntimeError(
            f"pgAudit is not installed for {pg_server.BIN.parent} (Debian: "
            "postgresql-15-pgaudit; .ci/run installs it)"
        )
    pg = pg_server.Server(SETTINGS)
    options = pg.folder / "options"
    options.write_text(options.read_text() + f" -c log_directory={pg.folder}/logs")
    try:
        pg.start()
        server = Audited(pg)
        server.sql("CREATE EXTENSION pg_stat_statements", "CREATE EXTENSION pgaudit")
        yield server
    finally:
        pg.remove()
