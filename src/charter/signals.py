"""In-process wake-ups, so a worker sleeps only when there is truly nothing to do.
Other processes are noticed by polling; this only shortens the wait."""

from __future__ import annotations

import threading
from collections import defaultdict


class Signals:
    def __init__(self) -> None:
        self._events: defaultdict[str, threading.Event] = defaultdict(threading.Event)

    def notify(self, key: str) -> None:
        event = self._events[key]
        if not event.is_set():  # set() takes a lock and wakes waiters: only when needed
            event.set()

    def wait(self, key: str, timeout: float) -> None:
        event = self._events[key]
        event.wait(timeout)
        event.clear()
