"""Where charter reads the time and draws its randomness: one place, so that the
simulation (charter.sim) can run the whole pipeline in a seeded world of its own, with
no real time and no real randomness, and replay any run from its seed.

Callers read the module's attributes at call time (``clock.time_ns()``), so installing
another source changes every caller at once, at the cost of one attribute lookup."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Ids must be unique, not secret: a generator seeded from the OS is enough, and much
# cheaper than a system call per id. Reseeded in a child after fork, so that processes
# forked from one parent never share a sequence.
_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))

time_ns: Callable[[], int] = time.time_ns
"""Wall-clock time in nanoseconds since the epoch: commit times, ids, bus times."""
monotonic: Callable[[], float] = time.monotonic
"""Seconds on a clock that never goes back: how long since something was last done."""
randbits: Callable[[int], int] = _random.getrandbits
"""k random bits: the random part of ids and request tokens."""
generation = 0
"""Grows each time a source is installed or removed, so that state derived from the
time (the last id's millisecond) can start again with the new world."""


def time_s() -> float:
    """Wall-clock time in seconds, as time.time() gives it."""
    return time_ns() / 1e9


def token(nbytes: int = 8) -> str:
    """A random hex token (request ids): unique, not secret."""
    return f"{randbits(nbytes * 8):0{nbytes * 2}x}"


@dataclass(frozen=True, slots=True)
class Source:
    """Everything a world supplies: the time (wall and monotonic) and random bits."""

    time_ns: Callable[[], int]
    monotonic: Callable[[], float]
    randbits: Callable[[int], int]


@contextmanager
def installed(source: Source) -> Iterator[None]:
    """Run the block with `source` as charter's time and randomness (not thread-safe: for
    single-threaded worlds such as the simulation)."""
    global time_ns, monotonic, randbits, generation
    saved = time_ns, monotonic, randbits
    time_ns, monotonic, randbits = source.time_ns, source.monotonic, source.randbits
    generation += 1
    try:
        yield
    finally:
        time_ns, monotonic, randbits = saved
        generation += 1
