"""The relay never skips an event, even one whose transaction commits late."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import charter
from charter.ids import uuid7
from charter.relay import Relay
from charter.system import System
from tests.conftest import assert_converged, charter_command


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


# -- one relay leads an owner's outbox at a time ----------------------------------------


def _write(system: System, count: int) -> None:
    with system.context("customers").transaction() as tx:
        for n in range(count):
            tx.create("Customer", email=f"lead{n}-{uuid7()}@x", name="L", password_hash="h")


def _until(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_one_relay_leads_an_outbox_and_another_takes_over_when_it_stops(shop: System) -> None:
    """Two relays of one owner: only the one that leads publishes; the other stands by,
    and takes over once the first gives the lead up."""
    store, bus = shop.store("customers"), shop.bus
    first, second = Relay("customers", store, bus), Relay("customers", store, bus)
    _write(shop, 3)
    assert first.step() == 3
    _write(shop, 2)
    assert second.step() == 0  # stands by, though two events wait
    assert store.unrelayed("Customer").events == 2
    first.finish()  # stops: gives up the lead
    assert _until(lambda: second.step() == 2)
    assert store.unrelayed("Customer").events == 0
    second.finish()


@pytest.mark.processes
def test_a_relay_killed_with_sigkill_hands_the_lead_over(shop: System, shop_file: Path) -> None:
    """The lead is a lock the system frees when its process ends, however it ends."""
    store = shop.store("customers")
    process = subprocess.Popen(
        charter_command("run", "-f", str(shop_file), "--context", "customers", "--no-projectors")
    )
    try:
        _write(shop, 3)
        assert _until(lambda: store.unrelayed("Customer").events == 0), "it never relayed"
        here = Relay("customers", store, shop.bus)
        assert here.step() == 0  # the process leads
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        _write(shop, 2)
        assert _until(lambda: here.step() == 2), "the lead was not handed over"
        here.finish()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
