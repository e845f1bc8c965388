"""A small day in the shop, end to end, using the four context modules.

    python examples/shop/run.py                # moves the events itself (a Runner in threads)
    python examples/shop/run.py --no-runner    # leaves that to `charter run` in another terminal

Each context only writes what it owns and reads only its own copies; the runner
(relays and projectors) is the only thing that carries data between them."""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

import appointments
import customers
import orders
import shipping

import charter
from charter import ConflictError, ConstraintError, System

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--file", type=Path, default=HERE / "charter.yaml")
    parser.add_argument(
        "--no-runner",
        action="store_true",
        help="do not move events in this process; a `charter run -f ...` elsewhere does",
    )
    args = parser.parse_args(argv)
    with charter.load(args.file) as system:
        runner = None if args.no_runner else charter.Runner(system).start()
        try:
            ada = scenario(system, lambda: wait_until_synced(system, runner))
        finally:
            if runner is not None:
                runner.stop()
    print(
        "\nscenario complete. Look at it with:\n"
        f"  charter status -f {args.file}\n"
        f"  charter history -f {args.file} Customer {ada}"
    )
    return 0


def wait_until_synced(system: System, runner: charter.Runner | None, timeout: float = 30) -> None:
    """Copies are eventually consistent: a step that reads a copy right after a write
    waits for it, as a real service would wait for (or tolerate) its window."""
    if runner is not None:
        synced = runner.wait_until_synced(timeout)
    else:
        deadline = time.monotonic() + timeout
        while not (synced := all(row.synced for row in charter.status(system))):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    if not synced:
        raise SystemExit(
            f"the copies did not catch up within {timeout:g} s: is `charter run -f "
            f"{system.charter.path}` running?"
        )


def scenario(system: System, synced: Callable[[], None]) -> str:
    """The day's events; returns Ada's id, whose history is worth a look."""
    tag = secrets.token_hex(2)  # e-mails are unique, and this script may run more than once

    step("customers: Ada and Grace sign up (customers is the only writer of Customer)")
    ada = customers.register(
        system, email=f"ada+{tag}@example.com", name="Ada Lovelace", password="analytical"
    )
    grace = customers.register(
        system,
        email=f"grace+{tag}@example.com",
        name="Grace Hopper",
        password="cobol",
        address="1 Harbour View, Arlington",
    )
    for who in (ada, grace):
        print(f"  {who.name:<13} {who.id}  {who.email}  version {who.version}")
    print(f"  Ada's password checks out: {customers.check_password(system, ada.id, 'analytical')}")

    step("orders: Ada orders; her name comes from the order_customers copy, as a snapshot")
    synced()
    order = orders.place_order(system, ada.id, 42.5)
    print(f"  order {order.id} for {order.customer_name!r}, {order.total:.2f} EUR")

    step("customers: Ada marries and changes her e-mail; a stale form is refused")
    ada = customers.rename(system, ada.id, "Ada King", expected_version=ada.version)
    try:
        customers.change_email(system, ada.id, f"ada.king+{tag}@example.com", expected_version=1)
    except ConflictError as exc:
        print(f"  refused: {exc}")
        fresh = customers.get(system, ada.id)
        ada = customers.change_email(
            system, ada.id, f"ada.king+{tag}@example.com", expected_version=fresh.version
        )
        print(f"  re-read version {fresh.version}, retried: now version {ada.version}")

    step("orders: the confirmation goes to the current e-mail, with the name she ordered under")
    synced()
    print("  " + orders.confirmation(system, order.id).replace("\n", "\n  "))

    step("calendar: Ada books 10:00; 10:15 overlaps and is refused; the next free slot is taken")
    ten = dt.datetime.combine(dt.date.today() + dt.timedelta(days=1), dt.time(10), dt.UTC)
    first = appointments.book(system, ada.id, ten)
    print(f"  booked {first.starts_at:%H:%M}-{first.ends_at:%H:%M}")
    try:
        appointments.book(system, ada.id, ten + dt.timedelta(minutes=15))
    except ConstraintError as exc:
        print(f"  refused: {exc}")
    later = appointments.book_first_free(system, ada.id, ten + dt.timedelta(minutes=15))
    print(f"  first free slot: {later.starts_at:%H:%M}-{later.ends_at:%H:%M}")

    step("shipping: labels come from the shipping_customers copy, within its contract")
    print(f"  copy within its 1m window: {shipping.within_contract(system)}")
    print(f"  label: {shipping.label(system, grace.id)}")
    try:
        shipping.label(system, ada.id)
    except shipping.CannotShip as exc:
        print(f"  cannot ship to Ada: {exc}")
    ada = customers.move(
        system, ada.id, "12 St James's Square, London", expected_version=ada.version
    )
    synced()
    print(f"  after Ada moved: {shipping.label(system, ada.id)}")

    step("customers: Grace is suspended; every copy converges on the owner's state")
    grace = customers.suspend(system, grace.id, expected_version=grace.version)
    synced()
    for row in charter.status(system):
        behind = f"{row.lag_events} events behind"
        print(f"  {row.copy:<19} {row.state:<5} {behind}, window {row.window_s:g}s")
    return str(ada.id)


def step(text: str) -> None:
    print(f"\n== {text}")


if __name__ == "__main__":
    sys.exit(main())
