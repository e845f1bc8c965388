"""`charter apply` on a NATS bus: the server itself refuses a context that publishes
events of an entity it does not own (G1 on the bus)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

import charter
from charter.buses.nats import BusError, NatsBus
from charter.cli import main
from charter.natsauth import password_variable, user_name
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


def test_a_context_may_publish_only_what_it_owns(tmp_path: Path) -> None:
    urls = {ctx: f"sqlite:///{tmp_path}/{ctx}.db" for ctx in CONTEXTS}
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(name="guarded", bus="nats://127.0.0.1:4222", **urls))
    result = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert result.exit_code == 0, result.output
    block = (tmp_path / ".charter" / "nats-auth.conf").read_text()
    assert '"charter.guarded.Customer.>"' in block
    again = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert again.output.strip() == "nothing to change"

    system = charter.model.load(path).name
    users = [user_name(system, who) for who in ("admin", *CONTEXTS)]
    passwords = {user: "pw" + secrets.token_hex(8) for user in users}  # see natsauth
    env = {password_variable(user): password for user, password in passwords.items()}

    def url(servers: nats_servers.Servers, who: str) -> str:
        user = user_name(system, who)
        return servers.url.replace("nats://", f"nats://{user}:{passwords[user]}@")

    with nats_servers.single(extra=block, env=env) as servers:
        with NatsBus(url(servers, "admin"), system) as admin:  # creates the stream
            assert admin.head("Customer") == 0
        with NatsBus(url(servers, "customers"), system) as owner:
            owner.publish([event("Customer", "c1", "e1")])
        with NatsBus(url(servers, "orders"), system) as orders:
            with pytest.raises(BusError):
                orders.publish([event("Customer", "c2", "forged")])  # refused by the server
            orders.publish([event("Order", "o1", "e2")])  # its own entity is fine
            orders.put_note("fillreq", "Customer", "order_customers", b"{}")  # its copy's
            with pytest.raises(BusError):  # a fill mark is the owner's to publish
                orders.put_note("fill", "Customer", "order_customers", b"{}")
            deadline = time.monotonic() + 10
            got = []  # an empty fetch only means "not yet": ask again
            while not got and time.monotonic() < deadline:
                got = orders.fetch("order_customers", "Customer", 0, 10)  # copies may read
            assert [d.body for d in got] == [event("Customer", "c1", "e1").body]
            orders.ack("order_customers", "Customer", got[-1].position)
            assert orders.backlog("order_customers", "Customer", got[-1].position).events == 0
        with NatsBus(url(servers, "admin"), system) as admin:
            assert admin.backlog("audit", "Customer", 0).events == 1  # the forgery never landed
