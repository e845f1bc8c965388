"""The whole pipeline on real distributed parts: PostgreSQL stores and a three-node
JetStream cluster (replicas 3). Killing the stream's leader in the middle of a
50,000-change run, starting it again, then killing the server a copy reads from loses
nothing, and every copy converges within seconds of the writes (G7)."""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.buses.nats import NatsBus
from tests import nats_servers
from tests.backends import CONTEXTS, POSTGRES, PostgresBackend
from tests.conftest import SHOP, assert_converged

TOTAL, PER_TRANSACTION = 50_000, 100
CATCH_UP_S = 60  # after the last write, every copy has it within this


@pytest.fixture
def cluster_shop(tmp_path: Path) -> Iterator[tuple[Path, nats_servers.Servers]]:
    prefix = "c" + uuid.uuid4().hex[:10]
    with nats_servers.cluster(3) as servers:
        urls = {ctx: f"{POSTGRES}?schema={prefix}_{ctx}" for ctx in CONTEXTS}
        path = tmp_path / "charter.yaml"
        bus = servers.url + "?replicas=3"
        path.write_text(SHOP.format(name=f"shop_{prefix}", bus=bus, **urls))
        yield path, servers
    PostgresBackend("cluster").cleanup({"prefix": prefix, "name": f"shop_{prefix}"})


def _api(system: charter.System, subject: str) -> dict[str, Any]:
    bus = system.bus
    assert isinstance(bus, NatsBus)
    deadline = time.monotonic() + 30
    while True:  # while a leader is being elected, nobody may answer
        try:
            return bus._call(bus._api(subject), 10)
        except charter.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stream_leader(system: charter.System) -> int:
    bus = system.bus
    assert isinstance(bus, NatsBus)
    info = _api(system, f"STREAM.INFO.{bus.stream}")
    assert info["config"]["num_replicas"] == 3
    return int(info["cluster"]["leader"].removeprefix("n"))


def reader_host(system: charter.System, copy: str) -> int:
    """The server of the consumer this process reads `copy` through (one replica)."""
    bus = system.bus
    assert isinstance(bus, NatsBus)
    deadline = time.monotonic() + 30
    while True:
        reader = bus._readers.get((copy, system.charter.copies[copy].of))
        if reader is not None and reader.name:
            with contextlib.suppress(charter.Error):
                info = bus._call(bus._api(f"CONSUMER.INFO.{bus.stream}.{reader.name}"), 10)
                return int(info["cluster"]["leader"].removeprefix("n"))
        assert time.monotonic() < deadline, f"no reader for {copy}"
        time.sleep(0.2)


def wait_until_current(system: charter.System, node: int, timeout: float = 60) -> None:
    """Until node `node` has caught up with the stream (after a restart)."""
    bus = system.bus
    assert isinstance(bus, NatsBus)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster = _api(system, f"STREAM.INFO.{bus.stream}")["cluster"]
        if cluster.get("leader") == f"n{node}" or any(
            r["name"] == f"n{node}" and r.get("current") for r in cluster.get("replicas") or []
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"n{node} did not catch up with the stream in {timeout}s")


def test_killing_the_stream_leader_and_a_readers_server_mid_run_loses_nothing(
    cluster_shop: tuple[Path, nats_servers.Servers],
) -> None:
    path, servers = cluster_shop
    rng = random.Random(7)
    batches = TOTAL // PER_TRANSACTION
    with charter.load(path) as shop:
        runner = charter.Runner(shop, poll_interval=0.02).start()
        customers = shop.context("customers")
        ids: list[str] = []
        chores: list[threading.Thread] = []
        first = -1

        def meanwhile(target: Any, *args: Any) -> None:
            chores.append(threading.Thread(target=target, args=args))
            chores[-1].start()

        for batch in range(batches):
            if batch == batches // 3:  # the leader dies (SIGKILL)
                first = stream_leader(shop)
                meanwhile(servers.kill, first)
            elif batch == batches // 2:  # it comes back, with its data
                meanwhile(servers.restart, first)
            elif batch == 2 * batches // 3:  # once it has caught up, a copy's reader's dies
                for chore in chores:
                    chore.join()
                wait_until_current(shop, first)
                meanwhile(servers.kill, reader_host(shop, "order_customers"))
            with customers.transaction() as tx:
                for i in range(PER_TRANSACTION):
                    if ids and rng.random() < 0.3:
                        tx.update("Customer", rng.choice(ids), name=f"N{batch}-{i}")
                    else:
                        ids.append(
                            tx.create(
                                "Customer", email=f"{batch}-{i}@x", name="C", password_hash="h"
                            ).id
                        )
        for chore in chores:
            chore.join()
        written = time.monotonic()
        assert runner.wait_until_synced(timeout=CATCH_UP_S), charter.status(shop)
        caught_up = time.monotonic() - written
        runner.stop()
        assert len(shop.store("customers").outbox(0, TOTAL + 1)) == TOTAL
        assert_converged(shop)
        assert all(s.parked == 0 for s in charter.status(shop))
        bus = shop.bus
        assert isinstance(bus, NatsBus)
        bus._call(bus._settle(), 10)
        for copy in shop.charter.copies_of("Customer"):
            # what a copy has applied is a note in the stream, kept on every server of it
            checkpoint = shop.store(copy.context).checkpoint(copy)
            position = bus._call(bus._position("Customer", copy.name), 10)
            assert checkpoint is not None and position == checkpoint.position
        kinds = Counter(re.sub(r"\d+", "N", str(e))[:90] for e in runner.errors)
        print(f"\ncaught up {caught_up:.1f}s after the last write; runner errors meanwhile:")
        for kind, count in kinds.most_common():
            print(f"{count:6d}  {kind}")
