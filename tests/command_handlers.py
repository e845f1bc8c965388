"""The customers' command handlers of the commands tests, registered the way a service
registers its own: in this test process, or in `charter run --handlers
tests.command_handlers:register` (a process of its own, killed and started again)."""

from __future__ import annotations

from typing import Any

from charter.commands import Request
from charter.errors import ValidationError
from charter.owner import Record, Transaction
from charter.system import System
from tests.conftest import edit

COMMANDS = """\
    commands:
      ChangeEmail: {senders: [orders, shipping], fields: [email]}
      AppendNote:  {senders: [orders], fields: {text: {type: string}}}
"""


def with_commands(path: Any) -> None:
    """The shop of the conformance suite, with commands on Customer."""
    edit(
        path,
        "      password_hash: {type: string, private: true}\n",
        "      password_hash: {type: string, private: true}\n" + COMMANDS,
    )


def change_email(tx: Transaction, cmd: Request) -> Record:
    return tx.update("Customer", cmd.id, email=cmd.email)


def append_note(tx: Transaction, cmd: Request) -> dict[str, Any]:
    """Not idempotent: applied twice, the note would be there twice."""
    if cmd.text == "refuse me":
        raise ValidationError("AppendNote: this note is not welcome")
    customer = tx.get("Customer", cmd.id)
    if customer is None:
        raise ValidationError(f"no customer {cmd.id}")
    address = f"{customer.address or ''}{cmd.text};"
    return {"version": tx.update("Customer", cmd.id, address=address).version}


def register(system: System) -> None:
    customers = system.context("customers")
    customers.handles("ChangeEmail")(change_email)
    customers.handles("AppendNote")(append_note)
