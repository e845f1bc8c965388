"""Lanes: how several projector workers share one copy's work and keep each id in order.

Every event travels on a partition of its entity, a stable function of the record's id
(``partition(id, partitions)``), so all versions of one record share a partition. Worker
``k`` of ``n`` (``charter run --lane k/n``) applies the events of the partitions ``p`` with
``p % n == k - 1`` and leaves the others to the other lanes: the work splits by id, and
each id is applied by one worker, in order.

Each lane keeps its own checkpoint (copy, lane, lanes) beside the copy's whole checkpoint.
The copy as a whole has applied everything up to the lowest position of a complete set of
lanes (every lane of some ``n`` has a checkpoint), or its whole checkpoint if higher: a lane
that stops holds the copy back, so status shows it, and the bus keeps what it has not
applied. The number of lanes may change from one run to the next: a new lane starts where
the whole copy had got to; what it applies again is ignored (a copy takes only newer
versions)."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

PARTITIONS = 16  # partitions per entity, unless the bus URL says otherwise


def partition(entity_id: str, partitions: int) -> int:
    """The partition of a record, the same on every bus and in every process."""
    return zlib.crc32(entity_id.encode()) % partitions


@dataclass(frozen=True, slots=True)
class Lane:
    """Worker `number` (1-based) of `lanes`."""

    number: int
    lanes: int

    @classmethod
    def parse(cls, text: str) -> Lane:
        """Read ``k/n``, e.g. ``2/4``."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"lane '{text}': expected k/n, e.g. 2/4 (worker 2 of 4)")
        lane = cls(int(match[1]), int(match[2]))
        if not 1 <= lane.number <= lane.lanes:
            raise ValueError(f"lane '{text}': k must be between 1 and n")
        return lane

    def check(self, partitions: int) -> None:
        """More lanes than partitions would leave some lanes nothing to do, forever."""
        if self.lanes > partitions:
            raise ValueError(
                f"lane {self}: the bus has {partitions} partitions per entity, "
                f"so at most {partitions} lanes"
            )

    def holds(self, part: int) -> bool:
        return part % self.lanes == self.number - 1

    def __str__(self) -> str:
        return f"{self.number}/{self.lanes}"
