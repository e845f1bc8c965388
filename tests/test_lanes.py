"""Several projector workers sharing one copy (charter.lanes), on every backend: each event
is applied by exactly one lane, each id stays in one lane and in order, a lane that stops
holds the copy back, the number of lanes may change between runs, and a lane killed with
SIGKILL catches up without applying a version twice."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import charter
from charter.cli import main
from charter.lanes import Lane, partition
from charter.projector import Projector
from charter.runner import Runner, declared_copies
from charter.status import copy_status
from charter.system import System
from tests.conftest import assert_converged, charter_command, edit
from tests.test_crash import ApplyLog, all_events, assert_pipeline_healthy, write_paced
from tests.workers import WorkerProcess, write_customers

COPIES = ("orders", "shipping")


def relay(system: System) -> None:
    Runner(system, ["customers"], projectors=False).drain()


def drain_lanes(shop_file: Path, lanes: int) -> list[Runner]:
    """Every lane of `lanes` drained at once, each in its own thread and System (as separate
    processes would); returns the runners, to read what each took."""
    systems = [charter.load(shop_file) for _ in range(lanes)]
    runners = [
        Runner(system, COPIES, relays=False, lane=Lane(number, lanes))
        for number, system in enumerate(systems, start=1)
    ]
    errors: list[BaseException] = []

    def drain(runner: Runner) -> None:
        try:
            runner.drain()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(r,)) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for system in systems:
        system.close()
    assert errors == []
    return runners


def whole_position(system: System, copy: str) -> int:
    spec = system.charter.copies[copy]
    checkpoint = system.store(spec.context).checkpoint(spec)
    return checkpoint.position if checkpoint else 0


def test_lanes_split_each_copy_by_id_and_every_event_is_taken_once(
    shop: System, shop_file: Path
) -> None:
    Runner(shop).drain()  # the copies exist before the changes, so the events carry them
    write_customers(shop, seed=3, transactions=300, per=(1, 4), keep=20)
    relay(shop)
    events = all_events(shop, "customers")
    runners = drain_lanes(shop_file, 3)
    for copy in shop.charter.copies:
        taken = [
            w.taken
            for r in runners
            for w in r.workers
            if isinstance(w, Projector) and w.copy.name == copy
        ]
        assert sum(taken) == len(events), f"{copy}: lanes took {taken} of {len(events)}"
        assert all(taken), f"{copy}: a lane took nothing: {taken}"
        shares = [
            sum(1 for e in events if Lane(k, 3).holds(partition(e.entity_id, 16)))
            for k in (1, 2, 3)
        ]
        assert taken == shares, f"{copy}: each lane takes the events of its partitions"
    assert_converged(shop)
    assert all(state.synced for state in charter.status(shop))


def test_a_lane_that_does_not_run_holds_the_copy_back(shop: System, shop_file: Path) -> None:
    Runner(shop).drain()
    write_customers(shop, seed=4, transactions=200, per=(1, 3), keep=20)
    relay(shop)
    head = shop.bus.head("Customer")
    systems = [charter.load(shop_file) for _ in range(2)]
    try:
        Runner(systems[0], COPIES, relays=False, lane=Lane(1, 2)).drain()
        for name in COPIES:
            copy = next(c for c in shop.charter.copies_in(name))
            state = copy_status(shop, copy)
            assert not state.synced and state.lag_events > 0, state
            assert [(x.lane, x.position) for x in state.lanes] == [("1/2", head), ("2/2", None)]
            assert whole_position(shop, copy.name) < head
        shown = CliRunner().invoke(main, ["status", "-f", str(shop_file)]).output
        assert "order_customers lanes: 1/2 at" in shown and "2/2 never ran" in shown, shown
        Runner(systems[1], COPIES, relays=False, lane=Lane(2, 2)).drain()
    finally:
        for system in systems:
            system.close()
    assert all(state.synced for state in charter.status(shop))
    assert {whole_position(shop, name) for name in shop.charter.copies} == {head}
    shown = json.loads(CliRunner().invoke(main, ["status", "--json", "-f", str(shop_file)]).output)
    assert [lane["position"] for lane in shown[0]["lanes"]] == [head, head]
    assert_converged(shop)


def test_the_number_of_lanes_can_change_from_run_to_run(shop: System, shop_file: Path) -> None:
    Runner(shop).drain()
    seen: list[int] = []
    for stage, lanes in enumerate((2, 3, 1, 0, 4)):
        write_customers(shop, seed=10 + stage, transactions=80, per=(1, 3), keep=10)
        relay(shop)
        if lanes:
            drain_lanes(shop_file, lanes)
        else:
            Runner(shop, COPIES, relays=False).drain()
        assert_converged(shop)
        position = min(whole_position(shop, name) for name in shop.charter.copies)
        assert position == shop.bus.head("Customer"), f"stage {stage} ({lanes} lanes)"
        seen.append(position)
        shown = {len(state.lanes) for state in charter.status(shop)}
        assert shown == {lanes}, f"stage {stage}: status shows the lanes of this run only"
    assert seen == sorted(seen)


@pytest.mark.processes
def test_lane_processes_share_a_copy_and_a_killed_one_catches_up(
    shop: System, shop_file: Path
) -> None:
    """`charter run --lane k/3` in three processes beside a relay process while the owner
    writes; lane 2 is killed with SIGKILL half-way and started again. Every copy converges,
    and no version was applied twice or out of order."""
    log = ApplyLog(shop)
    Runner(shop).drain()
    path = str(shop_file)

    def lane(number: int) -> WorkerProcess:
        args = ("run", "-f", path, "--no-relays", "--lane", f"{number}/3")
        process = WorkerProcess(charter_command(*args))
        process.wait_for(lambda line: line.startswith("running"))
        return process

    relay_process = WorkerProcess(charter_command("run", "-f", path, "--no-projectors"))
    lanes = {number: lane(number) for number in (1, 2, 3)}
    try:
        writer = threading.Thread(
            target=write_paced, args=(shop, 4000, 3.0, random.Random(7)), daemon=True
        )
        writer.start()
        copy = shop.charter.copies["order_customers"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # killed once it has applied some of its share
            if any(x.lane == Lane(2, 3) and x.position for x in shop.store("orders").lanes(copy)):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("lane 2/3 applied nothing in 30 s")
        assert lanes[2].kill() == -signal.SIGKILL
        time.sleep(0.5)
        lanes[2] = lane(2)
        writer.join(60)
        deadline = time.monotonic() + 60
        while not all(s.synced for s in charter.status(shop)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for process in (relay_process, *lanes.values()):
            if process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
                process.finish()
    assert len(all_events(shop, "customers")) == 4000
    assert_pipeline_healthy(shop)
    assert log.assert_each_version_applied_at_most_once() > 0


def test_lane_is_checked_against_the_bus(shop: System) -> None:
    with pytest.raises(ValueError, match="at most 16 lanes"):
        Runner(shop, COPIES, relays=False, lane=Lane(1, 17))
    with pytest.raises(ValueError, match="expected k/n"):
        Lane.parse("2-4")
    with pytest.raises(ValueError, match="between 1 and n"):
        Lane.parse("5/4")


def customers_deleted_by_a_late_lane(shop: System, shop_file: Path) -> None:
    """Records every copy has, then deleted; the events relayed, and only lane 1/2 has
    applied them: the deletes in lane 2's partitions are still to be applied."""
    Runner(shop).drain()
    alive = write_customers(shop, seed=21, transactions=60, per=(1, 3), creates=1.0, keep=40)
    Runner(shop).drain()
    with shop.context("customers").transaction() as tx:
        for entity_id in alive[:40]:
            tx.delete("Customer", entity_id)
    relay(shop)
    with charter.load(shop_file) as lane_one:
        Runner(lane_one, COPIES, relays=False, lane=Lane(1, 2)).drain()


def test_a_new_field_filled_while_a_lane_is_behind_misses_no_delete(
    shop: System, shop_file: Path
) -> None:
    """The fill for a copy's new field stands for the whole copy: lane 1/2, ahead, fills
    it, and lane 2/2 still applies the deletes it had not reached."""
    customers_deleted_by_a_late_lane(shop, shop_file)
    edit(shop_file, "fields: [name, email]", "fields: [name, email, address]")
    for number in (1, 2):
        with charter.load(shop_file) as system:
            Runner(system, COPIES, relays=False, lane=Lane(number, 2)).drain()
    with charter.load(shop_file) as system:
        assert_converged(system)
        assert all(state.synced for state in charter.status(system))


def test_the_bus_keeps_what_a_lane_behind_has_not_applied(shop: System, shop_file: Path) -> None:
    """With no retention, compaction forgets at once what the copy as a whole has applied:
    never what a lane behind still needs."""
    edit(shop_file, "retention: 1h", "retention: 0s")
    with charter.load(shop_file) as system:
        customers_deleted_by_a_late_lane(system, shop_file)
        system.bus.compact(0, declared_copies(system.charter))
    with charter.load(shop_file) as system:
        Runner(system, COPIES, relays=False, lane=Lane(2, 2)).drain()
        assert_converged(system)


def test_an_event_no_copy_can_read_is_parked_once_whatever_the_lanes(
    shop: System, shop_file: Path
) -> None:
    Runner(shop).drain()
    write_customers(shop, seed=5, transactions=40, per=(1, 3), keep=10)
    key = next(f"poison-{n}" for n in range(100) if partition(f"poison-{n}", 16) % 6 == 0)
    shop.bus.publish_raw("poison-event", "Customer", key, b"\xff not an event")
    relay(shop)
    with charter.load(shop_file) as system:  # lane 1/2 parks it; 2/2 does not run
        Runner(system, COPIES, relays=False, lane=Lane(1, 2)).drain()
    drain_lanes(shop_file, 3)  # the lane of 3 that holds it reads it again, from the start
    for copy in shop.charter.copies.values():
        parked = shop.store(copy.context).parked(copy)
        assert [p.event_id for p in parked] == ["poison-event"], parked  # as the bus knows it
    assert_converged(shop)
