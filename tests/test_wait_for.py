"""Reading your own writes: an owner's committed change hands back a token; a reader of a
copy, in this process or another, waits with `copy.wait_for(token)` until the copy holds
that version, a newer one or the delete, or is told (StaleReadError) how far behind the
copy is. On every backend: across two processes where the backend is shared by processes,
in threads of one process everywhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import charter
from charter.errors import ValidationError
from charter.events import Event
from charter.records import Parked
from charter.stores import waiting
from charter.system import System
from charter.tokens import Token, parse
from tests.conftest import edit

# A writer in its own process. Commands on stdin, one per line; answers on stdout, one per
# line: `create` → the token of a new customer, `update ID` → of a change of its address
# (a field order_customers does not keep), `delete ID` → of its delete, `run` → starts
# the relays and projectors in this process (so the copy is applied here, not where the
# reader waits) and answers `running`.
WRITER = textwrap.dedent(
    """
    import sys
    import charter

    system = charter.load(sys.argv[1])
    customers = system.context("customers")
    runner = None
    for line in sys.stdin:
        command, *args = line.split()
        with customers.transaction() as tx:
            if command == "create":
                answer = tx.create(
                    "Customer", email="ada@example.org", name="Ada", password_hash="h"
                ).token
            elif command == "update":
                answer = tx.update("Customer", args[0], address="12 Far Away Street").token
            elif command == "delete":
                answer = tx.delete("Customer", args[0])
            else:
                answer = "running"
        if command == "run":
            runner = charter.Runner(system).start()
        print(answer, flush=True)
    if runner is not None:
        runner.stop()
    system.close()
    """
)


class Writer:
    """The writer process, asked one command at a time."""

    def __init__(self, shop_file: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(shop_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer, f"the writer gave no answer to {command!r} (exit {self.proc.poll()})"
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0


@pytest.fixture
def writer(shop_file: Path) -> Iterator[Writer]:
    process = Writer(shop_file)
    yield process
    if process.proc.poll() is None:
        process.close()


@pytest.mark.processes
def test_wait_for_a_change_made_and_applied_in_another_process(
    shop: System, writer: Writer
) -> None:
    orders = shop.context("orders").copy("order_customers")
    created = writer.ask("create")
    entity_id = parse(created).id
    shop.context("customers").get("Customer", entity_id)  # the owner's store open here too

    # Nothing applies the copy yet: the wait runs out, and says how far behind the copy is.
    with pytest.raises(charter.StaleReadError) as stale:
        orders.wait_for(created, timeout=0.2)
    error = stale.value
    assert (error.copy, error.token, error.held) == ("order_customers", created, 0)
    assert error.lag_events == 1 and error.lag_s is not None and error.lag_s >= 0
    assert (error.window_s, error.waited_s) == (5.0, 0.2)
    text = str(error)
    assert "copy 'order_customers'" in text and f"{entity_id} version 1" in text
    assert "holds no version of it" in text and "1 event" in text and "window: 5 s" in text

    # The other process applies it (its runner), and the wait here sees it.
    assert writer.ask("run") == "running"
    record = orders.wait_for(created, timeout=60)
    assert record is not None and (record.id, record.version, record.name) == (
        entity_id,
        1,
        "Ada",
    )

    # A change of a field this copy does not keep still moves the copy's version.
    moved = writer.ask(f"update {entity_id}")
    assert parse(moved).version == 2
    record = orders.wait_for(moved, timeout=60)
    assert record is not None and (record.version, record.name) == (2, "Ada")
    shipping = shop.context("shipping").copy("shipping_customers").wait_for(moved, timeout=60)
    assert shipping is not None and shipping.address == "12 Far Away Street"

    # A delete: the copy no longer holds the record.
    gone = writer.ask(f"delete {entity_id}")
    assert parse(gone).version == 3
    assert orders.wait_for(gone, timeout=60) is None
    assert orders.get(entity_id) is None
    assert orders.wait_for(created, timeout=0) is None  # an older version: met by the delete
    writer.close()


def test_wait_for_changes_applied_by_a_runner_in_this_process(shop: System) -> None:
    customers = shop.context("customers")
    orders = shop.context("orders").copy("order_customers")
    with charter.Runner(shop):
        with customers.transaction() as tx:
            ada = tx.create("Customer", email="ada@example.org", name="Ada", password_hash="h")
        record = orders.wait_for(ada.token)
        assert record is not None and record.version == 1
        with customers.transaction() as tx:
            tx.update("Customer", ada.id, password_hash="new")  # private: no public field
        (changed,) = tx.tokens
        assert changed == f"Customer:{ada.id}:2"
        record = orders.wait_for(changed)
        assert record is not None and record.version == 2
        with customers.transaction() as tx:
            gone = tx.delete("Customer", ada.id)
        assert orders.wait_for(Token("Customer", ada.id, 3)) is None
        assert gone == f"Customer:{ada.id}:3" and tx.tokens == [gone]


def test_the_default_timeout_is_the_copys_window(shop_file: Path) -> None:
    edit(shop_file, "window: 5s", "window: 150ms")
    with charter.load(shop_file) as system:
        with system.context("customers").transaction() as tx:
            ada = tx.create("Customer", email="ada@example.org", name="Ada", password_hash="h")
        with pytest.raises(charter.StaleReadError) as stale:
            system.context("orders").copy("order_customers").wait_for(ada.token)
    assert (stale.value.window_s, stale.value.waited_s) == (0.15, 0.15)
    assert stale.value.lag_events == 1  # the owner's store is open here: its outbox counts


def test_a_change_not_yet_relayed_names_the_owners_relay(shop_file: Path) -> None:
    """A reader that has not opened the owner's store sees nothing on the bus: the change
    is still in the owner's outbox, so what to look at is the owner's relay."""
    with charter.load(shop_file) as owner, owner.context("customers").transaction() as tx:
        ada = tx.create("Customer", email="ada@example.org", name="Ada", password_hash="h")
    with charter.load(shop_file) as reader, pytest.raises(charter.StaleReadError) as stale:
        reader.context("orders").copy("order_customers").wait_for(ada.token, timeout=0.1)
    assert stale.value.lag_events == 0
    assert "Is the relay of 'customers' running (`charter run --context customers`)?" in str(
        stale.value
    )


def test_a_transactions_tokens_are_given_after_it_commits(shop: System) -> None:
    with shop.context("customers").transaction() as tx:
        first = tx.create("Customer", email="a@example.org", name="A", password_hash="h")
        second = tx.create("Customer", email="b@example.org", name="B", password_hash="h")
        tx.update("Customer", first.id, name="A2")
        tx.update("Customer", first.id, name="A3")
        with pytest.raises(charter.Error, match="valid only after it commits"):
            tx.tokens  # noqa: B018
    assert tx.tokens == [f"Customer:{first.id}:3", second.token]
    customers = shop.context("customers")
    with pytest.raises(charter.ConflictError), customers.transaction() as failed:  # rolled back
        failed.update("Customer", second.id, name="B2", expected_version=7)
    with pytest.raises(charter.Error, match="valid only after it commits"):
        failed.tokens  # noqa: B018


def test_a_token_for_another_entity_or_a_bad_one_is_refused(shop: System) -> None:
    orders = shop.context("orders").copy("order_customers")
    with pytest.raises(
        ValidationError, match="is for Order; copy 'order_customers' is of Customer"
    ):
        orders.wait_for("Order:0190a8b2-0000-7000-8000-000000000000:1")
    for bad, why in [
        ("", "expected '<Entity>:<id>:<version>'"),
        ("Customer:abc", "expected '<Entity>:<id>:<version>'"),
        ("Customer:abc:0", "version must be a whole number from 1"),
        ("Customer:abc:x", "version must be a whole number from 1"),
        ("Customer:a b:1", "letters, digits and . _ ~ - only"),
        ("customer-1:abc:1", "expected '<Entity>:<id>:<version>'"),
        ("Customer:" + "x" * 300 + ":1", "311 characters"),
    ]:
        with pytest.raises(ValidationError, match=why):
            orders.wait_for(bad)
    with pytest.raises(ValidationError, match="timeout must be a number of seconds"):
        orders.wait_for("Customer:abc:1", timeout=-1)


def test_a_token_is_short_header_safe_text_and_reads_back() -> None:
    text = "Customer:0190a8b2-3cfa-7254-b01e-f817eacdfacf:12"
    token = parse(text)
    assert token == Token("Customer", "0190a8b2-3cfa-7254-b01e-f817eacdfacf", 12)
    assert str(token) == text and parse(token) is token
    assert len(text) < 60 and all(c.isalnum() or c in ":-" for c in text)


def test_an_apply_in_this_process_hands_the_wait_its_version_without_a_read() -> None:
    """The applying thread wakes the wait and gives it the version: the wait reads the
    store once (before waiting), not again after the apply."""
    changes = waiting.Changes()
    reads: list[int] = []
    returned: list[int] = []

    def held() -> int:
        reads.append(1)
        return 0  # what the store said before the apply

    with changes.wanting("a", 2) as wanted:

        def wait() -> None:
            returned.append(waiting.wait_applied(held, 2, 30.0, changes.watch(), wanted))

        thread = threading.Thread(target=wait)
        thread.start()

        def reads_reach(count: int) -> None:
            deadline = time.monotonic() + 30
            while len(reads) < count and time.monotonic() < deadline:
                time.sleep(0.001)

        reads_reach(1)  # the wait has read once, and waits
        changes.bump({"b": 9})  # another record: the wait reads again
        reads_reach(2)
        changes.bump({"a": 1})  # an older version: not yet, read again
        reads_reach(3)
        changes.bump({"a": 3})
        thread.join(30)
    assert returned == [3] and len(reads) == 3
    assert not changes.waiting  # the wait is forgotten once it returned


def test_an_apply_hands_over_only_what_it_took() -> None:
    def event(entity_id: str, version: int) -> Event:
        return Event("e", "Customer", entity_id, version, "updated", (), {}, "customers", "t")

    items = [(5, event("a", 1)), (6, event("b", 1)), (7, event("a", 2)), (8, event("c", 4))]
    refused = Parked("k", "c", 4, "e", 8, "a value the table refuses", b"", "t")
    # position 5 lies at the checkpoint before the apply: another applier's, maybe parked
    assert waiting.taken(items, [refused], start=5) == {"b": 1, "a": 2}
