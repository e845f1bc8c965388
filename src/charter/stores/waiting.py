"""Waiting for a copy to take a version (`Store.wait_applied`), the same way on every store:
begin watching the copy's changes, read what it holds, and read again each time the watch
says it may have changed, until it holds the version or the time is up. Watching begins
before the first read, so a change that commits between a read and the wait after it
still wakes the wait.

What wakes a watch is each store's own: in this process, `Changes` (a counter and a
condition each apply of the copy bumps); from other processes, what the database offers
(PostgreSQL LISTEN/NOTIFY; SQLite only lets a change be noticed by asking, cheaply).

In this process the applying thread does more than wake: a wait registers what it wants
(`Changes.wanting`), and the apply, once committed, hands each wait whose record it took
the version (`Changes.bump(taken)`), so the wait returns without reading the store again
(one query and one more turn for the GIL fewer on the path that counts)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from charter.events import Event
    from charter.records import Parked

# Where a change must be asked about (another process's on SQLite): every 2 % of the time
# waited so far, from 0.1 ms at first to 1 ms at most, so a wait returns at most about 1 ms
# after the change however long it took (each ask costs some µs: PRAGMA data_version).
POLL_SHARE = 0.02
POLL_MIN_S = 0.0001
POLL_MAX_S = 0.001


class Watch(Protocol):
    def wait(self, timeout: float) -> None:
        """Return once the copy may have changed since the watch began (or since this last
        returned), or after `timeout` seconds; returning early does no harm."""


class Wanted:
    """One wait's record and version; `held` is set by the apply that took it (0: not yet)."""

    __slots__ = ("entity_id", "held", "version")

    def __init__(self, entity_id: str, version: int) -> None:
        self.entity_id, self.version, self.held = entity_id, version, 0


def wait_applied(
    held: Callable[[], int],
    version: int,
    timeout: float,
    watch: Watch,
    wanted: Wanted | None = None,
) -> int:
    """What `held()` (the newest version of one record the copy has taken) says once it is
    `version` or more, or when `timeout` seconds are up; or, as soon as this process's
    apply hands it over, the version `wanted` was given (at least `version`)."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        have = held()
        if have >= version:
            return have
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return have
            watch.wait(left)
            if wanted is None or wanted.held < version:
                break  # read again: another process, or another record's change
            return wanted.held


def taken(
    items: Sequence[tuple[int, Event]], skipped: Sequence[Parked] = (), start: int = 0
) -> dict[str, int]:
    """What a committed apply took, to hand to the waits (`Changes.bump`): each record's
    newest version among `items` past `start` (the checkpoint before it: what lies before
    was another applier's, taken or parked), but the `skipped` (parked instead). A version
    the guard refused is still held, or a newer one."""
    parked = {p.position for p in skipped}
    found: dict[str, int] = {}
    for position, event in items:
        fresh = position > start and position not in parked
        if fresh and event.version > found.get(event.entity_id, 0):
            found[event.entity_id] = event.version
    return found


def poll_pause(waited: float, left: float) -> float:
    """How long to sleep before asking the database again, `waited` seconds into a wait with
    `left` to go: short at first, when a change most likely comes, then a share of the time
    waited, never more than POLL_MAX_S."""
    return min(left, max(POLL_MIN_S, min(POLL_MAX_S, waited * POLL_SHARE)))


class Changes:
    """How often something in this process changed one copy: a counter, and a condition
    that wakes every wait on it when it moves; the waits' records, to hand them what an
    apply took."""

    __slots__ = ("_condition", "_wanted", "count")

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self.count = 0
        self._wanted: dict[str, list[Wanted]] = {}

    @property
    def waiting(self) -> bool:
        """Whether a wait wants a record (read without the lock: a wait that begins after
        this said no reads the store after the commit, and finds the change there)."""
        return bool(self._wanted)

    @contextmanager
    def wanting(self, entity_id: str, version: int) -> Iterator[Wanted]:
        """Register a wait for `entity_id` at `version` (before its first read)."""
        wanted = Wanted(entity_id, version)
        with self._condition:
            self._wanted.setdefault(entity_id, []).append(wanted)
        try:
            yield wanted
        finally:
            with self._condition:
                waits = self._wanted[entity_id]
                waits.remove(wanted)
                if not waits:
                    del self._wanted[entity_id]

    def bump(self, taken: Mapping[str, int] | None = None) -> None:
        """Wake every wait; `taken` (record id → version, what a committed apply took):
        hand it to the waits for those records."""
        with self._condition:
            self.count += 1
            if taken:
                for entity_id, waits in self._wanted.items():
                    got = taken.get(entity_id, 0)
                    for wanted in waits:
                        if got >= wanted.version:
                            wanted.held = max(wanted.held, got)
            self._condition.notify_all()

    def watch(self) -> ChangeWatch:
        return ChangeWatch(self)

    def wait(self, seen: int, timeout: float) -> int:
        """The count once it is not `seen`, or after `timeout` seconds."""
        with self._condition:
            if self.count == seen and timeout > 0:
                self._condition.wait_for(lambda: self.count != seen, timeout)
            return self.count


class ChangeWatch:
    """A watch on `Changes` (the whole watch of a store that lives in one process)."""

    __slots__ = ("_changes", "_seen")

    def __init__(self, changes: Changes) -> None:
        self._changes, self._seen = changes, changes.count

    def changed(self, timeout: float) -> bool:
        """Whether the count moved since last asked, waiting up to `timeout` seconds."""
        count = self._changes.wait(self._seen, timeout)
        moved, self._seen = count != self._seen, count
        return moved

    def wait(self, timeout: float) -> None:
        self.changed(timeout)


class Registry:
    """`Changes` by key (a file and a copy, say), made on first use, kept for the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes: dict[tuple[str, ...], Changes] = {}

    def __call__(self, *key: str) -> Changes:
        found = self._changes.get(key)
        if found is None:
            with self._lock:
                found = self._changes.setdefault(key, Changes())
        return found
