"""Time-ordered ids (UUIDv7, RFC 9562): they sort by creation time, which keeps
B-tree inserts at the right edge and makes logs readable."""

from __future__ import annotations

import os
import random
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0
# Ids must be unique, not secret: a generator seeded from the OS is enough, and much
# cheaper than a system call per id. Reseeded in a child after fork, so that processes
# forked from one parent never share a sequence.
_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))


def uuid7() -> str:
    """A UUIDv7 string, strictly increasing within this process."""
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _last_ms += 1
                _counter = 0
            now_ms = _last_ms
        else:
            _last_ms, _counter = now_ms, _random.getrandbits(10)
        counter = _counter
        rand = _random.getrandbits(62)
    value = (now_ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
