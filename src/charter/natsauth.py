"""Ownership enforced by the NATS server itself (G1): an authorization block in which
each context may publish only on the subjects of the entities it owns, and only the notes
that are its to write: its copies' positions and fill requests, and the fill marks of
the entities it owns (charter.fills). So no context can make compaction forget what
another's copy has not applied (buses.nats). Reading is open to every context: the
stream, direct gets (notes, heads) and consumers of its own making to read through.

Passwords are not in the file: each user's password is read by nats-server from an
environment variable (`$SHOP_CUSTOMERS_NATS_PASSWORD`), so the file can be committed.
nats-server reads the variable's value as a config value: let it start with a letter
(a value like `9e4…` would be read as a number and refused).

Reading. Each context subscribes only to its own replies (its inbox, under its user's
name), so no context overhears what the server hands another. Under contract visibility
(any entity of the charter under it) reading is closed too: a context may read (with
consumers of its own making, and the newest message of a subject) only the topics of its
own copies (charter.visibility; a copy of an entity under public visibility reads the
entity's), everything about what it owns, and its copies' notes; nobody but the admin may
read a stored message by its sequence, which would reach any subject. (A consumer, once
made, is pulled from by its name, which the server does not tell other contexts.)

Who does what only the admin may: the admin's credentials create the stream (the first
charter process to open the bus with them, e.g. `charter run` or `charter status` with
the admin's user in the bus URL) and compact it (the admin's `charter run`; a context's
skips compaction, saying so once). A refusal reaches a process at once, in the charter's
words (`refusal`): which context, which subject, whose right it is."""

from __future__ import annotations

import re
from collections.abc import Callable

from charter.buses.nats import COMPACTED, NOTES, POSITION, note_subject, stream_name, token
from charter.buses.nats.subjects import (
    COMMANDS,
    COPIES,
    command_consumer,
    command_subject,
    inbox_prefix,
    reply_prefix,
    topic_filter,
    topic_note,
)
from charter.model import CONTRACT, Charter
from charter.records import FILL_MARK as MARK
from charter.records import FILL_REQUEST as REQUEST
from charter.visibility import topic_of


def subject_prefix(system: str) -> str:
    return f"charter.{token(system)}"


def user_name(system: str, context: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", f"{system}_{context}".lower())


def password_variable(user: str) -> str:
    return f"{user.upper()}_NATS_PASSWORD"


def refusal(charter: Charter, user: str | None, subject: str) -> str | None:
    """Why the NATS user `user` may not publish on `subject` under the block below, said
    in the charter's words; None when the block does not say (then the bus says only that
    the server refused)."""
    system, stream = charter.name, stream_name(charter.name)
    admin = user_name(system, "admin")
    context = next((c for c in charter.contexts if user_name(system, c) == user), None)
    if context is None:
        return None
    who = f"context '{context}' (NATS user '{user}')"
    api = subject.split(".")
    if subject.startswith(("$JS.API.STREAM.CREATE.", "$JS.API.STREAM.UPDATE.")):
        return (
            f"{who} may not create or change stream {stream}: only the admin may "
            f"(NATS user '{admin}'). Start one charter process with the admin's user in its "
            "bus URL (e.g. `charter run` or `charter status`): it creates the stream"
        )
    if subject.startswith(("$JS.API.STREAM.PURGE.", "$JS.API.STREAM.MSG.DELETE.")) or (
        api[2:4] == [NOTES, COMPACTED]
    ):
        return (
            f"{who} may not compact stream {stream} ({subject}): compaction is the admin's "
            f"(NATS user '{admin}'); the admin's `charter run` compacts"
        )
    read = _read(stream, subject)
    if read is not None:
        return (
            f"{who} may not read {read}: the charter puts entities under contract "
            "visibility, and a context reads only its own copies' topics, what it owns and "
            f"its copies' notes (it may read: {', '.join(readable(charter, context))})"
        )
    if subject.startswith("$"):
        return None
    prefix = subject_prefix(system).split(".")
    if api[:2] != prefix or len(api) < 3:
        return None
    if api[2] == COMMANDS and len(api) == 5:
        command = next((c for c in charter.commands.values() if token(c.name) == api[4]), None)
        if command is None or token(command.owner) != api[3]:
            return None
        return (
            f"{who} may not send {command.name} to '{command.owner}' ({subject}): the charter "
            f"lets only {', '.join(command.senders)} send it"
        )
    entities = {token(name): entity for name, entity in charter.entities.items()}
    if api[2] == NOTES and len(api) == 6:
        kind, entity, copy = api[3], entities.get(api[4]), api[5]
        if entity is None:
            return None
        owner = f"owner: {entity.owner}, team {charter.contexts[entity.owner].team}"
        if kind == MARK:
            return (
                f"{who} may not publish on {subject}: a fill of {entity.name} is its owner's "
                f"to publish ({owner})"
            )
        keeper = next((c for c in charter.copies_of(entity.name) if token(c.name) == copy), None)
        if kind in (POSITION, REQUEST) and keeper is not None:
            what = "position" if kind == POSITION else "fill request"
            return (
                f"{who} may not publish on {subject}: the {what} of copy '{keeper.name}' is "
                f"for context '{keeper.context}' to write, which keeps it"
            )
        return None
    entity = entities.get(api[3] if api[2] == COPIES and len(api) > 3 else api[2])
    if entity is None:
        return None
    team = charter.contexts[entity.owner].team
    return (
        f"{who} may not publish on {subject}: it does not own {entity.name} (owner: "
        f"{entity.owner}, team {team}); run the relay of '{entity.owner}' under its own user "
        f"(`charter run --context {entity.owner}` as '{user_name(system, entity.owner)}')"
    )


def _read(stream: str, subject: str) -> str | None:
    """What a refused request asked to read: a filter, a subject, or stored messages."""
    for api, skip in (
        (f"$JS.API.CONSUMER.CREATE.{stream}.", 1),
        (f"$JS.API.DIRECT.GET.{stream}.", 0),
    ):
        if subject.startswith(api):
            return subject.removeprefix(api).split(".", skip)[-1]
    if subject.startswith(f"$JS.API.STREAM.MSG.GET.{stream}"):
        return f"stored messages of {stream} by their sequence (the admin's)"
    return None


def readable(charter: Charter, context: str) -> list[str]:
    """The subjects a context may read under contract visibility: its copies' topics (an
    entity's under public visibility), what it owns (its entities' topics and their copies'),
    the notes about what it owns and about its copies."""
    prefix = subject_prefix(charter.name)
    subjects: list[str] = []
    for entity in charter.owned_by(context):
        subjects += [topic_filter(prefix, entity.name), f"{prefix}.{COPIES}.{token(entity.name)}.>"]
        subjects.append(note_subject(prefix, "*", entity.name, ">"))
    for copy in charter.copies_in(context):
        topic = topic_of(charter.entities[copy.of], copy)
        subjects.append(topic_filter(prefix, topic))
        subjects += [
            note_subject(prefix, "*", copy.of, copy.name),
            topic_note(prefix, COMPACTED, topic),
        ]
    return list(dict.fromkeys(subjects))


def _reads(charter: Charter, context: str) -> list[str]:
    """The JetStream API subjects a context may use to read: everything, or under contract
    visibility only what `readable` names."""
    stream = stream_name(charter.name)
    common = [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        # (consumer names cannot be told apart by subject permissions; deleting another
        # process's reader only makes it read from a new one)
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
    ]
    if not any(e.visibility == CONTRACT for e in charter.entities.values()):
        return [
            *common,
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",  # its readers: ephemeral, no acks
        ]
    subjects = readable(charter, context)
    events = [s for s in subjects if f".{NOTES}." not in s]
    return (
        common
        + [f"$JS.API.CONSUMER.CREATE.{stream}.*.{s}" for s in events]
        + [f"$JS.API.DIRECT.GET.{stream}.{s}" for s in subjects]
    )


def explainer(charter: Charter, user: str | None) -> Callable[[str], str | None]:
    """`refusal` for one user, as NatsBus takes it (`explain`)."""
    return lambda subject: refusal(charter, user, subject)


def _commands(charter: Charter, context: str) -> list[str]:
    """What `context` publishes for commands (charter.commands): the commands it may send;
    for those it handles, the answers to their senders and the acks of its own consumer."""
    prefix, stream = subject_prefix(charter.name), stream_name(charter.name)
    sent = [
        command_subject(prefix, c.owner, c.name)
        for c in charter.commands.values()
        if context in c.senders
    ]
    handled = [c for c in charter.commands.values() if c.owner == context]
    senders = sorted({sender for c in handled for sender in c.senders})
    answers = [f"{reply_prefix(charter.name, sender)}.*" for sender in senders]
    consumer = command_consumer(context)
    acks = [  # its own durable consumer of the commands it handles: made, read, acked
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]
    return sent + answers + (acks if handled else [])


def _list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def authorization(charter: Charter) -> str:
    """The `authorization { … }` block for nats-server, one user per context plus an admin."""
    prefix = subject_prefix(charter.name)
    # Compaction (STREAM.PURGE, the compacted note), deleting messages and creating the
    # stream stay with the admin user: a context can neither erase nor reshape what others
    # rely on.
    admin = user_name(charter.name, "admin")
    lines = [
        f"# Generated by `charter apply` for the charter '{charter.name}'. Do not edit by hand.",
        "# Each password comes from the environment variable named; start it with a letter.",
        "authorization {",
        "  users = [",
        f'    {{user: "{admin}", password: ${password_variable(admin)}}},',
    ]
    for context in charter.contexts.values():
        user = user_name(charter.name, context.name)
        owned = [
            subject
            for e in charter.owned_by(context.name)
            for subject in (
                f"{prefix}.{token(e.name)}.>",
                f"{prefix}.{COPIES}.{token(e.name)}.>",  # its copies' topics (visibility)
                note_subject(prefix, MARK, e.name, ">"),
            )
        ]
        owned += [  # fill requests and positions, for its own copies
            note_subject(prefix, kind, c.of, c.name)
            for c in charter.copies_in(context.name)
            for kind in (REQUEST, POSITION)
        ]
        owned += _commands(charter, context.name)
        sends = any(context.name in c.senders for c in charter.commands.values())
        answers = [f"{reply_prefix(charter.name, context.name)}.*"] if sends else []
        lines += [
            f"    # {context.name} (team {context.team}) publishes only what it owns",
            f'    {{user: "{user}", password: ${password_variable(user)}, permissions: {{',
            f"      publish: {{allow: {_list(owned + _reads(charter, context.name))}}},",
            f"      subscribe: {{allow: {_list([f'{inbox_prefix(user)}.>', *answers])}}}    }}}},",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
