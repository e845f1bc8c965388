"""The simulated world: one seed decides everything that happens in a run. Time is a
number the world moves on; randomness comes from generators seeded from the seed; a
crash is an exception raised, by the world, before any store or bus operation."""

from __future__ import annotations

import random

from charter import clock

EPOCH_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: every run starts there


class Crash(BaseException):
    """A process dies here: what it held in memory is gone, its open transaction rolls
    back. A BaseException, so that no `except Exception` in charter mistakes it for an
    error it can handle."""


class World:
    """The seed's clock, its random choices and its crashes, and the run's history."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self._ids = random.Random(seed ^ 0x5EED)  # ids and tokens: apart from the choices
        self.now_ns = EPOCH_NS
        self.crash_chance = 0.0
        self.step = 0
        self.history: list[str] = []

    def source(self) -> clock.Source:
        return clock.Source(self._time_ns, self._monotonic, self._ids.getrandbits)

    def _time_ns(self) -> int:
        return self.now_ns

    def _monotonic(self) -> float:
        return self.now_ns / 1e9

    def advance(self, ms: float) -> None:
        self.now_ns += int(ms * 1_000_000)

    def fault(self, operation: str) -> None:
        """Called before every store and bus operation: sometimes the caller dies there."""
        if self.crash_chance and self.rng.random() < self.crash_chance:
            raise Crash(operation)

    def note(self, text: str) -> None:
        seconds = (self.now_ns - EPOCH_NS) / 1e9
        self.history.append(f"{self.step:4d} {seconds:8.3f}s  {text}")
