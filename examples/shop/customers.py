"""The customers context: the single write store of Customer.

Only this module creates, changes or removes customers. Every other context keeps a
read-only copy of the few fields it needs, fed by the events these transactions
commit together with the change. Updates take the version the caller last saw
(expected_version), so a stale form is refused instead of silently overwriting."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from charter import NotFoundError, Record, System

CONTEXT = "customers"


def hash_password(password: str) -> str:
    """A slow, salted hash. password_hash is private in the charter: it never leaves here."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def register(
    system: System, *, email: str, name: str, password: str, address: str | None = None
) -> Record:
    """A new customer. Raises ConstraintError when the e-mail is taken: only the owner,
    which holds every customer, can promise that."""
    with system.context(CONTEXT).transaction() as tx:
        return tx.create(
            "Customer",
            email=email.strip().lower(),
            name=name.strip(),
            address=address,
            password_hash=hash_password(password),
        )


def get(system: System, customer_id: str) -> Record:
    """The golden record, private fields included (the owner may read them)."""
    customer = system.context(CONTEXT).get("Customer", customer_id)
    if customer is None:
        raise NotFoundError(f"no customer {customer_id}")
    return customer


def check_password(system: System, customer_id: str, password: str) -> bool:
    """Log-in: the only reader of password_hash is its owner."""
    _, salt, digest = str(get(system, customer_id).password_hash).split("$")
    given = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1)
    return hmac.compare_digest(given.hex(), digest)


def change_email(
    system: System, customer_id: str, new_email: str, *, expected_version: int
) -> Record:
    """Raises ConflictError if the customer changed since the caller read version
    `expected_version`, and ConstraintError if another customer uses the address."""
    with system.context(CONTEXT).transaction() as tx:
        return tx.update(
            "Customer", customer_id, expected_version=expected_version, email=new_email.lower()
        )


def rename(system: System, customer_id: str, name: str, *, expected_version: int) -> Record:
    with system.context(CONTEXT).transaction() as tx:
        return tx.update("Customer", customer_id, expected_version=expected_version, name=name)


def move(system: System, customer_id: str, address: str, *, expected_version: int) -> Record:
    with system.context(CONTEXT).transaction() as tx:
        return tx.update(
            "Customer", customer_id, expected_version=expected_version, address=address
        )


def suspend(system: System, customer_id: str, *, expected_version: int) -> Record:
    """Suspended, not deleted: orders and shipping keep seeing who the customer was."""
    with system.context(CONTEXT).transaction() as tx:
        return tx.update(
            "Customer", customer_id, expected_version=expected_version, status="suspended"
        )
