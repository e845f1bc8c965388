"""G10 one writer per epoch: `charter transfer` moves ownership of an entity, or of some
partitions of its records, with writers hammering on both the old and the new owner
(real processes), on SQLite and on PostgreSQL + NATS; `kill -9` of the transfer at each
phase, then resume or roll back; the charter's `moves:`; epochs on the wire; copies
parking another epoch's events; each store's fence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import charter
from charter import model, parking
from charter.errors import CharterError, EventError, FencedError, OwnershipError
from charter.events import Event, decode
from charter.lanes import PARTITIONS, partition
from charter.projector import check
from charter.status import copy_status
from charter.stores import fencing, open_store
from charter.system import System
from charter.transfer import KILL_AFTER, PHASES, read_state
from tests.backends import NATS, POSTGRES
from tests.conftest import charter_command

WRITER = str(Path(__file__).with_name("transfer_writer.py"))
CONTEXTS = ("legacy", "customers", "shipping")
MOVING = [0, 3, 7, 12]  # the partitions a partition transfer moves

CHARTER = """\
charter: 1
name: {name}
bus: {bus}
contexts:
  legacy:    {{team: platform, store: "{legacy}"}}
  customers: {{team: customer-team, store: "{customers}"}}
  shipping:  {{team: logistics, store: "{shipping}"}}
entities:
  Customer:
    owner: legacy   # the monolith, for now
    fields:
      email: {{type: string, unique: true}}
      name: {{type: string}}
      secret: {{type: string, private: true, required: false}}
copies:
  shipping_customers: {{in: shipping, of: Customer, fields: [name, email], window: 5s}}
  customer_mirror: {{in: customers, of: Customer, fields: [name, email], window: 5s}}
"""


@dataclass
class World:
    path: Path
    kind: str
    urls: dict[str, str]

    def cleanup(self) -> None:
        if self.kind == "postgres+nats":
            import psycopg

            from charter.buses.nats import NatsBus

            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                for ctx in CONTEXTS:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{self.urls["prefix"]}_{ctx}" CASCADE')
            NatsBus.delete_stream(NATS, self.urls["name"])


def _world(tmp_path: Path, kind: str) -> World:
    prefix = "tr" + uuid.uuid4().hex[:10]
    if kind == "sqlite":
        urls = {c: f"sqlite:///{tmp_path}/{c}.db" for c in CONTEXTS}
        urls |= {"bus": f"sqlite:///{tmp_path}/bus.db", "name": "moving"}
    else:
        urls = {c: f"{POSTGRES}?schema={prefix}_{c}" for c in CONTEXTS}
        urls |= {"bus": NATS, "name": f"moving_{prefix}"}
    urls["prefix"] = prefix
    path = tmp_path / "charter.yaml"
    path.write_text(CHARTER.format(**urls))
    return World(path, kind, urls)


@pytest.fixture(params=["sqlite", "postgres+nats"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    made = _world(tmp_path, request.param)
    yield made
    made.cleanup()


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    made = _world(tmp_path, "sqlite")
    yield made
    made.cleanup()


def _seed(path: Path, count: int = 200) -> list[str]:
    with charter.load(path) as system:
        with system.context("legacy").transaction() as tx:
            ids = [
                tx.create("Customer", email=f"c{i}@shop", name=f"n{i}", secret="s").id
                for i in range(count)
            ]
        charter.Runner(system).drain()
    return ids


class Pipeline:
    """Relays and projectors in a thread, loading the charter again when it changes (as
    an operator restarts `charter run` after a transfer)."""

    def __init__(self, path: Path) -> None:
        self.path, self.stop = path, threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seen, system = -1, None
        while not self.stop.is_set():
            if self.path.stat().st_mtime_ns != seen:
                seen = self.path.stat().st_mtime_ns
                if system is not None:
                    system.close()
                system = charter.load(self.path)
            try:
                assert system is not None
                charter.Runner(system).drain()
            except charter.Error as exc:  # a server's hiccup: say it at the end if it stays
                self.errors.append(exc)
            time.sleep(0.002)
        if system is not None:
            system.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)


def _writer(world: World, context: str, ids: list[str], name: str) -> tuple[Path, Path]:
    folder = world.path.parent
    (folder / f"{name}.ids").write_text("\n".join(ids))
    log = folder / f"{name}.log"
    ids_file, stop = folder / f"{name}.ids", folder / "stop"
    subprocess.Popen(
        [sys.executable, WRITER, str(world.path), context, str(ids_file), str(log), str(stop)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return log, folder / "stop"


def _lines(log: Path) -> list[list[object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _wait_ready(*logs: Path) -> None:
    deadline = time.monotonic() + 60
    while not all(log.exists() and "ok" in log.read_text() for log in logs):
        assert time.monotonic() < deadline, "the writers did not start writing"
        time.sleep(0.05)


def _transfer(
    world: World, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        charter_command("transfer", "-f", str(world.path), "Customer", *args),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
        timeout=300,
    )


def _owner_state(system: System) -> dict[str, tuple[int, dict[str, object]]]:
    """id → (version, public fields) as each record's owner (by partition) holds it."""
    spec = system.charter.entities["Customer"]
    state = {}
    for owner in spec.owners:
        for row in system.store(owner).rows(spec):
            if spec.holder(row["id"])[0] == owner:
                state[row["id"]] = (row["version"], {n: row[n] for n in spec.public_names})
    return state


def _settle(path: Path) -> None:
    """Drain with the charter as it now is, apply again what an old charter parked."""
    with charter.load(path) as system:
        charter.Runner(system).drain()
        parking.retry(system)
        charter.Runner(system).drain()
        assert parking.parked(system) == []


def _assert_g10(world: World, logs: dict[str, Path], moving: set[str]) -> None:
    """Never two accepted writes for one id at one version; every accepted write in an
    owner's history; the old owner's versions of a moved record all below the new one's;
    the copies equal the owners."""
    accepted: dict[tuple[str, int], str] = {}
    for name, log in logs.items():
        for _, kind, entity_id, version, epoch in _lines(log):
            if kind != "ok":
                continue
            key = (str(entity_id), int(version))  # type: ignore[call-overload]
            assert key not in accepted, f"two writes made {key}: {accepted[key]} and {name}"
            accepted[key] = name
            if name == "new":
                assert epoch == 2
    _settle(world.path)
    with charter.load(world.path) as system:
        spec = system.charter.entities["Customer"]
        histories = {
            ctx: {
                i: [r.version for r in system.store(ctx).history("Customer", i)]
                for i in {k[0] for k in accepted}
            }
            for ctx in ("legacy", "customers")
        }
        for (entity_id, version), _ in accepted.items():
            assert any(version in h[entity_id] for h in histories.values()), (
                f"accepted write {entity_id} v{version} is in no owner's history"
            )
        for entity_id in moving:
            old = histories["legacy"].get(entity_id, [])
            new = histories["customers"].get(entity_id, [])
            if old and new:
                assert max(old) < min(new), f"{entity_id}: epochs overlap {old} / {new}"
        owners = _owner_state(system)
        for entity_id, (version, _) in owners.items():
            done = [v for (i, v) in accepted if i == entity_id]
            assert version >= max(done, default=0)
        for copy in system.charter.copies.values():
            rows = {r["id"]: r for r in system.store(copy.context).copy_rows(copy)}
            for entity_id, (version, fields) in owners.items():
                assert entity_id in rows, f"{copy.name} lacks {entity_id}"
                row = rows[entity_id]
                assert row["version"] == version, (copy.name, entity_id, row["version"], version)
                assert {f: row[f] for f in copy.fields} == {f: fields[f] for f in copy.fields}
        assert spec.epoch == 2


# -- the hammer: writers on both owners throughout the move -----------------------------


@pytest.mark.parametrize("scope", ["whole", "partitions"])
def test_writers_on_both_owners_throughout_the_move(world: World, scope: str) -> None:
    ids = _seed(world.path)
    parts = MOVING if scope == "partitions" else list(range(PARTITIONS))
    moving = [i for i in ids if partition(i, PARTITIONS) in parts]
    staying = [i for i in ids if i not in moving]
    logs = {"old": _writer(world, "legacy", moving, "old")[0]}
    logs["new"], stop = _writer(world, "customers", moving, "new")
    if staying:
        logs["other"] = _writer(world, "legacy", staying, "other")[0]
    pipeline = Pipeline(world.path)
    try:
        _wait_ready(logs["old"])
        time.sleep(0.5)
        args = ["--to", "customers"]
        for p in parts if scope == "partitions" else ():
            args += ["--partitions", str(p)]
        done = _transfer(world, *args)
        assert done.returncode == 0, done.stderr + done.stdout
        assert "done:" in done.stdout
        _wait_ready(logs["new"])
        time.sleep(0.5)
    finally:
        stop.write_text("")
        time.sleep(0.5)
        pipeline.close()
    _assert_g10(world, logs, set(moving))
    old = _lines(logs["old"])
    assert any(k == "refused" for _, k, *_ in old), "the old owner was never fenced"
    assert any(k == "ok" for _, k, *_ in old), "the old owner never wrote before the move"
    if staying:  # the other partitions' writes were never refused
        kinds = {k for _, k, *_ in _lines(logs["other"])}
        assert kinds <= {"ready", "ok", "conflict"}, kinds
    text = world.path.read_text()
    assert "moves:" in text and "# the monolith, for now" in text


# -- kill -9 at each phase, then resume -------------------------------------------------


@pytest.mark.parametrize("phase", PHASES[:-1])
def test_kill_at_each_phase_then_resume(sqlite_world: World, phase: str) -> None:
    _kill_then_resume(sqlite_world, phase)


@pytest.mark.parametrize("phase", ["filled", "fenced", "promoted"])
def test_kill_then_resume_on_postgres(tmp_path: Path, phase: str) -> None:
    world = _world(tmp_path, "postgres+nats")
    try:
        _kill_then_resume(world, phase)
    finally:
        world.cleanup()


def _kill_then_resume(world: World, phase: str) -> None:
    ids = _seed(world.path, 100)
    moving = [i for i in ids if partition(i, PARTITIONS) in MOVING]
    logs = {"old": _writer(world, "legacy", moving, "old")[0]}
    logs["new"], stop = _writer(world, "customers", moving, "new")
    pipeline = Pipeline(world.path)
    try:
        _wait_ready(logs["old"])
        args = ["--to", "customers", *[a for p in MOVING for a in ("--partitions", str(p))]]
        killed = _transfer(world, *args, env={KILL_AFTER: phase})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        status = _transfer(world, "--status")
        assert f"phase: {phase}" in status.stdout, status.stdout
        time.sleep(0.3)  # the writers go on meanwhile
        resumed = _transfer(world, *args)
        assert resumed.returncode == 0, resumed.stderr + resumed.stdout
        assert f"resuming at '{phase}'" in resumed.stdout
        _wait_ready(logs["new"])
        time.sleep(0.3)
    finally:
        stop.write_text("")
        time.sleep(0.5)
        pipeline.close()
    _assert_g10(world, logs, set(moving))
    state = read_state(world.path, "Customer")
    assert state is not None and state.phase == "done"


def test_rollback_before_promote_and_not_after(sqlite_world: World) -> None:
    world = sqlite_world
    ids = _seed(world.path, 60)
    moving = [i for i in ids if partition(i, PARTITIONS) in MOVING]
    args = ["--to", "customers", *[a for p in MOVING for a in ("--partitions", str(p))]]
    killed = _transfer(world, *args, env={KILL_AFTER: "fenced"})
    assert killed.returncode == -signal.SIGKILL
    with (
        charter.load(world.path) as system,  # refused by the old owner's own store
        pytest.raises(FencedError, match="moved to 'customers' at epoch 2"),
        system.context("legacy").transaction() as tx,
    ):
        tx.update("Customer", moving[0], name="fenced")
    back = _transfer(world, "--rollback")
    assert back.returncode == 0, back.stderr
    assert "rolled back" in back.stdout
    with charter.load(world.path) as system:
        with system.context("legacy").transaction() as tx:
            tx.update("Customer", moving[0], name="writable again")
        assert system.charter.entities["Customer"].moves == ()
    store = open_store(world.urls["customers"], "customers")
    assert store.fences("Customer") == []
    store.close()
    killed = _transfer(world, *args, env={KILL_AFTER: "promoted"})
    assert killed.returncode == -signal.SIGKILL
    refused = _transfer(world, "--rollback")
    assert refused.returncode == 1
    assert "cannot be undone" in refused.stderr and "--to legacy" in refused.stderr
    assert "Traceback" not in refused.stderr
    stuck = _transfer(world, "--drain-timeout", "0.5")  # nothing applies the copies
    assert stuck.returncode == 1 and "is its projector (charter run) running?" in stuck.stderr
    assert "charter transfer Customer` again" in stuck.stderr
    pipeline = Pipeline(world.path)
    try:
        assert _transfer(world).returncode == 0  # resumed, without --to
    finally:
        pipeline.close()


def test_a_resume_after_a_rollback_cut_short_fences_the_old_owner_again(
    sqlite_world: World,
) -> None:
    """A rollback that died after lifting the old owner's fence leaves the state file at
    `fenced`; the resume that follows must fence again before it promotes, or a process
    still on the old charter writes beside the new owner (found by charter.sim)."""
    world = sqlite_world
    ids = _seed(world.path, 60)
    moving = [i for i in ids if partition(i, PARTITIONS) in MOVING]
    old_text = world.path.read_text()
    args = ["--to", "customers", *[a for p in MOVING for a in ("--partitions", str(p))]]
    killed = _transfer(world, *args, env={KILL_AFTER: "fenced"})
    assert killed.returncode == -signal.SIGKILL
    legacy = open_store(world.urls["legacy"], "legacy")  # the rollback's first step, then -9
    legacy.unfence(charter.load(world.path).charter.entities["Customer"], MOVING)
    legacy.close()
    assert read_state(world.path, "Customer").phase == "fenced"  # type: ignore[union-attr]
    pipeline = Pipeline(world.path)
    try:
        resumed = _transfer(world)
        assert resumed.returncode == 0, resumed.stderr
    finally:
        pipeline.close()
    with (
        System(model.loads(old_text, world.path)) as stale,  # still on the old charter
        pytest.raises(FencedError, match="moved to 'customers' at epoch 2"),
        stale.context("legacy").transaction() as tx,
    ):
        tx.update("Customer", moving[0], name="a second writer")


def test_the_drain_relays_to_each_copys_topic_under_contract_visibility(
    sqlite_world: World,
) -> None:
    """The old owner's last events, relayed by the transfer's drain, reach every copy when
    the entity goes out once per copy (charter.visibility: contract); and after the move,
    the new owner's events not yet relayed count in the copies' lag (found by charter.sim)."""
    world = sqlite_world
    text = world.path.read_text().replace(
        "    owner: legacy   # the monolith, for now\n",
        "    owner: legacy   # the monolith, for now\n    visibility: contract\n",
    )
    world.path.write_text(text)
    ids = _seed(world.path, 60)
    moving = [i for i in ids if partition(i, PARTITIONS) in MOVING]
    with charter.load(world.path) as system, system.context("legacy").transaction() as tx:
        for entity_id in moving:  # not relayed: the drain publishes them
            tx.update("Customer", entity_id, name="last before the move")
    args = ["--to", "customers", *[a for p in MOVING for a in ("--partitions", str(p))]]
    first = _transfer(world, *args, "--drain-timeout", "0.5")  # no relay but the drain's
    assert "is its projector (charter run) running?" in first.stderr, first.stdout
    pipeline = Pipeline(world.path)
    try:
        done = _transfer(world)
        assert done.returncode == 0, done.stderr
    finally:
        pipeline.close()
    _settle(world.path)
    with charter.load(world.path) as system:
        copy = system.charter.copies["shipping_customers"]
        names = {r["id"]: r["name"] for r in system.store("shipping").copy_rows(copy)}
        assert {names[i] for i in moving} == {"last before the move"}
        assert copy_status(system, copy).lag_events == 0
        with system.context("customers").transaction() as tx:
            tx.update("Customer", moving[0], name="the new owner's")
        assert copy_status(system, copy).lag_events == 1  # in its outbox, not yet relayed


def test_a_copy_filled_after_a_partition_move_reads_each_record_from_its_holder(
    sqlite_world: World,
) -> None:
    """A copy that starts after the move is filled from each record's holder: the moved
    records from the new owner, not the old owner's fenced rows (found by charter.sim)."""
    world = sqlite_world
    ids = _seed(world.path, 60)
    moving = [i for i in ids if partition(i, PARTITIONS) in MOVING]
    args = ["--to", "customers", *[a for p in MOVING for a in ("--partitions", str(p))]]
    pipeline = Pipeline(world.path)
    try:
        done = _transfer(world, *args)
        assert done.returncode == 0, done.stderr
    finally:
        pipeline.close()
    with charter.load(world.path) as system:
        with system.context("customers").transaction() as tx:
            tx.update("Customer", moving[0], name="by the new owner")
        charter.Runner(system).drain()
    text = world.path.read_text().replace(
        "copies:\n",
        "copies:\n  late_names: {in: shipping, of: Customer, fields: [name], window: 5s}\n",
    )
    world.path.write_text(text)
    with charter.load(world.path) as system:
        charter.Runner(system).drain()
        copy = system.charter.copies["late_names"]
        names = {r["id"]: r["name"] for r in system.store("shipping").copy_rows(copy)}
    assert names[moving[0]] == "by the new owner"
    assert len(names) == len(ids)


# -- the CLI's plan, status and refusals ------------------------------------------------


def test_dry_run_prints_the_plan_and_changes_nothing(sqlite_world: World) -> None:
    _seed(sqlite_world.path, 20)
    before = sqlite_world.path.read_text()
    shown = _transfer(sqlite_world, "--to", "customers", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert "the whole of Customer: 'legacy' → 'customers', epoch 1 → 2 (20 records)" in shown.stdout
    assert "retire: copies customer_mirror" in shown.stdout
    as_json = json.loads(_transfer(sqlite_world, "--to", "customers", "--dry-run", "--json").stdout)
    assert as_json["epoch"] == 2 and as_json["parts"] is None
    assert sqlite_world.path.read_text() == before
    assert read_state(sqlite_world.path, "Customer") is None
    none = _transfer(sqlite_world, "--status")
    assert "no transfer of Customer" in none.stdout


def test_whole_move_rewrites_owner_and_retires_the_new_owners_copy(sqlite_world: World) -> None:
    ids = _seed(sqlite_world.path, 30)
    with charter.load(sqlite_world.path) as system:
        pipeline = Pipeline(sqlite_world.path)
        try:
            done = _transfer(sqlite_world, "--to", "customers")
        finally:
            pipeline.close()
    assert done.returncode == 0, done.stderr
    loaded = model.load(sqlite_world.path)
    spec = loaded.entities["Customer"]
    assert spec.owner == "customers" and spec.epoch == 2
    assert "customer_mirror" not in loaded.copies
    assert spec.moves[0].source == "legacy" and spec.moves[0].parts is None
    with charter.load(sqlite_world.path) as system:
        with system.context("customers").transaction() as tx:
            assert tx.update("Customer", ids[0], name="mine").version == 2
            made = tx.create("Customer", email="new@shop", name="new")
        with (
            pytest.raises(OwnershipError, match="owned by context 'customers'"),
            system.context("legacy").transaction() as tx,
        ):
            tx.update("Customer", ids[1], name="not mine")
        charter.Runner(system).drain()
        copy = system.context("shipping").copy("shipping_customers")
        assert copy.get(made.id) is not None
        assert copy.get(ids[0])["name"] == "mine"  # type: ignore[index]
    status = _transfer(sqlite_world, "--status", "--json")
    doc = json.loads(status.stdout)
    assert doc["phase"] == "done"
    assert doc["fences"]["legacy"][0]["state"] == "fenced"
    assert doc["fences"]["customers"][0]["state"] == "owner"


def test_refusals_are_clear(sqlite_world: World) -> None:
    _seed(sqlite_world.path, 10)
    for args, words in [
        (["--to", "nowhere"], "no context 'nowhere'"),
        (["--to", "legacy"], "owns Customer already"),
        (["--to", "customers", "--partitions", "16"], "partition 16 is not between 0 and 15"),
    ]:
        run = _transfer(sqlite_world, *args)
        assert run.returncode == 1, run.stdout
        assert words in run.stderr and "Traceback" not in run.stderr, run.stderr
    no_entity = subprocess.run(
        charter_command("transfer", "-f", str(sqlite_world.path), "Nobody", "--to", "customers"),
        capture_output=True,
        text=True,
    )
    assert no_entity.returncode == 1 and "no entity 'Nobody'" in no_entity.stderr


# -- the charter's moves ------------------------------------------------------------------

BASE = CHARTER.format(
    name="m",
    bus="memory://m/bus",
    legacy="memory://m/l",
    customers="memory://m/c",
    shipping="memory://m/s",
)


def _with_moves(moves: str, owner: str = "legacy") -> str:
    text = BASE.replace("owner: legacy", f"owner: {owner}")
    marker = "      secret: {type: string, private: true, required: false}\n"
    return text.replace(marker, marker + "    moves:\n" + moves)


def test_moves_resolve_owner_and_epoch_per_record() -> None:
    loaded = model.loads(
        _with_moves(
            "      - {epoch: 2, from: legacy, to: customers, partitions: [0, 3]}\n"
            "      - {epoch: 3, from: customers, to: shipping, partitions: [3]}\n"
        )
    )
    spec = loaded.entities["Customer"]
    ids = {partition(i, PARTITIONS): i for i in (str(uuid.uuid4()) for _ in range(400))}
    assert spec.holder(ids[0]) == ("customers", 2)
    assert spec.holder(ids[3]) == ("shipping", 3)
    assert spec.holder(ids[5]) == ("legacy", 1)
    assert spec.owners == ("legacy", "customers", "shipping")
    assert spec.epoch == 3 and spec.partitioned
    assert [e.name for e in loaded.owned_by("customers")] == ["Customer"]


@pytest.mark.parametrize(
    ("moves", "owner", "line", "words"),
    [
        (
            "      - {epoch: 1, to: customers}\n",
            "customers",
            16,
            "epoch 1 must be a whole number above 1",
        ),
        ("      - {epoch: 2, to: nobody}\n", "legacy", 16, "moves to unknown context 'nobody'"),
        ("      - {epoch: 2, to: customers, partitions: [16]}\n", "legacy", 16, "partitions [16]"),
        ("      - {epoch: 2, to: customers, partitions: [1, 1]}\n", "legacy", 16, "distinct"),
        ("      - {epoch: 2, to: customers, when: now}\n", "legacy", 16, "unknown key 'when'"),
        ("      - {epoch: 2, to: customers}\n", "legacy", 10, "its last move of the whole entity"),
        (
            "      - {epoch: 3, to: customers}\n      - {epoch: 2, to: legacy}\n",
            "legacy",
            17,
            "epoch 2 must be a whole number above 3",
        ),
    ],
)
def test_bad_moves_say_where(moves: str, owner: str, line: int, words: str) -> None:
    with pytest.raises(CharterError) as caught:
        model.loads(_with_moves(moves, owner), "charter.yaml")
    found = [p for p in caught.value.problems if words in p.message]
    assert found, [p.message for p in caught.value.problems]
    assert found[0].line == line and found[0].file == "charter.yaml"


# -- epochs on the wire and at the copies ---------------------------------------------------


def _event(epoch: int, owner: str, entity_id: str) -> Event:
    state = {"email": "a@b", "name": "n"}
    return Event(
        "e1", "Customer", entity_id, 4, "updated", ("name",), state, owner, "t", epoch=epoch
    )


def test_the_epoch_travels_only_above_one() -> None:
    one = _event(1, "legacy", "x")
    assert b"epoch" not in one.encode()  # events from before epochs read the same
    assert decode(one.encode()).epoch == 1
    assert decode(_event(3, "customers", "x").encode()).epoch == 3
    with pytest.raises(EventError, match="epoch must be a whole number"):
        decode(_event(3, "c", "x").encode().replace(b'"epoch":3', b'"epoch":"3"'))


def test_copies_take_only_the_current_epochs_events() -> None:
    loaded = model.loads(
        _with_moves("      - {epoch: 2, from: legacy, to: customers, partitions: [0]}\n")
    )
    spec = loaded.entities["Customer"]
    fields = [spec.fields["name"]]
    ids = {partition(i, PARTITIONS): i for i in (str(uuid.uuid4()) for _ in range(400))}
    moved, stayed = ids[0], ids[1]
    assert check(_event(2, "customers", moved), spec, "t", fields)
    assert check(_event(1, "legacy", stayed), spec, "t", fields)
    with pytest.raises(EventError, match=r"of epoch 1, but Customer .* is at epoch 2"):
        check(_event(1, "legacy", moved), spec, "t", fields)
    with pytest.raises(EventError, match="newer than this charter knows"):
        check(_event(2, "customers", stayed), spec, "t", fields)
    with pytest.raises(EventError, match="its source is 'shipping'"):
        check(_event(2, "shipping", moved), spec, "t", fields)


# -- each store's fence ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_each_store_refuses_what_its_fence_says(tmp_path: Path, kind: str) -> None:
    prefix = "tf" + uuid.uuid4().hex[:10]
    url = {
        "memory": f"memory://{prefix}/legacy",
        "sqlite": f"sqlite:///{tmp_path}/legacy.db",
        "postgres": f"{POSTGRES}?schema={prefix}_legacy",
    }[kind]
    text = BASE.replace('"memory://m/l"', f'"{url}"')
    system = System(model.loads(text, tmp_path / "charter.yaml"))
    try:
        ids: list[str] = []
        while {partition(i, PARTITIONS) == 5 for i in ids} != {True, False}:  # one of each
            with system.context("legacy").transaction() as tx:
                ids += [tx.create("Customer", email=f"{len(ids)}@x", name="n").id]
        store = system.store("legacy")
        spec = system.charter.entities["Customer"]
        fenced = next(i for i in ids if partition(i, PARTITIONS) == 5)
        free = next(i for i in ids if partition(i, PARTITIONS) != 5)
        store.fence(spec, [5], 2, "customers", fencing.FENCED)
        with (
            pytest.raises(FencedError, match="partition 5 moved to 'customers' at epoch 2"),
            system.context("legacy").transaction() as tx,
        ):
            tx.update("Customer", fenced, name="no")
        with pytest.raises(FencedError), system.context("legacy").transaction() as tx:
            tx.delete("Customer", fenced)
        with system.context("legacy").transaction() as tx:
            tx.update("Customer", free, name="yes")
        assert [(f.part, f.state) for f in store.fences("Customer")] == [(5, "fenced")]
        store.fence(spec, None, 3, "shipping", fencing.WAITING)  # the whole entity now
        with (
            pytest.raises(FencedError, match="the whole entity is moving here"),
            system.context("legacy").transaction() as tx,
        ):
            tx.update("Customer", free, name="no")
        row = dict(store.fetch(spec, free) or {})
        row["version"] += 5
        store.promote(spec, None, 4, "legacy", [row])  # taken back, the row as it came
        assert (store.fetch(spec, free) or {})["version"] == row["version"]
        with system.context("legacy").transaction() as tx:
            tx.update("Customer", fenced, name="mine again")
        store.unfence(spec, None)
        assert store.fences("Customer") == []
    finally:
        system.close()
        if kind == "postgres":
            import psycopg

            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}_legacy" CASCADE')


def test_the_partition_is_the_same_in_postgres() -> None:
    import psycopg

    schema = "tp" + uuid.uuid4().hex[:10]
    ids = [str(uuid.uuid4()) for _ in range(50)]
    store = open_store(f"{POSTGRES}?schema={schema}", "x")
    try:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        from charter.stores.postgres.fences import _PARTITION

        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            table = ",".join(map(str, fencing.crc32_table()))
            conn.execute(_PARTITION.format(s=f'"{schema}"', table=table, partitions=PARTITIONS))  # type: ignore[arg-type]
            found = [
                conn.execute(f'SELECT "{schema}".charter_partition(%s)', (i,)).fetchone()[0]  # type: ignore[index]
                for i in ids
            ]
        assert found == [partition(i, PARTITIONS) for i in ids]
    finally:
        store.close()
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_check_diff_and_map_know_the_move(sqlite_world: World) -> None:
    world = sqlite_world
    _seed(world.path, 20)
    before = world.path.with_name("before.yaml")
    before.write_text(world.path.read_text())
    args = ["--to", "customers", *[a for p in MOVING for a in ("--partitions", str(p))]]
    killed = _transfer(world, *args, env={KILL_AFTER: "fenced"})
    assert killed.returncode == -signal.SIGKILL
    checked = subprocess.run(
        charter_command("check", "--offline", "-f", str(world.path)), capture_output=True, text=True
    )
    assert "the transfer of Customer stopped at 'fenced'" in checked.stderr
    pipeline = Pipeline(world.path)
    try:
        assert _transfer(world).returncode == 0
    finally:
        pipeline.close()
    checked = subprocess.run(
        charter_command("check", "--offline", "-f", str(world.path)),
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert checked.returncode == 0, checked.stderr
    assert "partitions 0,3,7,12: customers (epoch 2)" in checked.stdout
    assert "stopped at" not in checked.stderr
    diffed = subprocess.run(
        charter_command("diff", "-f", str(world.path), str(before), "--format", "json"),
        capture_output=True,
        text=True,
    )
    assert diffed.returncode == 0, diffed.stdout + diffed.stderr  # informs, breaks nobody
    changes = json.loads(diffed.stdout)["changes"]
    moved = [c for c in changes if c["kind"] == "ownership_moved"]
    assert (
        moved
        and "partitions 0,3,7,12 of Customer moved to customers at epoch 2"
        in (moved[0]["sentence"])
    )
    drawn = subprocess.run(
        charter_command("map", "-f", str(world.path), "--format", "json", "--no-status"),
        capture_output=True,
        text=True,
    )
    nodes = json.loads(drawn.stdout)["nodes"]
    entity = next(n for n in nodes if n["kind"] == "entity")
    assert "partitions 0,3,7,12: customers (epoch 2)" in entity["label"]


def test_apply_gives_the_new_owner_its_grants_and_publish_permissions() -> None:
    from charter import grants, natsauth

    pg = CHARTER.format(
        name="m",
        bus=NATS,
        legacy=f"{POSTGRES}?schema=m_legacy",
        customers=f"{POSTGRES}?schema=m_customers",
        shipping=f"{POSTGRES}?schema=m_shipping",
    )
    marker = "      secret: {type: string, private: true, required: false}\n"
    part = pg.replace(
        marker, marker + "    moves:\n      - {epoch: 2, to: customers, partitions: [1]}\n"
    )
    whole = part.replace("owner: legacy", "owner: customers").replace(
        "partitions: [1]}", "partitions: [1]}\n      - {epoch: 3, to: customers}"
    )
    whole = whole.split("  customer_mirror:")[0]  # the new owner's copy retired

    def writes(text: str) -> dict[str, bool]:
        found = {g.context: g for g in grants.wanted(model.loads(text))}
        return {  # the context's service role may change its `customer` table
            ctx: "UPDATE" in found[ctx].tables[f"m_{ctx}"].get("customer", set())
            for ctx in ("legacy", "customers")
        }

    def publishes(text: str, ctx: str) -> bool:
        block = natsauth.authorization(model.loads(text))
        mine = block.split(f"# {ctx} (team")[1].split("subscribe")[0]
        return "charter.m.Customer.>" in mine

    assert writes(pg) == {"legacy": True, "customers": False}
    assert writes(part) == {"legacy": True, "customers": True}
    assert writes(whole) == {"legacy": False, "customers": True}
    assert [publishes(t, "customers") for t in (pg, part, whole)] == [False, True, True]
    assert [publishes(t, "legacy") for t in (pg, part, whole)] == [True, True, False]


def test_one_transfer_of_an_entity_at_a_time(sqlite_world: World) -> None:
    import fcntl

    from charter.transfer import state_path

    _seed(sqlite_world.path, 5)
    lock = state_path(sqlite_world.path, "Customer").with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        second = _transfer(sqlite_world, "--to", "customers")
    assert second.returncode == 1
    assert "another `charter transfer Customer` is running" in second.stderr
    assert read_state(sqlite_world.path, "Customer") is None


def test_a_rewind_after_a_move_publishes_no_older_epoch(sqlite_world: World) -> None:
    """Healing a bus that lost events (G7) republishes each record's newest event from its
    owner: a record that moved away is not the old owner's to republish, or every copy
    would park it as an older epoch's."""
    from charter.relay import Relay

    ids = _seed(sqlite_world.path, 40)
    pipeline = Pipeline(sqlite_world.path)
    try:
        args = ["--to", "customers", *[a for p in MOVING for a in ("--partitions", str(p))]]
        assert _transfer(sqlite_world, *args).returncode == 0
    finally:
        pipeline.close()
    moved = [i for i in ids if partition(i, PARTITIONS) in MOVING]
    with charter.load(sqlite_world.path) as system:
        owned = system.charter.owned_by("legacy")
        relay = Relay("legacy", system.store("legacy"), system.bus, None, 100, (), owned)
        again = relay.rewind(0)
        assert again == len(ids) - len(moved)
        charter.Runner(system).drain()
        assert parking.parked(system) == []
