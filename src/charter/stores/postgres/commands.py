"""Commands handled by the owner (charter.commands), on PostgreSQL: the table that keeps
each idempotency key's outcome, and the statements that read one and record one inside
an owner transaction (its primary key makes a second record of one key fail at commit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from charter.records import RecordedCommand

TABLE = """
CREATE TABLE IF NOT EXISTS {s}.charter_command (
    key text PRIMARY KEY, name text NOT NULL, result bytea NOT NULL, time text NOT NULL
);
"""
NAME = "charter_command"
SELECT, INSERT = "command:select", "command:insert"


def statements(table: Callable[[str], str]) -> dict[str, str]:
    """The statements of the command table, by their keys in the store's compiled SQL."""
    name = table(NAME)
    return {
        SELECT: f"SELECT key, name, result, time FROM {name} WHERE key = %s",
        INSERT: f"INSERT INTO {name} (key, name, result, time) VALUES (%s, %s, %s, %s)",
    }


def params(command: RecordedCommand) -> tuple[Any, ...]:
    return command.key, command.name, command.result, command.time


def recorded(row: tuple[Any, ...] | None) -> RecordedCommand | None:
    return RecordedCommand(row[0], row[1], bytes(row[2]), row[3]) if row else None
