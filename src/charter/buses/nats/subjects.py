"""Names on the NATS bus: the bus URL, the stream of a charter, subject tokens, and
where notes live (outside every entity's subjects)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from charter.lanes import PARTITIONS
from charter.visibility import split

NOTES = "_note"  # the subject token under which notes live
COPIES = "_copy"  # the subject token under which copies' topics live (charter.visibility)
POSITION = "position"  # the note of what a copy has applied, per (entity, copy)
COMPACTED = "compacted"  # the note of how far compaction went, per entity
EVERY_COPY = "_"  # the copy token of notes about an entity as a whole
COMMANDS = "_cmd"  # the subject token under which commands to owners wait (in the stream)
REPLIES = "charter_reply"  # answers to commands: core NATS, outside the stream


@dataclass(frozen=True, slots=True)
class NatsUrl:
    """A parsed ``nats://`` bus URL."""

    servers: tuple[str, ...]
    user: str | None
    password: str | None
    replicas: int
    partitions: int


def parse_url(url: str) -> NatsUrl:
    """Read ``nats://[user:password@]host:port[,host:port...][?replicas=N&partitions=M]``."""
    if not url.startswith("nats://"):
        raise ValueError(f"'{url}' is not a NATS bus URL (expected nats://host:port)")
    rest = url.removeprefix("nats://")
    netloc, _, query = rest.partition("?")
    netloc = netloc.rstrip("/")
    user = password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        name, _, secret = credentials.partition(":")
        user, password = unquote(name), unquote(secret)
    hosts = [h.strip() for h in netloc.split(",") if h.strip()]
    if not hosts:
        raise ValueError(f"NATS bus URL '{url}': no server (expected nats://host:port)")
    options = {"replicas": 1, "partitions": PARTITIONS}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in options:
            raise ValueError(f"NATS bus URL: unknown option '{key}' (known: {', '.join(options)})")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"NATS bus URL: {key} must be a whole number ≥ 1, got '{value}'")
        options[key] = int(value)
    if options["replicas"] > 5:
        raise ValueError("NATS bus URL: replicas must be at most 5 (JetStream's limit)")
    servers = tuple(h if ":" in h else f"{h}:4222" for h in hosts)
    return NatsUrl(
        tuple(f"nats://{h}" for h in servers),
        user,
        password,
        options["replicas"],
        options["partitions"],
    )


def stream_name(system: str) -> str:
    """The stream of a charter: ``CHARTER_<SYSTEM>``."""
    return "CHARTER_" + re.sub(r"[^A-Z0-9]", "_", system.upper())


def token(name: str) -> str:
    """A name made safe as one subject token or consumer name."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if not safe:
        raise ValueError("an empty name cannot be a NATS subject token")
    return safe


def inbox_prefix(user: str | None) -> str:
    """Where the replies to a connection of `user` arrive: under its name, so that a
    context's user may subscribe to its own replies only (charter.natsauth)."""
    return f"_INBOX.{token(user)}" if user else "_INBOX"


def topic_filter(prefix: str, topic: str) -> str:
    """The subjects of a topic: ``<prefix>.<Entity>.>`` for an entity's,
    ``<prefix>._copy.<Entity>.<copy>.>`` for a copy's; the last token is the partition."""
    entity, copy = split(topic)
    if copy is None:
        return f"{prefix}.{token(entity)}.>"
    return f"{prefix}.{COPIES}.{token(entity)}.{token(copy)}.>"


def topic_note(prefix: str, kind: str, topic: str) -> str:
    """A note about a topic as a whole (its compacted mark): the entity's ``_`` for an
    entity's topic, the copy's for a copy's."""
    entity, copy = split(topic)
    return note_subject(prefix, kind, entity, copy or EVERY_COPY)


def note_subject(prefix: str, kind: str, entity: str, copy: str) -> str:
    """Where a note lives (charter.fills), outside every entity's subjects, so readers and
    compaction never see notes. `copy` may be the wildcard ``>``."""
    return f"{prefix}.{NOTES}.{kind}.{token(entity)}.{copy if copy == '>' else token(copy)}"


def command_subject(prefix: str, owner: str, command: str) -> str:
    """Where a command for the context `owner` waits: in the stream, outside every entity's
    subjects (entity names cannot start with '_'). `command` may be the wildcard ``*``."""
    return f"{prefix}.{COMMANDS}.{token(owner)}.{command if command == '*' else token(command)}"


def reply_prefix(system: str, sender: str) -> str:
    """Where the answers to the commands the context `sender` sends arrive (plus one token)."""
    return f"{REPLIES}.{token(system)}.{token(sender)}"


def command_consumer(owner: str) -> str:
    """The durable consumer through which the context `owner` takes its commands."""
    return f"cmd-{token(owner)}"
