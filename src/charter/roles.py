"""The login roles `charter apply` makes for each context on PostgreSQL, and what each is
for: their names in one place, and the words that explain a refusal to the person whose
process was refused (which role it runs under, what that role may do, which role does
the job it tried)."""

from __future__ import annotations

import re

from charter.model import Charter

SERVICE, PROJECTOR, READER = "service", "projector", "reader"
KINDS = (SERVICE, PROJECTOR, READER)
_SUFFIX = {SERVICE: "", PROJECTOR: "projector", READER: "reader"}


def role_name(system: str, context: str, kind: str = "") -> str:
    """The role of `kind` (service, projector, reader; "" is the service) for `context`."""
    suffix = _SUFFIX.get(kind, kind)
    name = f"{system}_{context}" + (f"_{suffix}" if suffix else "")
    return re.sub(r"[^a-z0-9_]", "_", name.lower())[:63]


def whose(charter: Charter, user: str) -> tuple[str, str] | None:
    """(context, kind) of the role named `user`; None when it is none of charter's."""
    for context in charter.contexts:
        for kind in KINDS:
            if role_name(charter.name, context, kind) == user:
                return context, kind
    return None


def may(charter: Charter, context: str, kind: str) -> str:
    """What the role of `kind` for `context` may do, in a few words."""
    if kind == SERVICE:
        owned = ", ".join(e.name for e in charter.owned_by(context))
        reads = f"reads the tables of '{context}' (its copies too)"
        if not owned:
            return f"{reads}; it writes nothing, as '{context}' owns nothing"
        return f"writes what '{context}' owns ({owned}) and relays it, and {reads}"
    if kind == PROJECTOR:
        copies = ", ".join(c.name for c in charter.copies_in(context)) or "none"
        return (
            f"applies the copies of '{context}' ({copies}): writes them, their checkpoints "
            f"and parked events, and reads the tables of '{context}'"
        )
    return f"reads the tables of '{context}', and writes nothing"


def explain(charter: Charter, context: str, user: str) -> str:
    """Why `user` may have been refused in the store of `context`: what its role is for,
    and which role does what."""
    found = whose(charter, user)
    names = {kind: role_name(charter.name, context, kind) for kind in KINDS}
    jobs = (
        f"in '{context}' the service runs as '{names[SERVICE]}', its projectors as "
        f"'{names[PROJECTOR]}', readers as '{names[READER]}' (README: which role each "
        "process uses)"
    )
    if found is None:
        return f"role '{user}' is none of the roles `charter apply` makes; {jobs}"
    own, kind = found
    text = f"role '{user}' is the {kind} role of context '{own}': it {may(charter, own, kind)}"
    if own != context:
        return f"{text}; it has no rights in the store of context '{context}'"
    return f"{text}; {jobs}"
