"""Read your own writes over HTTP: a Starlette service of the `orders` context, behind
charter.asgi.ReadYourWrites, answers a request carrying `Charter-Token` once its copies hold
those changes; 503 with Retry-After when they do not in time (or the app decides); 400 for
a malformed token. Driven with Starlette's TestClient (httpx)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import charter
from charter.asgi import HEADER, ReadYourWrites
from charter.system import System


def orders_service(system: System, **options: Any) -> Starlette:
    """The orders service: reads its copy of customers; says when a read may be stale."""

    async def customer(request: Request) -> JSONResponse:
        copy = system.context("orders").copy("order_customers")
        record = copy.get(request.path_params["id"])
        stale = getattr(request.state, "charter_stale", None)
        return JSONResponse(
            {
                "version": record.version if record else None,
                "name": record.name if record else None,
                "stale": str(stale) if stale else None,
            }
        )

    app = Starlette(routes=[Route("/customers/{id}", customer)])
    app.add_middleware(ReadYourWrites, system=system, context="orders", **options)
    return app


def create(system: System, name: str = "Ada") -> charter.Record:
    with system.context("customers").transaction() as tx:
        return tx.create("Customer", email=f"{name}@example.org", name=name, password_hash="h")


@pytest.fixture
def client(shop: System) -> Iterator[TestClient]:
    with TestClient(orders_service(shop, timeout=0.3)) as test_client:
        yield test_client


def test_a_request_with_a_token_reads_the_change(shop: System, client: TestClient) -> None:
    with charter.Runner(shop):
        ada = create(shop)
        answer = client.get(f"/customers/{ada.id}", headers={HEADER: ada.token})
        assert answer.status_code == 200 and answer.json()["version"] == 1
        with shop.context("customers").transaction() as tx:
            tx.update("Customer", ada.id, name="Ada L.")
            bob = tx.create("Customer", email="bob@example.org", name="Bob", password_hash="h")
        both = ", ".join(tx.tokens)  # several tokens in one header
        answer = client.get(f"/customers/{ada.id}", headers={HEADER: both})
        assert answer.json() == {"version": 2, "name": "Ada L.", "stale": None}
        answer = client.get(f"/customers/{bob.id}", headers=[(HEADER, t) for t in tx.tokens])
        assert answer.json()["name"] == "Bob"


def test_a_change_the_copy_does_not_get_in_time_is_a_503(shop: System, client: TestClient) -> None:
    ada = create(shop)  # and no projector runs
    answer = client.get(f"/customers/{ada.id}", headers={HEADER: ada.token})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    body = answer.json()
    assert (body["copy"], body["token"], body["window_s"]) == ("order_customers", ada.token, 5.0)
    assert body["lag_events"] == 1  # the owner's store is open in this process
    assert "copy 'order_customers'" in body["error"] and "version 1" in body["error"]


def test_the_app_may_decide_on_a_stale_read_itself(shop: System) -> None:
    ada = create(shop)
    app = orders_service(shop, timeout=0.1, stale="continue")
    with TestClient(app) as client:
        answer = client.get(f"/customers/{ada.id}", headers={HEADER: ada.token})
    assert answer.status_code == 200
    body = answer.json()
    assert body["version"] is None and "does not hold Customer" in body["stale"]


def test_a_malformed_token_is_a_400(shop: System, client: TestClient) -> None:
    for bad, why in [("Customer:x", "not a charter token"), ("Nobody:x:1", "no entity 'Nobody'")]:
        answer = client.get("/customers/x", headers={HEADER: bad})
        assert answer.status_code == 400 and why in answer.json()["error"]


def test_no_token_or_one_this_service_needs_no_wait_for_goes_straight_on(
    shop: System, client: TestClient
) -> None:
    with shop.context("orders").transaction() as tx:  # orders owns Order: current already
        order = tx.create(
            "Order", customer_id="0190a8b2-0000-7000-8000-000000000000", customer_name="A", total=1
        )
    with shop.context("calendar").transaction() as tx:  # orders keeps no Appointment copy
        booked = tx.create(
            "Appointment",
            user_id="0190a8b2-0000-7000-8000-000000000000",
            starts_at="2030-01-01T09:00:00Z",
            ends_at="2030-01-01T10:00:00Z",
        )
    for headers in ({}, {HEADER: order.token}, {HEADER: booked.token}, {HEADER: " "}):
        answer = client.get("/customers/x", headers=headers)
        assert answer.status_code == 200 and answer.json()["version"] is None
