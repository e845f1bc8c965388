"""The change mix every end-to-end benchmark writes: ~90% creates, ~10% e-mail updates of
customers from earlier transactions (the peer's pipeline mix, see peer_eventsourcing.py);
every e-mail address unique, since the charter's Customer says so."""

from __future__ import annotations

import random
import time

from peer_eventsourcing import UPDATE_FRACTION

from charter.system import ContextHandle

ENTITY = "Customer"


class ChangeMaker:
    """Writes the mix through an owner, remembering the ids it created."""

    def __init__(self, ctx: ContextHandle, seed: int = 1234) -> None:
        self.ctx, self.rng = ctx, random.Random(seed)
        self.known: list[str] = []
        self.seq = 0

    def batch(self, size: int) -> None:
        seq, self.seq = self.seq, self.seq + 1
        n_updates = min(int(size * UPDATE_FRACTION), len(self.known))
        with self.ctx.transaction() as tx:
            for k, cid in enumerate(self.rng.sample(self.known, n_updates)):
                tx.update(ENTITY, cid, email=f"moved{seq}-{k}@example.org")
            for i in range(size - n_updates):
                record = tx.create(ENTITY, name=f"name{seq}-{i}", email=f"c{seq}-{i}@example.org")
                self.known.append(record.id)

    def write(self, n: int, per_transaction: int) -> float:
        """Write n changes; returns the seconds it took."""
        start = time.perf_counter()
        done = 0
        while done < n:
            size = min(per_transaction, n - done)
            self.batch(size)
            done += size
        return time.perf_counter() - start
