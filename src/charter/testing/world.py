"""The small charter and the events the contract suites use: one owner, one copy."""

from __future__ import annotations

from charter import model, values
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


def charter(name: str = "contract", person_name: str = "") -> Charter:
    """The suites' charter; `person_name` replaces the declaration of Person.name."""
    text = CHARTER.format(name=name)
    if person_name:
        text = text.replace("name:  {type: string}", person_name, 1)
    return model.loads(text)


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
