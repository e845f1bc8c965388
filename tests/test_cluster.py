"""The whole pipeline on real distributed parts: PostgreSQL stores and a three-node
JetStream cluster (replicas 3). Killing the stream's leader in the middle of a
50,000-change run loses nothing, and every copy converges (G7)."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import charter
from charter.buses.nats import NatsBus
from tests import nats_servers
from tests.backends import CONTEXTS, POSTGRES, PostgresBackend
from tests.conftest import SHOP, assert_converged

TOTAL, PER_TRANSACTION = 50_000, 100


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


def stream_leader(system: charter.System) -> int:
    bus = system.bus
    assert isinstance(bus, NatsBus)
    info = bus._call(bus._api(f"STREAM.INFO.{bus.stream}"), 10)
    assert info["config"]["num_replicas"] == 3
    return int(info["cluster"]["leader"].removeprefix("n"))


def test_killing_the_stream_leader_mid_run_loses_nothing(
    cluster_shop: tuple[Path, nats_servers.Servers],
) -> None:
    path, servers = cluster_shop
    rng = random.Random(7)
    with charter.load(path) as shop:
        runner = charter.Runner(shop, poll_interval=0.02).start()
        customers = shop.context("customers")
        ids: list[str] = []
        killer: threading.Thread | None = None
        for batch in range(TOTAL // PER_TRANSACTION):
            if batch == TOTAL // PER_TRANSACTION // 2:
                killer = threading.Thread(target=servers.kill, args=(stream_leader(shop),))
                killer.start()
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
        assert killer is not None
        killer.join()
        assert runner.wait_until_synced(timeout=300), charter.status(shop)
        runner.stop()
        assert len(shop.store("customers").outbox(0, TOTAL + 1)) == TOTAL
        assert_converged(shop)
        assert all(s.parked == 0 for s in charter.status(shop))
