"""Opening SQLite files the same way everywhere: WAL, a durable default, and
waiting (not failing) when another process holds the write lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from charter import digests
from charter.lanes import PARTITIONS, partition

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

# How a charter connection tells the database who it is. The guard triggers on entity and
# copy tables refuse any connection whose page cache is not exactly this size (KiB), which
# a plain `sqlite3` connection never has. A per-connection setting costs nothing per
# transaction (a shared "guard open" row would cost two writes per commit). It stops
# accidents, not a determined user: PostgreSQL roles (`charter apply`) are for that.
CHARTER_CACHE_KIB = 8191
IS_CHARTER = f"(SELECT cache_size FROM pragma_cache_size) IS -{CHARTER_CACHE_KIB}"

_LOCKED_WAIT_S = 60.0  # as long as the busy timeout

# What all SQLite connections of a `charter run` process may keep in page caches together.
# Each connection may cache CHARTER_CACHE_KIB (the guard's mark, above), and a runner holds
# one per thread per file (about a dozen): without a bound their caches grow with the files
# until each is full, 36 -> 74 MB over 1,000,000 changes. Under this soft limit SQLite
# reuses its least recently used pages instead (the OS keeps the files cached anyway).
RUNNER_HEAP_BYTES = 8 * 1024 * 1024


def sqlite_path(url: str) -> tuple[Path, str]:
    """sqlite:////abs/path.db?synchronous=normal → (path, 'NORMAL'). FULL unless told."""
    query = parse_qs(urlsplit(url).query)
    path = url[len("sqlite:///") :].split("?", 1)[0]
    synchronous = query.get("synchronous", ["FULL"])[0].upper()
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"{url}: synchronous must be one of {', '.join(SYNCHRONOUS)}")
    return Path(path), synchronous


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    conn.execute("PRAGMA busy_timeout=60000")
    _switch_to_wal(conn, path)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA cache_size=-{CHARTER_CACHE_KIB}")
    _digest_functions(conn)
    return conn


def _digest_functions(conn: sqlite3.Connection) -> None:
    """SQLite has no hash function: reconciliation's row hash and digest (charter.digests),
    computed inside the database, are Python functions registered on each connection."""
    conn.create_function("charter_row_hash", -1, digests.sqlite_row_hash, deterministic=True)
    # a record's partition, for the fence triggers (charter.stores.fencing)
    conn.create_function("charter_partition", 1, _partition, deterministic=True)
    # (typeshed knows only one-argument aggregates)
    conn.create_aggregate("charter_digest", -1, digests.SQLiteDigest)  # type: ignore[arg-type]
    conn.create_aggregate("charter_digests", -1, digests.SQLiteGroups)  # type: ignore[arg-type]


def _partition(entity_id: object) -> int:
    return partition(str(entity_id), PARTITIONS)


def bound_heap(limit: int = RUNNER_HEAP_BYTES) -> None:
    """Bound SQLite's heap in this whole process (PRAGMA soft_heap_limit is per process, not
    per connection); a limit already set (by the application) is kept."""
    conn = sqlite3.connect(":memory:")
    try:
        if conn.execute("PRAGMA soft_heap_limit").fetchone()[0] == 0:
            conn.execute(f"PRAGMA soft_heap_limit={int(limit)}")
    finally:
        conn.close()


def _switch_to_wal(conn: sqlite3.Connection, path: Path) -> None:
    """Turn WAL on, retrying while other processes open the same new file.

    Switching the journal mode needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, when waiting could deadlock: several
    processes opening one new file together hit this."""
    deadline = time.monotonic() + _LOCKED_WAIT_S
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise sqlite3.OperationalError(f"{path}: {exc}") from exc
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class Connections:
    """One connection per thread, all closed together: sqlite3 objects are not thread-safe."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path, self.synchronous = path, synchronous
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        # Threads of this process queue here for the write lock instead of sleeping in
        # SQLite's busy handler (1, 2, 5 … 100 ms naps), which ruins latency under load.
        self._writer = threading.Lock()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT), rolled back on any error."""
        conn = self.get()
        with self._writer:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def try_write(self, sql: str, params: tuple[object, ...]) -> bool:
        """Run one statement if the write lock is free right now; never wait for it.
        For bookkeeping that may as well happen on the next try."""
        if not self._writer.acquire(blocking=False):
            return False
        conn = self.get()
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute(sql, params)
            return True
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        finally:
            conn.execute("PRAGMA busy_timeout = 60000")
            self._writer.release()

    def get(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, self.synchronous)
            self._local.conn = conn
            with self._lock:
                self._forget_ended()
                self._all.append((threading.current_thread(), conn))
        return conn

    def _forget_ended(self) -> None:
        """Close the connections of threads that have ended (under the lock). Short-lived
        threads (a reconciliation's, one pool per check) would otherwise leave a connection
        each, open until the store closes: a file descriptor and a page cache per check."""
        alive = []
        for thread, conn in self._all:
            if thread.is_alive():
                alive.append((thread, conn))
            else:
                conn.close()
        self._all = alive

    def close(self) -> None:
        with self._lock:
            for _, conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def quote(text: str) -> str:
    """A SQL string literal (for trigger messages, which cannot take parameters)."""
    return "'" + text.replace("'", "''") + "'"
