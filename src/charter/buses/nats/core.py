"""What every part of the NATS bus stands on: the budgets of its calls, its errors, the
asyncio loop thread every call runs on, and the watch on refused subjects (the server
refuses asynchronously, so what waits on a subject is told at once)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import nats
from nats.aio.client import Client

from charter.buses.nats.subjects import NatsUrl
from charter.errors import Error

log = logging.getLogger("charter.buses.nats")

T = TypeVar("T")

DUPLICATE_WINDOW_S = 120.0
ACK_INTERVAL_S = 0.1  # a copy's position note is written at most this often (or when asked)
READER_IDLE_S = 60.0  # a reader nobody pulls from for this long is removed by the server
FETCH_TIMEOUT_S = 0.05  # about the runner's poll interval: an idle fetch returns [] after this
PUBLISH_TIMEOUT_S = 10.0  # for the acknowledgements of one batch
API_TIMEOUT_S = 5.0  # one JetStream API request
CREATE_TIMEOUT_S = 2.0  # one attempt at creating a reader (it takes milliseconds when well)
READER_SILENCE_S = 2.0  # a reader that answers nothing for this long is abandoned
FETCH_BUDGET_S = 10.0  # the most one fetch, ack or backlog call may take, all retries included
ACK_BUDGET_S = 10.0
BACKLOG_BUDGET_S = 15.0
CALL_MARGIN_S = 2.0  # on top of a call's budget, before a caller gives up on the loop thread
NS = 1_000_000_000

# When the call running in this task must have answered (time.monotonic()); see _call.
_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar("deadline", default=math.inf)


class BusError(Error):
    """The NATS bus could not do what was asked: says what, on which stream, and why."""


class RefusedError(BusError):
    """The NATS server refused this process's credentials something (a permissions
    violation): says who may not publish on which subject, and whose right it is. Trying
    again does not help until the permissions or the credentials change."""

    def __init__(self, message: str, subject: str, reason: str, explained: bool) -> None:
        super().__init__(message)
        self.subject, self.reason = subject, reason
        self.explained = explained  # the reason is the charter's (charter.natsauth)


class _Core:
    """The loop thread and the refusals, for the parts of NatsBus above it (what they all
    keep is set by NatsBus.__init__)."""

    url: str
    system: str
    options: NatsUrl
    partitions: int
    stream: str
    _explain: Callable[[str], str | None] | None
    _watchers: dict[str, dict[Callable[[str], None], str]]
    _said: set[str]
    _prefix: str
    _api_prefix: str
    _closed: bool
    _nc: Client | None
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread

    # ----------------------------------------------------------------- the loop thread

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            tasks = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], budget: float) -> T:
        """Run `coro` on the loop thread. Whatever it waits for inside (see _remaining) is
        cut to `budget`; the caller gives up a moment after that in any case."""
        return self._submit(coro, budget)()

    def _submit(self, coro: Coroutine[Any, Any, T], budget: float) -> Callable[[], T]:
        """Start `coro` on the loop thread; returns what waits for its answer (as _call)."""
        if self._closed or not self._thread.is_alive():
            coro.close()
            raise BusError(f"the NATS bus for '{self.system}' is closed")

        async def bounded() -> T:
            _DEADLINE.set(time.monotonic() + budget)
            return await coro

        future = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        servers = ", ".join(self.options.servers)
        timeout = budget + CALL_MARGIN_S

        def answer() -> T:
            try:
                return future.result(timeout)
            except BusError:
                raise
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                if not future.done():
                    future.cancel()
                    raise BusError(
                        f"NATS bus ({servers}): no answer within {timeout:.0f}s "
                        "(servers down or reconnecting); try again"
                    ) from None
                raise BusError(f"NATS bus ({servers}): {exc!r}; try again") from exc

        return answer

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BusError(f"the NATS bus for '{self.system}' is not connected")
        return self._nc

    # ----------------------------------------------------------------- refusals

    @contextlib.contextmanager
    def _watch(self, subjects: Iterable[str], refused: Callable[[str], None]) -> Iterator[None]:
        """While inside, a permissions violation on any of `subjects` calls `refused` with
        it at once: the server says so asynchronously, and the publish would wait for an
        acknowledgement (or an answer) that never comes."""
        keys = {subject.lower(): subject for subject in subjects}
        for key, subject in keys.items():
            self._watchers.setdefault(key, {})[refused] = subject
        try:
            yield
        finally:
            for key in keys:
                watchers = self._watchers.get(key)
                if watchers is not None:
                    watchers.pop(refused, None)
                    if not watchers:
                        del self._watchers[key]

    def _refuse(self, subject: str) -> bool:
        """Tell what waits on `subject` (as the server wrote it, lower-cased by the client)
        that it was refused; False when nothing waits on it."""
        watchers = self._watchers.get(subject.lower())
        for refused, original in list((watchers or {}).items()):
            refused(original)
        return bool(watchers)

    def _refusal(self, subject: str) -> RefusedError:
        """The error for a refused `subject`: the charter's reason (`explain`) if it has one,
        else who may not publish where."""
        reason = self._explain(subject) if self._explain is not None else None
        if reason is not None:
            return RefusedError(f"NATS bus, stream {self.stream}: {reason}", subject, reason, True)
        who = f"NATS user '{self.options.user}'" if self.options.user else "this connection"
        reason = f"{who} may not publish on {subject} (a permissions violation)"
        return RefusedError(f"NATS bus, stream {self.stream}: {reason}", subject, reason, False)

    @staticmethod
    def _remaining(wait: float) -> float:
        """`wait`, or less when the call in hand has less time left than that."""
        return max(0.0, min(wait, _DEADLINE.get() - time.monotonic()))
