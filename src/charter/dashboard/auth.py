"""Who may act: the dashboard shows everything to whoever can reach it, but a retry or a
drop of parked events needs the token `charter serve` printed at start (or was given with
--token). The token travels in an `Authorization: Bearer` header, which a page of another
site cannot send without the browser asking this server first (it never agrees): so a
link or a form elsewhere cannot act in a viewer's name. Started --read-only, nothing may."""

from __future__ import annotations

import hmac
import secrets


def new_token() -> str:
    """A token nobody can guess: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


class Guard:
    """The token actions need; None: the dashboard is read-only for everyone."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    @property
    def read_only(self) -> bool:
        return self.token is None

    def refusal(self, authorization: str | None) -> tuple[int, str] | None:
        """Why a request with this Authorization header may not act (HTTP status, words),
        or None when it may."""
        if self.token is None:
            return 403, "this dashboard was started --read-only: no action is possible"
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return 401, "actions need the token `charter serve` printed (Authorization: Bearer)"
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return 403, "wrong token: use the one `charter serve` printed at start"
        return None
