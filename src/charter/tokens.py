"""Read-your-writes tokens: what an owner's committed change hands its caller, so that a
read elsewhere can wait until a copy holds that change (`CopyReader.wait_for`).

A token names one record at one version: ``Customer:0190a8b2-…-3f1c:3`` (entity, id,
version, separated by colons). It is plain ASCII with no space, comma or quote, so it fits
an HTTP header, a URL query or a cookie as it is, and several go in one header as a
comma-separated list. It says nothing secret: the id and version are in every event.

A token means something only once its transaction has committed: a record returned inside
the transaction names a version that may still be rolled back (then a wait for it times
out, or is met by a later change that reaches the same version)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from charter.errors import ValidationError
from charter.events import MAX_VERSION

MAX_LENGTH = 200  # far above entity name + UUID + version; keeps headers sane
_ENTITY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ID = re.compile(r"[A-Za-z0-9._~-]+")  # URL-safe, never a colon or a comma
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


@dataclass(frozen=True, slots=True)
class Token:
    """One record at one version: a copy that holds it, or a newer one, or its delete,
    has the change the token came from."""

    entity: str
    id: str
    version: int

    def __str__(self) -> str:
        return f"{self.entity}:{self.id}:{self.version}"


def token(entity: str, entity_id: str, version: int) -> str:
    """The text of the token of `entity_id` at `version`."""
    return f"{entity}:{entity_id}:{version}"


def parse(text: str | Token) -> Token:
    """The token `text` stands for; ValidationError saying what is wrong with a bad one."""
    if isinstance(text, Token):
        return text
    if not isinstance(text, str):
        raise ValidationError(f"a token is text like 'Customer:<id>:3', got {type(text).__name__}")
    text = text.strip()
    shown = text if len(text) <= 60 else text[:57] + "..."
    expected = "expected '<Entity>:<id>:<version>', as a committed record's .token gives"
    if len(text) > MAX_LENGTH:
        raise ValidationError(f"not a charter token ({len(text)} characters): {expected}")
    entity, _, rest = text.partition(":")
    entity_id, _, version = rest.rpartition(":")
    if not _ENTITY.fullmatch(entity) or not entity_id or not version:
        raise ValidationError(f"not a charter token: {shown!r}; {expected}")
    if not _ID.fullmatch(entity_id):
        raise ValidationError(
            f"not a charter token: {shown!r}; its id may hold letters, digits and . _ ~ - only"
        )
    if not _VERSION.fullmatch(version) or int(version) > MAX_VERSION:
        raise ValidationError(
            f"not a charter token: {shown!r}; its version must be a whole number from 1 "
            f"to {MAX_VERSION}"
        )
    return Token(entity, entity_id, int(version))


def parse_list(header: str) -> list[Token]:
    """The tokens of a comma-separated list (one HTTP header holding several)."""
    return [parse(part) for part in header.split(",") if part.strip()]
