"""The small charter and the events the contract suites use: one owner, one copy."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager

from charter import clock, model, values
from charter.events import Event
from charter.ids import uuid7
from charter.model import Charter
from charter.records import OutboxRow

CHARTER = """\
charter: 1
name: {name}
bus: "memory://unused/bus"
contexts:
  people:  {{team: people-team, store: "memory://unused/people"}}
  mailing: {{team: mail-team,   store: "memory://unused/mailing"}}
entities:
  Person:
    owner: people
    fields:
      email: {{type: string, unique: true}}
      name:  {{type: string}}
      note:  {{type: string, required: false, private: true}}
  Booking:
    owner: people
    fields:
      room:  {{type: string}}
      start: {{type: timestamp}}
      end:   {{type: timestamp}}
    constraints:
      - no_overlap: {{per: [room], range: [start, end]}}
copies:
  mail_people:
    in: mailing
    of: Person
    fields: [name, email]
    window: 5s
"""


def charter(name: str = "contract", person_name: str = "", more: str = "") -> Charter:
    """The suites' charter; `person_name` replaces the declaration of Person.name, `more`
    is added at the top level (say, "latency_retention: 10m")."""
    text = CHARTER.format(name=name)
    if person_name:
        text = text.replace("name:  {type: string}", person_name, 1)
    return model.loads(text + (more + "\n" if more else ""))


def event(
    entity_id: str, version: int, op: str = "updated", name: str = "Ada", **extra: object
) -> Event:
    """An event of Person `entity_id` at `version`, as its owner would publish it."""
    state = None if op == "deleted" else {"name": name, "email": f"{name.lower()}@example.com"}
    if state is not None:
        state.update(extra)  # type: ignore[arg-type]
    changed = () if state is None else tuple(state)
    return Event(
        uuid7(), "Person", entity_id, version, op, changed, state, "people", values.now_text()
    )


def outbox_row(event: Event, seq: int = 0) -> OutboxRow:
    return OutboxRow.of(event, event.encode(), seq)


class Clock:
    """charter's wall clock (charter.clock) standing still until a test moves it, so that
    what depends on the time (latencies, minutes) is exact; monotonic time and randomness
    stay real. Single-threaded use, as charter.clock.installed says."""

    START_NS = 1_767_225_630 * 10**9  # 2026-01-01T00:00:30Z: half a minute into a minute

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now_ns = start_ns
        self._randbits = clock.randbits

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1e9)

    @property
    def minute(self) -> int:
        return self.now_ns // 60_000_000_000

    def installed(self) -> AbstractContextManager[None]:
        source = clock.Source(lambda: self.now_ns, time.monotonic, self._randbits)
        return clock.installed(source)
