"""`charter apply` on a NATS bus: the server itself refuses a context that publishes
events of an entity it does not own (G1 on the bus), and each refusal reaches the process
at once, in the charter's words: not as a timeout seconds later."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

import charter
from charter.buses.nats import POSITION, NatsBus, RefusedError, note_subject
from charter.cli import main
from charter.model import Charter
from charter.natsauth import explainer, password_variable, subject_prefix, user_name
from charter.records import OutboxRow
from tests import nats_servers
from tests.backends import CONTEXTS
from tests.conftest import SHOP


def event(entity: str, entity_id: str, event_id: str) -> OutboxRow:
    body = orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "x",
            "type": f"{entity}.created",
            "subject": entity_id,
            "time": "2026-01-01T00:00:00.000000Z",
            "entityversion": 1,
            "changedfields": "name",
            "data": {"name": "Fake", "email": "f@x", "address": None, "status": "active"},
        }
    ).decode()
    return OutboxRow(
        0,
        event_id,
        entity,
        entity_id,
        1,
        "created",
        ("name",),
        "2026-01-01T00:00:00.000000Z",
        body.encode(),
    )


@dataclass
class Guarded:
    """The shop after `charter apply`, on a nats-server of its own that loads the
    authorization block apply wrote, with a password per user."""

    path: Path
    charter: Charter
    servers: nats_servers.Servers
    passwords: dict[str, str]

    @property
    def system(self) -> str:
        return self.charter.name

    def url(self, who: str) -> str:
        user = user_name(self.system, who)
        return self.servers.url.replace("nats://", f"nats://{user}:{self.passwords[user]}@")

    def bus(self, who: str, explained: bool = True) -> NatsBus:
        """The bus under `who`'s credentials; `explained`: refusals in the charter's words."""
        user = user_name(self.system, who)
        return NatsBus(
            self.url(who), self.system, explainer(self.charter, user) if explained else None
        )

    def as_user(self, who: str) -> Path:
        """The charter, with `who`'s credentials in its bus URL (as a context's process has)."""
        own = self.path.with_name(f"charter-{who}.yaml")
        own.write_text(self.path.read_text().replace("nats://127.0.0.1:4222", self.url(who)))
        return own


@contextmanager
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    urls = {ctx: f"sqlite:///{tmp_path}/{ctx}.db" for ctx in CONTEXTS}
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(name="guarded", bus="nats://127.0.0.1:4222", **urls))
    result = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert result.exit_code == 0, result.output
    block = (tmp_path / ".charter" / "nats-auth.conf").read_text()
    assert '"charter.guarded.Customer.>"' in block
    again = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert again.output.strip() == "nothing to change"

    loaded = charter.model.load(path)
    users = [user_name(loaded.name, who) for who in ("admin", *CONTEXTS)]
    passwords = {user: "pw" + secrets.token_hex(8) for user in users}  # see natsauth
    env = {password_variable(user): password for user, password in passwords.items()}
    with nats_servers.single(extra=block, env=env) as servers:
        yield Guarded(path, loaded, servers, passwords)


def test_a_context_may_publish_only_what_it_owns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its entities' events, its copies' positions and fill requests, its entities' fill
    marks: nothing else, so it cannot make compaction forget what another copy needs. Each
    refusal arrives at once (a RefusedError, not "no acknowledgement within 10s"), naming
    the context, the subject and whose right it is."""
    with guarded(tmp_path) as shop:
        system = shop.system

        def position(copy: str) -> str:
            return note_subject(subject_prefix(system), POSITION, "Customer", copy)

        with shop.bus("admin") as admin:  # creates the stream
            assert admin.head("Customer") == 0
        with shop.bus("customers") as owner:
            owner.publish([event("Customer", "c1", "e1")])
        with shop.bus("orders") as orders:
            with pytest.raises(RefusedError) as forged:
                orders.publish([event("Customer", "c2", "forged")])  # refused by the server
            assert forged.value.subject.startswith("charter.guarded.Customer.")
            assert (
                f"context 'orders' (NATS user 'guarded_orders') may not publish on "
                f"{forged.value.subject}: it does not own Customer (owner: customers, "
                "team customer-team)" in str(forged.value)
            )
            orders.publish([event("Order", "o1", "e2")])  # its own entity is fine
            orders.put_note("fillreq", "Customer", "order_customers", b"{}")  # its copy's
            with pytest.raises(RefusedError, match="a fill of Customer is its owner's"):
                orders.put_note("fill", "Customer", "order_customers", b"{}")  # the owner's
            deadline = time.monotonic() + 10
            got = []  # an empty fetch only means "not yet": ask again
            while not got and time.monotonic() < deadline:
                got = orders.fetch("order_customers", "Customer", 0, 10)  # copies may read
            assert [d.body for d in got] == [event("Customer", "c1", "e1").body]
            orders.ack("order_customers", "Customer", got[-1].position)  # its own position
            assert orders.backlog("order_customers", "Customer", got[-1].position).events == 0
            assert orders.compacted("Customer") == 0  # and may read the compacted note

            # another copy's position is not orders' to write, nor to delete (defect 9)
            with pytest.raises(RefusedError) as other:
                orders._call(orders._publish([("x", position("shipping_customers"), b"{}")]), 30)
            assert (
                "the position of copy 'shipping_customers' is for context 'shipping' to write"
                in str(other.value)
            )
            for request, body in [
                (f"STREAM.PURGE.{orders.stream}", {"filter": position("shipping_customers")}),
                (f"STREAM.MSG.DELETE.{orders.stream}", {"seq": 1}),
                (  # nor any durable consumer (a well-formed request: refused, not wrong)
                    f"CONSUMER.DURABLE.CREATE.{orders.stream}.shipping_customers",
                    {
                        "stream_name": orders.stream,
                        "config": {"durable_name": "shipping_customers", "ack_policy": "all"},
                    },
                ),
            ]:
                with pytest.raises(RefusedError, match="may not"):  # at once, not "no answer"
                    orders._call(orders._api(request, body), 10)
            # compacting is the admin's: said once, then left to the admin's process
            caplog.set_level(logging.WARNING, "charter.buses.nats")
            copies = {"Customer": ["order_customers"], "Order": []}
            assert orders.compact(0, copies) == 0
            assert orders.compact(0, copies) == 0  # not tried again
            said = [r.getMessage() for r in caplog.records if "compact" in r.getMessage()]
            assert len(said) == 1, said
            assert "compaction skipped" in said[0] and "the admin's `charter run`" in said[0]
            assert "no answer" not in said[0] and "acknowledgement" not in said[0]
        with shop.bus("shipping", explained=False) as plain:  # no charter: the subject only
            with pytest.raises(RefusedError) as bare:
                plain.publish([event("Customer", "c3", "forged-too")])
            assert (
                f"NATS user 'guarded_shipping' may not publish on {bare.value.subject} "
                "(a permissions violation)" in str(bare.value)
            )
        with shop.bus("admin") as admin:
            assert admin.backlog("audit", "Customer", 0).events == 1  # the forgery never landed
            assert admin._call(admin._position("Customer", "order_customers"), 10) == 1
            assert admin._call(admin._position("Customer", "shipping_customers"), 10) is None
            copies = {"Customer": ["order_customers", "shipping_customers"], "Order": []}
            assert admin.compact(0, copies) == 1  # Order's event: no copy needs it
            assert admin.backlog("audit", "Customer", 0).events == 1  # shipping's position is
            # unknown, so the event it has not applied stays


def test_a_refused_position_is_said_once_and_not_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy's position is written in the background: when the server refuses it (the
    process runs another context's copy), one line says so, by name, and the bus stops
    trying, so nothing waits for it (compaction keeps what that copy has not applied)."""
    caplog.set_level(logging.WARNING, "charter.buses.nats")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "position" in r.getMessage()]

    with guarded(tmp_path) as shop:
        with shop.bus("admin"):  # creates the stream
            pass
        with shop.bus("orders") as orders:
            orders.ack("shipping_customers", "Customer", 1)  # shipping's copy, not orders'
            deadline = time.monotonic() + 30
            while not said() and time.monotonic() < deadline:
                time.sleep(0.01)
            for position in (2, 3):
                orders.ack("shipping_customers", "Customer", position)
            assert orders.backlog("shipping_customers", "Customer", 3).events == 0  # settles
        assert len(said()) == 1, said()
        assert (
            "copy shipping_customers applied up to 1, and this process may not write" in said()[0]
        )
        assert "is for context 'shipping' to write" in said()[0]
        with shop.bus("admin") as admin:
            assert admin._call(admin._position("Customer", "shipping_customers"), 10) is None


def test_a_context_started_before_the_stream_exists_is_told_who_creates_it(
    tmp_path: Path,
) -> None:
    """Its credentials may not create the stream: it says so at once (not "no answer"
    5 s later, with the real cause in an earlier line), and who creates it."""
    with guarded(tmp_path) as shop:
        with pytest.raises(RefusedError) as early:
            shop.bus("orders")
        text = str(early.value)
        assert "stream CHARTER_GUARDED does not exist yet, and context 'orders'" in text
        assert "only the admin may (NATS user 'guarded_admin')" in text
        assert "then start this one again" in text
        assert "no answer" not in text
        with pytest.raises(RefusedError) as plain:  # without the charter: who, and what to do
            shop.bus("orders", explained=False)
        assert "NATS user 'guarded_orders' may not publish on $JS.API.STREAM.CREATE." in str(
            plain.value
        )
        assert "the admin's credentials create it" in str(plain.value)
        with shop.bus("admin"):  # creates it
            pass
        with shop.bus("orders") as orders:  # and now the context starts
            assert orders.head("Customer") == 0


def test_a_contexts_runner_leaves_compaction_to_the_admin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`charter run --once` under a context's credentials drains its work, then skips
    compaction with one line, instead of failing after a timeout."""
    caplog.set_level(logging.WARNING, "charter.buses.nats")
    with guarded(tmp_path) as shop:
        with shop.bus("admin"):  # creates the stream
            pass
        with shop.bus("orders") as orders:  # a note written twice: compaction has work
            for _ in range(2):
                orders.put_note("fillreq", "Customer", "order_customers", b"{}")
        own = shop.as_user("orders")
        with charter.load(own) as system, system.context("orders").transaction() as tx:
            tx.create("Order", customer_id=str(uuid.uuid4()), customer_name="A", total=1)
        result = CliRunner().invoke(main, ["run", "--once", "--context", "orders", "-f", str(own)])
        assert result.exit_code == 0, result.output
        assert "drained orders" in result.output
        said = [r.getMessage() for r in caplog.records if "compact" in r.getMessage()]
        assert len(said) == 1 and "may not compact" in said[0], said
        assert "compaction is the admin's (NATS user 'guarded_admin')" in said[0]  # the charter's
