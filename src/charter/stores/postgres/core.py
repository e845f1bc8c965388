"""What every part of the PostgreSQL store stands on: the URL, the connection pool (one
that finds a server back quickly, each connection opening the guard), the tables' names
in the schema, and a query's rows streamed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from charter.model import Charter
from charter.records import Row
from charter.stores.common import LatencyMinutes, where_clause

log = logging.getLogger("charter.stores.postgres")

NEVER_BY_ITSELF = 2**31  # psycopg's prepare_threshold: prepare only with prepare=True …
PREPARED = True  # … which the simple statements run most often pass (no joins to misplan)
WAIT_FOR_CONNECTION_S = 30.0  # then UnavailableError: a busy pool under 20 racing threads
# waited over 5 s (the runner tries again, backing off; a server down fails at once, below)
ASK_AGAIN_S = 0.25  # while waiting for a connection: each ask may start a new one at once
RECONNECT_FOR_S = 1.0  # the pool's own tries after a lost connection, before it gives up
# The pool logs every failed connection attempt; charter reports the failure itself, once
# (charter.reports): without a handler of the application's, these would reach stderr.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())


def split_url(url: str) -> tuple[str, str | None, int]:
    """postgresql://…?schema=x&pool=16 → (libpq URL, schema, pool size)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", None)
    pool = int(query.pop("pool", "10"))
    return urlunsplit(parts._replace(query=urlencode(query))), schema, pool


class _Core:
    """The pool and the names, for the parts of PostgresStore above it (what they all
    keep is set by PostgresStore.__init__)."""

    url: str
    schema: str
    _conninfo: str
    _schema_option: str | None
    _pool_size: int
    _pool: ConnectionPool | None
    _lock: threading.Lock
    _sql: dict[str, str]
    _selects: dict[str, list[str]]
    _prepared: tuple[Charter, str] | None
    _user: str
    _latency: LatencyMinutes

    @property
    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                # A server that refuses us (no such role, a wrong password) says so here, at
                # once, rather than after the pool's 30 s of trying again.
                psycopg.connect(self._conninfo, connect_timeout=10).close()
                self._pool = _Pool(
                    self._conninfo,
                    min_size=1,
                    max_size=self._pool_size,
                    # Prepared only where asked (PREPARED): a generic plan made while a
                    # table was small (a hash join over a seq scan) stays cached, and grew
                    # a 100-row UPDATE … FROM json_to_recordset from 0.2 to 15 ms at 100,000
                    # rows. The statements that join are planned each time.
                    kwargs={"autocommit": True, "prepare_threshold": NEVER_BY_ITSELF},
                    configure=_open_guard,
                    open=True,
                    name=f"charter-{self.schema}",
                    timeout=WAIT_FOR_CONNECTION_S,
                    reconnect_timeout=RECONNECT_FOR_S,
                )
            return self._pool

    def _t(self, table: str) -> str:
        return f'"{self.schema}"."{table}"'

    def _stream(self, select: str, names: list[str], where: Row | None) -> Iterator[Row]:
        query, params = where_clause(select, where, names, "%s")
        if where and "id" in where:  # one row at most: a cursor is 5 round trips, not 1
            with self.pool.connection() as conn:
                rows = conn.execute(query, params).fetchall()
            for row in rows:
                yield dict(zip(names, row, strict=True))
            return
        with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(name="charter_rows") as cursor,
        ):
            cursor.itersize = 2000
            cursor.execute(query + " ORDER BY id", params)
            for row in cursor:
                yield dict(zip(names, row, strict=True))


class _Pool(ConnectionPool):
    """A pool that finds a server back within a fraction of a second. Its own tries to
    replace lost connections back off (1, 2, 4, 8 s apart: after an 8 s outage the first
    commit came 5-7 s after the server was back); a client asking anew lets it try a new
    connection at once, so waiting clients ask every ASK_AGAIN_S, and the pool's own tries
    give up after RECONNECT_FOR_S."""

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            try:
                return super().getconn(max(0.001, min(ASK_AGAIN_S, left)))
            except PoolTimeout:
                if time.monotonic() >= deadline:
                    raise PoolTimeout(f"couldn't get a connection after {wait:.1f} s") from None


def _open_guard(conn: psycopg.Connection[Any]) -> None:
    """charter's own connections may write the guarded tables; nobody else's may."""
    conn.execute("SELECT set_config('charter.guard', 'open', false)")
