"""Waking waits for a copy's changes on PostgreSQL (`Store.wait_applied`): each transaction
that applies to a copy sends a NOTIFY on the copy's channel (copies.py: `_announce`), and
one connection per store and process LISTENs to the channels of all the store's copies,
in a thread of its own, waking this process's waits on them. NOTIFY is sent when the
transaction commits, to every process listening, so a wait wakes within about a round
trip of the apply, from whichever process applied it.

While the listening connection is down (the server restarting, say), waits ask the
database every 50 ms instead, and every wait wakes when it is back; and every wait asks
once a second anyway, so that no lost notification can keep it waiting longer."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from charter.stores import waiting

log = logging.getLogger("charter.stores.postgres")

DEAF_POLL_S = 0.05  # how often waits ask while nobody listens
ASK_ANYWAY_S = 1.0  # how often a wait asks even while woken: a lost NOTIFY costs this at most
RECONNECT_S = 1.0  # how long the listener pauses after losing its connection
IDLE_S = 1.0  # how often the listener looks up from the socket (to notice close())


def channel(schema: str, copy: str) -> str:
    """The NOTIFY channel of a copy in a schema: a fixed-length name (a channel is an
    identifier, at most 63 bytes, and schema and copy names together may be longer)."""
    digest = hashlib.sha1(f"{schema}.{copy}".encode()).hexdigest()[:20]
    return f"charter_applied_{digest}"


class Listener:
    """One LISTEN connection for a set of channels, and the waits it wakes."""

    def __init__(self, conninfo: str, channels: Iterable[str]) -> None:
        self._conninfo = conninfo
        self._changes = {name: waiting.Changes() for name in channels}
        self._stop = threading.Event()
        self.listening = threading.Event()  # set while the connection listens
        self._conn = self._connect()  # raises here, at once, if the server is out of reach
        thread = threading.Thread(target=self._run, name="charter:listen", daemon=True)
        thread.start()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10)
        try:
            for name in self._changes:
                conn.execute(f'LISTEN "{name}"')
        except BaseException:
            conn.close()
            raise
        self.listening.set()
        return conn

    def watch(self, name: str) -> waiting.Watch:
        """A watch on `name` (a channel this listener was made for, or it asks every 50 ms)."""
        changes = self._changes.get(name)
        return _Heard(self, changes.watch() if changes is not None else None)

    def heard(self, name: str) -> None:
        """Wake the waits on `name` (a change this process made, told without the server)."""
        changes = self._changes.get(name)
        if changes is not None:
            changes.bump()

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = self._conn
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                    self._wake_all()  # what changed while nobody listened
                for notify in conn.notifies(timeout=IDLE_S):
                    self.heard(notify.channel)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                if self.listening.is_set():
                    log.info("stopped listening for applied copies (%s); asking instead", exc)
                self.listening.clear()
                self._wake_all()
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
                self._stop.wait(RECONNECT_S)
        self.listening.clear()
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _wake_all(self) -> None:
        for changes in self._changes.values():
            changes.bump()

    def close(self) -> None:
        """Stop listening (the thread ends within IDLE_S, closing its connection)."""
        self._stop.set()


class _Heard:
    """A watch woken by the listener; asking every DEAF_POLL_S while it does not listen."""

    __slots__ = ("_listener", "_watch")

    def __init__(self, listener: Listener, watch: waiting.ChangeWatch | None) -> None:
        self._listener, self._watch = listener, watch

    def wait(self, timeout: float) -> None:
        if self._watch is not None and self._listener.listening.is_set():
            self._watch.changed(min(timeout, ASK_ANYWAY_S))
        elif self._watch is not None:
            self._watch.changed(min(timeout, DEAF_POLL_S))  # woken too when it listens again
        else:
            time.sleep(min(timeout, DEAF_POLL_S))
