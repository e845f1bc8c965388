"""The relay never skips an event, even one whose transaction commits late."""

from __future__ import annotations

import random
import threading
import time

import charter
from charter.system import System
from tests.conftest import assert_converged


def test_sixteen_writers_with_late_commits_lose_nothing(shop: System) -> None:
    customers = shop.context("customers")
    runner = charter.Runner(shop, poll_interval=0.005).start()
    committed: list[str] = []
    lock = threading.Lock()

    def writer(number: int) -> None:
        rng = random.Random(number)
        for i in range(25):
            with customers.transaction() as tx:
                record = tx.create(
                    "Customer", email=f"w{number}-{i}@x", name=f"W{number}", password_hash="h"
                )
                if rng.random() < 0.2:
                    time.sleep(rng.uniform(0.01, 0.05))  # commit late, after later sequence numbers
            with lock:
                committed.append(record.id)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert runner.wait_until_synced(timeout=60)
    runner.stop()
    assert not runner.errors
    assert len(committed) == 400
    published = {row.entity_id for row in shop.store("customers").outbox(0, 10_000)}
    assert published == set(committed)
    assert shop.store("customers").unrelayed("Customer").events == 0
    assert_converged(shop)
    copy = shop.context("orders").copy("order_customers")
    assert {row.id for row in copy} == set(committed)
