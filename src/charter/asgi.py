"""Read your own writes over HTTP (`pip install 'charter[web]'`): an ASGI middleware for
Starlette and FastAPI services that, before a request reaches the app, waits until this
service's copies hold the changes named in its `Charter-Token` header.

The owner's service answers a write with the tokens of what it changed (a record's
`.token`, `tx.tokens`), say in a `Charter-Token` response header; the client sends them
back on its next request, to any service. There, for each token, the middleware waits on
every copy the service's context keeps of the token's entity (`CopyReader.wait_for`), in
a worker thread, so the event loop goes on serving. A token for an entity the context owns
(its reads are current already) or keeps no copy of needs no wait. Several tokens go in
one header, comma-separated, or in several headers.

When a copy does not get the change in time (by default its window; `timeout` caps the
whole wait), the answer is 503 with `Retry-After` and a JSON body naming the copy, its lag
and its window; with `stale="continue"` the request goes on instead, and the app finds the
StaleReadError in `request.state.charter_stale` and decides. A malformed token is a 400."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from charter.errors import MissingExtraError, StaleReadError, ValidationError
from charter.system import CopyReader, System
from charter.tokens import Token, parse_list

try:
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers
    from starlette.responses import JSONResponse
except ModuleNotFoundError as missing:
    raise MissingExtraError(
        f"charter.asgi needs Starlette ({missing.name} is not installed here): "
        "pip install 'charter[web]'",
        extra="web",
        package="starlette",
    ) from None

HEADER = "Charter-Token"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ReadYourWrites:
    """`app.add_middleware(ReadYourWrites, system=system, context="orders")`: requests
    carrying tokens reach the app once the copies of `context` hold those changes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        system: System,
        context: str,
        header: str = HEADER,
        timeout: float | None = None,
        retry_after: int = 1,
        stale: Literal["respond", "continue"] = "respond",
    ) -> None:
        if stale not in ("respond", "continue"):
            raise ValueError(f"stale must be 'respond' or 'continue', got {stale!r}")
        self.app, self.system = app, system
        self.context = system.context(context)  # an unknown name fails here, with a hint
        self.header, self.timeout = header.lower(), timeout
        self.retry_after, self.stale = retry_after, stale

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        text = ",".join(Headers(scope=scope).getlist(self.header))
        try:
            waits = self._waits(parse_list(text)) if text.strip() else []
        except ValidationError as exc:
            await JSONResponse({"error": str(exc)}, status_code=400)(scope, receive, send)
            return
        if waits:
            try:
                await run_in_threadpool(self._wait, waits)
            except StaleReadError as exc:
                if self.stale == "respond":
                    await self._unavailable(exc)(scope, receive, send)
                    return
                scope.setdefault("state", {})["charter_stale"] = exc
        await self.app(scope, receive, send)

    def _waits(self, tokens: list[Token]) -> list[tuple[CopyReader, Token]]:
        """Each copy of this context to wait on, with its token."""
        charter = self.system.charter
        waits = []
        for token in tokens:
            entity = charter.entities.get(token.entity)
            if entity is None:
                raise ValidationError(f"token {token}: no entity '{token.entity}' in the charter")
            for copy in charter.copies_of(token.entity):
                if copy.context == self.context.name:
                    waits.append((self.context.copy(copy.name), token))
        return waits

    def _wait(self, waits: list[tuple[CopyReader, Token]]) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        for copy, token in waits:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            copy.wait_for(token, left)

    def _unavailable(self, exc: StaleReadError) -> JSONResponse:
        body = {
            "error": str(exc),
            "copy": exc.copy,
            "token": exc.token,
            "lag_events": exc.lag_events,
            "lag_s": exc.lag_s,
            "window_s": exc.window_s,
        }
        headers = {"Retry-After": str(self.retry_after)}
        return JSONResponse(body, status_code=503, headers=headers)
