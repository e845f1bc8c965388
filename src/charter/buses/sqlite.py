"""The embedded bus: one SQLite file that any number of processes on a machine share."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from charter._sqlite import Connections, sqlite_path
from charter.buses.base import COMMAND_LEASE_S, OutgoingCommand, published
from charter.lanes import PARTITIONS, partition
from charter.records import FILL_MARKER, Backlog, CommandDelivery, Delivery, OutboxRow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    entity TEXT NOT NULL,
    subject TEXT NOT NULL,
    time TEXT NOT NULL,
    published_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_entity_seq ON events (entity, seq);
CREATE TABLE IF NOT EXISTS notes (
    kind TEXT NOT NULL, entity TEXT NOT NULL, copy TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (kind, entity, copy)
);
CREATE TABLE IF NOT EXISTS consumers (
    consumer TEXT NOT NULL, entity TEXT NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (consumer, entity)
);
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, key TEXT NOT NULL,
    sender TEXT NOT NULL, name TEXT NOT NULL, body BLOB NOT NULL, sent_at REAL NOT NULL,
    taken_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS commands_owner ON commands (owner, taken_until);
CREATE TABLE IF NOT EXISTS answers (
    owner TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL, answered_at REAL NOT NULL,
    PRIMARY KEY (owner, key)
);
"""

T = TypeVar("T")

# Waiting for a command or an answer written by another process is polling (SQLite tells no
# one): a read every POLL_FIRST_S at first, then less often, up to every POLL_MOST_S. In this
# process a write wakes the waiters at once.
POLL_FIRST_S, POLL_MOST_S = 0.0002, 0.002


_COMPACTED = "compacted"  # the note (kind, entity, '') that says how far compaction went
_NEWEST = 2**63 - 1


def _compacted(conn: sqlite3.Connection, entity: str) -> int:
    row = conn.execute(
        "SELECT body FROM notes WHERE kind = ? AND entity = ? AND copy = ''", (_COMPACTED, entity)
    ).fetchone()
    return int(bytes(row[0])) if row else 0


class SQLiteBus:
    """Events in one table, ordered by an autoincrement sequence that compaction never reuses."""

    partitions = PARTITIONS

    def __init__(self, url: str) -> None:
        self.url = url
        path, synchronous = sqlite_path(url)
        self._conns = Connections(path, synchronous)
        self._conns.get().executescript(_SCHEMA)
        self._acked: dict[tuple[str, str], int] = {}
        self._changed = threading.Condition()  # a command or an answer written here

    def publish(self, rows: Sequence[OutboxRow]) -> None:
        if not rows:
            return
        now = time.time()
        with self._conns.write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO events (event_id, entity, subject, time, published_at, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(r.event_id, r.entity, r.entity_id, r.time, now, r.body) for r in rows],
            )

    def publish_begin(self, rows: Sequence[OutboxRow]) -> Callable[[], None]:
        self.publish(rows)  # a local file: done before there is anything to overlap
        return published

    def publish_raw(self, event_id: str, entity: str, subject: str, body: bytes) -> None:
        """Put any bytes on the bus, as a misbehaving producer would (for tests and repair)."""
        self._conns.get().execute(
            "INSERT INTO events (event_id, entity, subject, time, published_at, body) "
            "VALUES (?, ?, ?, '', ?, ?)",
            (event_id, entity, subject, time.time(), body),
        )

    def fetch(self, consumer: str, entity: str, after: int, limit: int) -> list[Delivery]:
        # As bytes, whatever another tool stored (TEXT, even not UTF-8, or a number): what
        # is no event is then parked by the projector, and the copy goes on (G8).
        rows = self._conns.get().execute(
            "SELECT seq, CAST(body AS BLOB), CAST(subject AS BLOB), CAST(event_id AS BLOB) "
            "FROM events WHERE entity = ? AND seq > ? ORDER BY seq LIMIT ?",
            (entity, after, limit),
        )
        parts = self.partitions
        deliveries = []
        for seq, body, key, event_id in rows:
            subject = _text(key)
            deliveries.append(
                Delivery(seq, body or b"", partition(subject, parts), _text(event_id), subject)
            )
        return deliveries

    def ack(self, consumer: str, entity: str, position: int) -> None:
        """Recorded when the write lock is free (it only feeds compaction, which may wait);
        a copy's first ack is recorded at once, so compaction knows the copy exists."""
        key = (consumer, entity)
        first = key not in self._acked
        self._acked[key] = max(position, self._acked.get(key, 0))
        sql = (
            "INSERT INTO consumers VALUES (?, ?, ?) ON CONFLICT (consumer, entity) "
            "DO UPDATE SET position = max(position, excluded.position)"
        )
        params = (consumer, entity, self._acked[key])
        if first:
            with self._conns.write() as conn:
                conn.execute(sql, params)
        else:
            self._conns.try_write(sql, params)

    def put_note(self, kind: str, entity: str, copy: str, body: bytes) -> None:
        with self._conns.write() as conn:
            conn.execute(
                "INSERT INTO notes VALUES (?, ?, ?, ?) ON CONFLICT (kind, entity, copy) "
                "DO UPDATE SET body = excluded.body",
                (kind, entity, copy, body),
            )

    def note(self, kind: str, entity: str, copy: str) -> bytes | None:
        row = (
            self._conns.get()
            .execute(
                "SELECT CAST(body AS BLOB) FROM notes WHERE kind = ? AND entity = ? AND copy = ?",
                (kind, entity, copy),
            )
            .fetchone()
        )
        return bytes(row[0] or b"") if row else None

    def head(self, entity: str) -> int:
        row = (
            self._conns.get()
            .execute("SELECT max(seq) FROM events WHERE entity = ?", (entity,))
            .fetchone()
        )
        return int(row[0] or 0)

    def backlog(self, consumer: str, entity: str, after: int) -> Backlog:
        count, oldest = (
            self._conns.get()
            .execute(
                # A fill's events keep their records' commit times; their age is the fill's.
                "SELECT count(*), min(CASE WHEN instr(event_id, ?) THEN "
                "strftime('%Y-%m-%dT%H:%M:%fZ', published_at, 'unixepoch') ELSE time END) "
                "FROM events WHERE entity = ? AND seq > ?",
                (FILL_MARKER, entity, after),
            )
            .fetchone()
        )
        return Backlog(int(count), oldest)

    def compact(self, retention_s: float, copies: Mapping[str, Sequence[str]]) -> int:
        """Per entity, up to the lowest position of its declared copies (the `consumers`
        rows); nothing of an entity one of whose declared copies has no row."""
        for (consumer, entity), position in self._acked.items():  # acks not yet recorded
            self.ack(consumer, entity, position)
        cutoff = time.time() - retention_s
        purged = 0
        with self._conns.write() as conn:
            for (entity,) in conn.execute("SELECT DISTINCT entity FROM events").fetchall():
                known = dict(
                    conn.execute(
                        "SELECT consumer, position FROM consumers WHERE entity = ?", (entity,)
                    ).fetchall()
                )
                declared = copies.get(entity, ())
                if any(copy not in known for copy in declared):
                    continue  # a copy whose position is unknown keeps everything
                floor = min((int(known[copy]) for copy in declared), default=_NEWEST)
                where = "entity = ? AND seq <= ? AND published_at < ?"
                (upto,) = conn.execute(
                    f"SELECT max(seq) FROM events WHERE {where}", (entity, floor, cutoff)
                ).fetchone()
                if upto is None:
                    continue
                upto = max(int(upto), _compacted(conn, entity))  # said before it is done
                conn.execute(
                    "INSERT INTO notes VALUES (?, ?, '', ?) ON CONFLICT (kind, entity, copy) "
                    "DO UPDATE SET body = excluded.body",
                    (_COMPACTED, entity, str(upto).encode()),
                )
                purged += conn.execute(
                    f"DELETE FROM events WHERE {where}", (entity, floor, cutoff)
                ).rowcount
            # commands and answers wait at most the retention
            conn.execute("DELETE FROM commands WHERE sent_at < ?", (cutoff,))
            conn.execute("DELETE FROM answers WHERE answered_at < ?", (cutoff,))
        return purged

    def compacted(self, entity: str) -> int:
        return _compacted(self._conns.get(), entity)

    # commands --------------------------------------------------------------------------

    def send_command(
        self, sender: str, owner: str, name: str, key: str, body: bytes
    ) -> Callable[[float], bytes | None]:
        return self.send_commands(sender, [(owner, name, key, body)])[0]

    def send_commands(
        self, sender: str, commands: Sequence[OutgoingCommand]
    ) -> list[Callable[[float], bytes | None]]:
        now = time.time()
        with self._conns.write() as conn:
            # one waiting per key; none when its answer is here already
            conn.executemany(
                "INSERT INTO commands (owner, key, sender, name, body, sent_at) "
                "SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
                "(SELECT 1 FROM commands WHERE owner = ? AND key = ?) AND NOT EXISTS "
                "(SELECT 1 FROM answers WHERE owner = ? AND key = ?)",
                [
                    (owner, key, sender, name, body, now, owner, key, owner, key)
                    for owner, name, key, body in commands
                ],
            )
        self._wake()
        return [self._waiting(owner, key) for owner, _, key, _ in commands]

    def _waiting(self, owner: str, key: str) -> Callable[[float], bytes | None]:
        def answer(timeout: float) -> bytes | None:
            return self._poll(timeout, lambda: self._answer(owner, key))

        return answer

    def _answer(self, owner: str, key: str) -> bytes | None:
        row = (
            self._conns.get()
            .execute("SELECT body FROM answers WHERE owner = ? AND key = ?", (owner, key))
            .fetchone()
        )
        return bytes(row[0]) if row else None

    def take_commands(self, owner: str, limit: int, wait: float) -> list[CommandDelivery]:
        def waiting() -> bool | None:
            row = (
                self._conns.get()
                .execute(
                    "SELECT 1 FROM commands WHERE owner = ? AND taken_until <= ? LIMIT 1",
                    (owner, time.time()),
                )
                .fetchone()
            )
            return True if row else None

        if not self._poll(wait, waiting):
            return []
        with self._conns.write() as conn:  # taken by one taker at a time
            now = time.time()
            rows = conn.execute(
                "SELECT seq, key, name, body FROM commands WHERE owner = ? AND taken_until <= ? "
                "ORDER BY seq LIMIT ?",
                (owner, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE commands SET taken_until = ? WHERE seq = ?",
                [(now + COMMAND_LEASE_S, row[0]) for row in rows],
            )
        return [CommandDelivery(key, name, bytes(body), seq) for seq, key, name, body in rows]

    def answer_command(self, owner: str, command: CommandDelivery, answer: bytes) -> None:
        self.answer_commands(owner, [(command, answer)])

    def answer_commands(self, owner: str, answers: Sequence[tuple[CommandDelivery, bytes]]) -> None:
        now = time.time()
        with self._conns.write() as conn:
            conn.executemany(
                "INSERT INTO answers VALUES (?, ?, ?, ?) ON CONFLICT (owner, key) "
                "DO UPDATE SET body = excluded.body, answered_at = excluded.answered_at",
                [(owner, command.key, answer, now) for command, answer in answers],
            )
            conn.executemany(
                "DELETE FROM commands WHERE seq = ?", [(c.ticket,) for c, _ in answers]
            )
        self._wake()

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _poll(self, timeout: float, found: Callable[[], T | None]) -> T | None:
        """`found()` once it is not None, asked again until `timeout` passes (see POLL_*)."""
        deadline = time.monotonic() + timeout
        pause = POLL_FIRST_S
        while True:
            result = found()
            left = deadline - time.monotonic()
            if result is not None or left <= 0:
                return result
            with self._changed:
                self._changed.wait(min(pause, left))
            pause = min(pause * 2, POLL_MOST_S)

    def close(self) -> None:
        self._conns.close()


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""
