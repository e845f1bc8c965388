"""The calendar context: owns Appointment, with a no_overlap rule per person.

(This module is not called calendar.py: next to run.py that name would hide the
standard library's calendar module, which the standard library itself imports.)

The owner checks the rule inside its own transaction, so two bookings racing for
the same hour can never both succeed; the loser gets a ConstraintError, which is
an answer to act on (offer another time), not a failure."""

from __future__ import annotations

import datetime as dt

from charter import ConstraintError, Record, System

CONTEXT = "calendar"


def book(system: System, user_id: str, starts_at: dt.datetime, minutes: int = 30) -> Record:
    """Raises ConstraintError when the person already has an appointment then."""
    with system.context(CONTEXT).transaction() as tx:
        return tx.create(
            "Appointment",
            user_id=user_id,
            starts_at=starts_at,
            ends_at=starts_at + dt.timedelta(minutes=minutes),
        )


def book_first_free(
    system: System,
    user_id: str,
    wanted: dt.datetime,
    minutes: int = 30,
    *,
    tries: int = 8,
) -> Record:
    """The wanted time, or the next free one in steps of `minutes`."""
    refusal: ConstraintError | None = None
    for step in range(tries):
        try:
            return book(system, user_id, wanted + dt.timedelta(minutes=minutes * step), minutes)
        except ConstraintError as exc:
            refusal = exc
    assert refusal is not None
    raise refusal


def cancel(system: System, appointment_id: str) -> None:
    with system.context(CONTEXT).transaction() as tx:
        tx.delete("Appointment", appointment_id)
