"""Propagation latency: how long after its owner committed an event a copy applied it
(the copy's commit time minus the event's `time`). How each copy has kept its promise is
kept as a histogram per copy and minute in the copy's own store, with fixed buckets, so
that minutes add up and any span (the last 5 minutes, hour, day) is a sum of counts.

Bucket `i` holds the latencies above BOUNDS[i - 1] up to BOUNDS[i]: four buckets to a
doubling, from 1 ms to about 70 minutes, and one last bucket (`INF`) for anything longer.
Bucket 0 also holds a latency at or below zero (an owner's clock ahead of the copy's).

Quantiles and shares are read from the buckets by linear interpolation inside the one
bucket where the answer falls (its lower edge 0 for bucket 0), as Prometheus's
`histogram_quantile` does; in the last bucket, which has no upper edge, a quantile is its
lower edge. So an answer is exact at the edges and within one bucket (a factor of 2^¼,
19 %) elsewhere. No I/O here: stores, the projector and status share it."""

from __future__ import annotations

import datetime as dt
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping

FIRST_S = 0.001
STEPS = 4  # buckets to a doubling
BOUNDS: tuple[float, ...] = tuple(FIRST_S * 2 ** (i / STEPS) for i in range(89))
INF = len(BOUNDS)  # the bucket above the last bound (70 min)

_SECONDS: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" → seconds since the epoch


def bucket(seconds: float) -> int:
    """The bucket that holds a latency of `seconds`."""
    return bisect_left(BOUNDS, seconds)


def minute(time_ns: int) -> int:
    """The minute (since the epoch) that holds a moment, in nanoseconds since the epoch."""
    return time_ns // 60_000_000_000


def commit_ns(text: str) -> int | None:
    """An event's commit time (`Event.time`) in nanoseconds since the epoch; None when it
    is not a time (an event another tool wrote). The owner's own form (fixed-width UTC,
    charter.values.timestamp_text) is read without a parser: each second once."""
    if len(text) == 27 and text[19] == "." and text[26] == "Z":
        head = text[:19]
        whole = _SECONDS.get(head)
        if whole is None:
            try:
                moment = dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
            except ValueError:
                return None
            if len(_SECONDS) > 4096:
                _SECONDS.clear()
            whole = _SECONDS[head] = int(moment.timestamp())
        fraction = text[20:26]
        if fraction.isdigit():
            return whole * 1_000_000_000 + int(fraction) * 1000
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def tally(latencies: Iterable[float]) -> dict[int, int]:
    """Latencies in seconds, counted by bucket."""
    counts: dict[int, int] = {}
    for seconds in latencies:
        if seconds == seconds:  # NaN has no bucket
            at = bisect_left(BOUNDS, seconds)
            counts[at] = counts.get(at, 0) + 1
    return counts


def _edges(at: int) -> tuple[float, float]:
    low = BOUNDS[at - 1] if at > 0 else 0.0
    return low, BOUNDS[at] if at < INF else math.inf


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The `q` quantile (0 < q ≤ 1) of the latencies counted by bucket, interpolated inside
    its bucket; None when nothing was counted."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for at in sorted(counts):
        count = counts[at]
        if count <= 0:
            continue
        if seen + count >= rank:
            low, high = _edges(at)
            if high == math.inf:
                return low
            return low + (high - low) * (rank - seen) / count
        seen += count
    return _edges(max(counts))[0]  # rounding: the rank is past the last count


def within(counts: Mapping[int, int], seconds: float) -> float | None:
    """The share (0 to 1) of the latencies counted by bucket that were at most `seconds`,
    the bucket that holds `seconds` counted in proportion; None when nothing was counted."""
    total = sum(counts.values())
    if total <= 0:
        return None
    below = 0.0
    for at, count in counts.items():
        low, high = _edges(at)
        if high <= seconds:
            below += count
        elif low < seconds and high != math.inf:
            below += count * (seconds - low) / (high - low)
    return below / total


def add(into: dict[int, int], counts: Mapping[int, int]) -> dict[int, int]:
    """`counts` added to `into` (returned)."""
    for at, count in counts.items():
        into[at] = into.get(at, 0) + count
    return into
