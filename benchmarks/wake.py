"""What waking a `wait_for` costs in this process, apart from everything else: a reader
thread waits on a record's token; the main thread then relays and applies it (one
projector step, no runner threads) and notes when the store's apply returned; the sample
is the time from there to the reader's return (its wake, what it reads then, the record).
Timing on a loaded machine is noise, so run it alternately on two versions of src:

    PYTHONPATH=src .venv/bin/python benchmarks/wake.py [SAMPLES]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from run import new_system, note_applies

from charter.projector import Projector
from charter.relay import Relay
from charter.runner import Runner
from charter.system import CopyReader

ENTITY = "Customer"


def wait(copy: CopyReader, token: str, returned: list[float]) -> None:
    copy.wait_for(token, 30)
    returned.append(time.monotonic())


def samples(n: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="charter-bench-wake-") as name:
        system = new_system(Path(name))
        runner = Runner(system)
        relay = next(w for w in runner.workers if isinstance(w, Relay) and w.context == "customers")
        projector = next(
            w
            for w in runner.workers
            if isinstance(w, Projector) and w.copy.name == "order_customers"
        )
        applied: dict[str, float] = {}
        note_applies(system.store("orders"), "order_customers", applied)
        copy = system.context("orders").copy("order_customers")
        ctx = system.context("customers")
        runner.drain()
        found: list[float] = []
        for i in range(n):
            with ctx.transaction() as tx:
                made = tx.create(ENTITY, name=f"w{i}", email=f"w{i}@example.org")
            relay.step()
            returned: list[float] = []
            reader = threading.Thread(target=wait, args=(copy, made.token, returned))
            reader.start()
            time.sleep(0.002)  # the reader is waiting by now
            projector.step()
            reader.join()
            found.append(returned[0] - applied[made.id])
        system.close()
        return found


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    found = sorted(samples(n))
    p50, p99 = statistics.median(found), found[int(0.99 * (len(found) - 1))]
    print(
        f"wake: {n} waits, apply returned → wait_for returned p50 {p50 * 1e3:.3f} ms, "
        f"p99 {p99 * 1e3:.3f} ms, mean {statistics.mean(found) * 1e3:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
