"""Time-ordered ids (UUIDv7, RFC 9562): they sort by creation time, which keeps
B-tree inserts at the right edge and makes logs readable."""

from __future__ import annotations

import threading

from charter import clock

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_generation = clock.generation


def uuid7() -> str:
    """A UUIDv7 string, strictly increasing within this process."""
    global _last_ms, _counter, _generation
    with _lock:
        if _generation != clock.generation:  # another world's time (charter.sim)
            _last_ms, _counter, _generation = 0, 0, clock.generation
        now_ms = clock.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _last_ms += 1
                _counter = 0
            now_ms = _last_ms
        else:
            _last_ms, _counter = now_ms, clock.randbits(10)
        counter = _counter
        rand = clock.randbits(62)
    value = (now_ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
