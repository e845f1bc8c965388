"""What a running pipeline has to say about its failures, said once: a worker failing the
same way again and again (a server down, a fill not yet answered) is reported the first
time, then as a count once a minute, then when it works again; not on every try."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

REPEAT_EVERY_S = 60.0  # how often a repeating failure is counted again
_NUMBER = re.compile(r"\d+")


@dataclass
class _Failing:
    text: str  # the failure as first reported
    since: float
    last_said: float
    again: int = 0  # times since it was last said
    total: int = 1


class Reports:
    """Failures of named workers, as lines to show. Thread-safe: workers add, one reader
    takes."""

    def __init__(self, every: float = REPEAT_EVERY_S) -> None:
        self.every = every
        self._failing: dict[str, dict[str, _Failing]] = {}  # worker → kind → state
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def failed(self, worker: str, exc: BaseException, now: float | None = None) -> bool:
        """Note a failure of `worker`; True when it is news (it will be shown now)."""
        now = time.monotonic() if now is None else now
        text = str(exc).strip() or type(exc).__name__
        kind = _NUMBER.sub("N", text)  # the same failure, whatever position it names
        with self._lock:
            kinds = self._failing.setdefault(worker, {})
            state = kinds.get(kind)
            if state is None:
                kinds[kind] = _Failing(text, now, now)
                self._lines.append(f"{worker}: {text}")
                return True
            state.again += 1
            state.total += 1
            self._count(worker, state, now)
            return False

    def note(self, line: str) -> None:
        """Something worth a line that is no failure (reconciliation found drift)."""
        with self._lock:
            self._lines.append(line)

    def worked(self, worker: str, now: float | None = None) -> None:
        """`worker` did its work: if it was failing, say that it is over."""
        if worker not in self._failing:  # (read without the lock: the common case)
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            kinds = self._failing.pop(worker, {})
            if kinds:
                total = sum(s.total for s in kinds.values())
                since = min(s.since for s in kinds.values())
                self._lines.append(
                    f"{worker}: working again, after {total} failed "
                    f"tr{'ies' if total != 1 else 'y'} in {now - since:.1f} s"
                )

    def failing(self, worker: str) -> bool:
        """`worker`'s last try failed (it has not worked since)."""
        with self._lock:
            return bool(self._failing.get(worker))

    def take(self, now: float | None = None) -> list[str]:
        """The lines to show since the last call (the counts of what is still failing,
        once `every` seconds have passed since they were last said)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for worker, kinds in self._failing.items():
                for state in kinds.values():
                    self._count(worker, state, now)
            lines, self._lines = self._lines, []
            return lines

    def _count(self, worker: str, state: _Failing, now: float) -> None:
        if state.again and now - state.last_said >= self.every:
            self._lines.append(
                f"{worker}: again {state.again} time{'s' if state.again != 1 else ''} in the "
                f"last {now - state.last_said:.0f} s: {_short(state.text)}"
            )
            state.again, state.last_said = 0, now


def _short(text: str, limit: int = 160) -> str:
    line = text.splitlines()[0] if text else text
    return line if len(line) <= limit else line[: limit - 1] + "…"
