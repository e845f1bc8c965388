"""The charter as an AsyncAPI 3.0 document: where the events travel (the bus, as servers),
a channel per entity with its events' real address, each event's CloudEvents attributes
and its public state, one `send` operation by the entity's owner and one `receive`
operation by each copy, describing only the fields that copy keeps.

The events are structured CloudEvents (the whole event is the JSON body, charter.events),
so the attributes are the payload's properties and the entity's public state is its
`data`; the content type says so. Private fields never leave their owner and are not here."""

from __future__ import annotations

from typing import Any

from charter import urls
from charter.boundary import driver
from charter.events import OPS
from charter.exports.fields import VERSION as VERSION_SCHEMA
from charter.exports.fields import data_schema, fields_schema
from charter.exports.render import beside, fingerprint, seconds
from charter.model import Charter, Copy, Entity

VERSION = "3.0.0"
CONTENT_TYPE = "application/cloudevents+json"  # structured mode: attributes and data in one body


def document(charter: Charter) -> dict[str, Any]:
    """The AsyncAPI document of `charter`'s events."""
    bus = _Bus(charter)
    doc: dict[str, Any] = {
        "asyncapi": VERSION,
        "info": {
            "title": charter.name,
            "version": "",
            "description": (
                f"The events of charter '{charter.name}': the owner of each entity publishes "
                "every change of a record as a CloudEvent carrying its full public state; "
                "each copy receives the fields it keeps. Written by `charter export asyncapi`."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": bus.servers(),
        "channels": {},
        "operations": {},
        "components": {"schemas": {}, "messages": {}},
    }
    channels, operations = doc["channels"], doc["operations"]
    schemas, messages = doc["components"]["schemas"], doc["components"]["messages"]
    for entity in charter.entities.values():
        owner = charter.contexts[entity.owner]
        schemas[entity.name] = data_schema(entity)
        schemas[f"{entity.name}.event"] = _envelope(entity, f"#/components/schemas/{entity.name}")
        messages[entity.name] = _message(
            entity,
            bus,
            f"{entity.name}.event",
            f"A change of one {entity.name}, as '{entity.owner}' publishes it.",
        )
        channel: dict[str, Any] = {
            "address": bus.address(entity),
            "title": entity.name,
            "description": f"Every {entity.name} change, published only by its owner "
            f"'{entity.owner}' (team {owner.team})" + (f": {entity.why}" if entity.why else ""),
            "messages": {entity.name: {"$ref": f"#/components/messages/{entity.name}"}},
        }
        if bus.parameters:
            channel["parameters"] = bus.parameters
        channels[entity.name] = channel
        operations[f"{entity.name}.send"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{entity.name}"},
            "title": f"{entity.owner} publishes {entity.name}",
            "description": f"'{entity.owner}' owns {entity.name}: no other context may "
            "publish on this channel.",
            "messages": [{"$ref": f"#/channels/{entity.name}/messages/{entity.name}"}],
            "x-charter-context": entity.owner,
            "x-charter-team": owner.team,
        }
        for copy in charter.copies_of(entity.name):
            key = f"copy.{copy.name}"  # an entity's name has no dot: the two never meet
            schemas[key] = _view(entity, copy)
            schemas[f"{key}.event"] = _envelope(entity, f"#/components/schemas/{key}")
            messages[key] = _message(
                entity,
                bus,
                f"{key}.event",
                f"A change of one {entity.name}, as copy '{copy.name}' reads it: only the "
                f"fields it keeps ({', '.join(copy.fields)}).",
            )
            channel["messages"][key] = {"$ref": f"#/components/messages/{key}"}
            operations[f"{copy.name}.receive"] = _receive(charter, entity, copy)
    doc["info"]["version"] = fingerprint(doc)
    return doc


def _view(entity: Entity, copy: Copy) -> dict[str, Any]:
    """The event data as a copy depends on it: its fields, among others it ignores."""
    return fields_schema(
        entity,
        copy.fields,
        closed=False,
        description=f"the fields of {entity.name} that copy '{copy.name}' keeps",
    )


def _receive(charter: Charter, entity: Entity, copy: Copy) -> dict[str, Any]:
    context = charter.contexts[copy.context]
    breaks = f" Beyond it: {copy.breaks}." if copy.breaks else ""
    return {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{entity.name}"},
        "title": f"{copy.context} keeps copy {copy.name}",
        "description": f"'{copy.context}' applies each change to its read-only copy "
        f"'{copy.name}' ({', '.join(copy.fields)}) within {copy.window_s:g} s of the owner's "
        f"commit.{breaks}",
        "messages": [{"$ref": f"#/channels/{entity.name}/messages/copy.{copy.name}"}],
        "x-charter-context": copy.context,
        "x-charter-team": context.team,
        "x-charter-window-seconds": seconds(copy.window_s),
        "x-charter-breaks": copy.breaks,
    }


def _message(entity: Entity, bus: _Bus, schema: str, summary: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": f"{entity.name}.event",
        "title": f"{entity.name} changed",
        "summary": summary,
        "contentType": CONTENT_TYPE,
        "payload": {"$ref": f"#/components/schemas/{schema}"},
    }
    if bus.headers:
        message["headers"] = bus.headers
    return message


def _envelope(entity: Entity, data: str) -> dict[str, Any]:
    """The CloudEvent itself, with `data` as `data` says (charter.events.Event)."""
    return {
        "type": "object",
        "description": f"a CloudEvents 1.0 event about one {entity.name}",
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "format": "uuid", "description": "the event's id"},
            "source": {"const": entity.owner, "description": "the owner, its only publisher"},
            "type": {"enum": [f"{entity.name}.{op}" for op in OPS]},
            "subject": {"type": "string", "format": "uuid", "description": "the record's id"},
            "time": {"type": "string", "format": "date-time", "description": "commit time"},
            "datacontenttype": {"const": "application/json"},
            "entityversion": {**VERSION_SCHEMA, "description": "the record's version after it"},
            "changedfields": {
                "type": "string",
                "description": "the public fields the change set, comma-separated",
            },
            "actor": {"type": "string", "description": "who made the change, when known"},
            "data": {
                "description": "the record's public state after the change; null once deleted",
                "oneOf": [{"$ref": data}, {"type": "null"}],
            },
        },
        "required": [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "entityversion",
            "changedfields",
            "data",
        ],
    }


class _Bus:
    """What the bus URL says about servers, addresses and headers."""

    def __init__(self, charter: Charter) -> None:
        self.charter = charter
        self.url = charter.bus
        self.parameters: dict[str, Any] = {}
        self.headers: dict[str, Any] = {}
        if self.url.startswith(urls.NATS):
            with driver("the bus's NATS subjects", self.url):
                from charter.buses.nats import parse_url, stream_name, token
                from charter.natsauth import subject_prefix
            self._nats = parse_url(self.url)
            self._stream = stream_name(charter.name)
            self._prefix, self._token = subject_prefix(charter.name), token
            self.parameters = {
                "partition": {
                    "description": "the record's partition: crc32 of its id modulo "
                    f"{self._nats.partitions}, so one record's events stay in order",
                    "enum": [str(p) for p in range(self._nats.partitions)],
                }
            }
            self.headers = {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {
                        "type": "string",
                        "description": "the event's id (with a suffix when a fill publishes "
                        "it again, charter.fills): JetStream drops a duplicate",
                    }
                },
                "required": ["Nats-Msg-Id"],
            }

    def address(self, entity: Entity) -> str:
        if self.url.startswith(urls.NATS):
            return f"{self._prefix}.{self._token(entity.name)}.{{partition}}"
        return entity.name  # the entity column of the SQLite bus's events; memory's key

    def servers(self) -> dict[str, Any]:
        if self.url.startswith(urls.NATS):
            hosts = [s.removeprefix("nats://") for s in self._nats.servers]
            return {
                ("nats" if len(hosts) == 1 else f"nats-{n}"): {
                    "host": host,
                    "protocol": "nats",
                    "title": "NATS JetStream",
                    "description": f"stream {self._stream}, {self._nats.replicas} "
                    f"replica{'s' if self._nats.replicas != 1 else ''}, "
                    f"{self._nats.partitions} partitions per entity",
                }
                for n, host in enumerate(hosts, 1)
            }
        if self.url.startswith(urls.SQLITE):
            return {
                "sqlite": {
                    "host": "localhost",
                    "pathname": self._path(self.url[len(urls.SQLITE) :].split("?", 1)[0]),
                    "protocol": "sqlite",
                    "title": "the embedded bus",
                    "description": "one SQLite file that every process on this machine shares",
                }
            }
        return {
            "memory": {
                "host": self.url.removeprefix("memory://") or "memory",
                "protocol": "memory",
                "title": "the in-memory bus",
                "description": "lives in one process (tests and simulation)",
            }
        }

    def _path(self, path: str) -> str:
        """A file beside the charter as a path relative to it, so the document is the same
        on every machine that checks the charter out."""
        return beside(self.charter, path)
