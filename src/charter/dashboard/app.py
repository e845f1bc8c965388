"""The dashboard's routes (Starlette): one page with its script and style, the JSON it
polls, the map as SVG, the actions on parked events (POST, with the token), `/metrics`.

| route | what |
|---|---|
| `GET /` | the page (plain HTML; `dashboard.js` polls, no build step) |
| `GET /api/status` | every copy against its window, as last measured (every 0.5 s) |
| `GET /api/info` | the charter: contexts, entities, copies; whether actions are possible |
| `GET /api/session` | whether the request's token may act |
| `GET /map.svg` | the map, coloured by the copies' states (501 without Graphviz's dot) |
| `GET /api/copies/{copy}/latency` | its latency minute by minute over the last hour |
| `GET /api/parked[?copy=]` | parked events, with their reason |
| `POST /api/parked/retry`, `/api/parked/drop` | `{"copy": …, "id": …}`, with the token |
| `GET /api/story?entity=&id=` | one record's story: its owner's versions, each copy's |
| `GET /api/findings` | the latest audit findings (`--audit`), else 404 |
| `GET /metrics` | Prometheus |

A POST names the copy and a record or event id (no id: all of the copy's parked events),
and carries `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from importlib import resources
from typing import Any

import orjson

from charter.dashboard.auth import Guard
from charter.dashboard.findings import Findings
from charter.dashboard.watch import Watcher
from charter.errors import Error, MissingExtraError, NotFoundError, ValidationError
from charter.system import System

try:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
except ModuleNotFoundError as missing:
    raise MissingExtraError(
        f"charter serve needs Starlette and uvicorn ({missing.name} is not installed here): "
        "pip install 'charter[web]'",
        extra="web",
        package="starlette",
    ) from None

log = logging.getLogger("charter.dashboard")
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request], Awaitable[Response]]


def _files() -> dict[str, bytes]:
    folder = resources.files("charter.dashboard") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


def json_response(doc: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code, media_type="application/json")


def refused(status_code: int, message: str) -> Response:
    return json_response({"error": message}, status_code)


def answers(handler: Handler) -> Handler:
    """charter's errors as JSON with a status that says whose fault: 404 what is not
    there, 400 a bad request, 503 a store or the bus that did not answer."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except NotFoundError as exc:
            return refused(404, str(exc))
        except ValidationError as exc:
            return refused(400, str(exc))
        except MissingExtraError as exc:
            return refused(501, str(exc))
        except Error as exc:
            return refused(503, str(exc))

    return wrapped


class _Secured:
    """Every answer with the headers above: no script but the page's own, no framing,
    nothing cached (it is live), no referrer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (k.lower().encode(), v.encode())
                    for k, v in HEADERS.items()
                    if k.lower().encode() not in have
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    system: System,
    token: str | None = None,
    *,
    findings: Findings | None = None,
    refresh_s: float | None = None,
    hosts: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard of `system`: actions need `token` (None: read-only); `findings`, the
    audit's; `hosts`, the Host headers it answers (None: any)."""
    watcher = Watcher(system, findings, **({} if refresh_s is None else {"refresh_s": refresh_s}))
    guard = Guard(token)
    files = _files()
    charter = system.charter

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if findings is not None:
            findings.start()
        watcher.open()
        await watcher.refresh()
        task = asyncio.create_task(watcher.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if findings is not None:
                findings.stop()
            watcher.close()

    def static(name: str) -> Handler:
        async def page(_request: Request) -> Response:
            return Response(files[name], media_type=STATIC[name])

        return page

    async def no_icon(_request: Request) -> Response:
        return Response(status_code=204)

    async def status_json(_request: Request) -> Response:
        snap = watcher.snapshot
        if snap is None:
            return refused(503, "the copies are being measured for the first time")
        return Response(snap.body, media_type="application/json")

    def about() -> dict[str, Any]:
        return {
            "charter": charter.name,
            "path": str(charter.path),
            "contexts": [{"name": c.name, "team": c.team} for c in charter.contexts.values()],
            "entities": [{"name": e.name, "owner": e.owner} for e in charter.entities.values()],
            "copies": [
                {"name": c.name, "of": c.of, "in": c.context, "window_s": c.window_s}
                for c in charter.copies.values()
            ],
            "read_only": guard.read_only,
            "audit": findings is not None,
            "refresh_s": watcher.refresh_s,
        }

    async def info(_request: Request) -> Response:
        return json_response(about())

    async def index(_request: Request) -> Response:
        """The page, with what it shows first inside it (the charter, the copies as last
        measured: a JSON block, which no script policy runs) and the map's address, so
        that the browser fetches the map with the script instead of after it."""
        snap, drawn = watcher.snapshot, watcher.drawn
        boot = b'{"info":' + orjson.dumps(about())
        boot += b',"status":' + (snap.body if snap is not None else b"null") + b"}"
        page = files["index.html"].replace(b"__BOOT__", boot.replace(b"</", b"<\\/"))
        source = b""
        if drawn.svg is not None:
            source = (
                b' src="/map.svg?k='
                + drawn.key.encode()
                + b'" data-key="'
                + drawn.key.encode()
                + b'"'
            )
        page = page.replace(b" data-src", source, 1)
        return Response(page, media_type=STATIC["index.html"])

    async def session(request: Request) -> Response:
        refusal = guard.refusal(request.headers.get("authorization"))
        return json_response({"actions": refusal is None, "why": refusal[1] if refusal else ""})

    async def map_svg(request: Request) -> Response:
        drawn = watcher.drawn
        if drawn.svg is None:
            missing = "Graphviz" in drawn.error or "dot" in drawn.error
            return refused(501 if missing and drawn.key else 503, drawn.error)
        headers = {"X-Map-Key": drawn.key}
        if request.query_params.get("k") == drawn.key:  # this key's map never changes
            headers["Cache-Control"] = "private, max-age=86400, immutable"
        return Response(drawn.svg, media_type="image/svg+xml", headers=headers)

    @answers
    async def copy_latency(request: Request) -> Response:
        return json_response(await watcher.call(watcher.latency, request.path_params["copy"]))

    @answers
    async def parked(request: Request) -> Response:
        return json_response(await watcher.call(watcher.parked, request.query_params.get("copy")))

    def action(kind: str) -> Handler:
        @answers
        async def act(request: Request) -> Response:
            refusal = guard.refusal(request.headers.get("authorization"))
            if refusal is not None:
                status_code, message = refusal
                headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else {}
                return Response(
                    orjson.dumps({"error": message}),
                    status_code,
                    headers,
                    media_type="application/json",
                )
            try:
                doc = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                return refused(400, 'the body must be JSON: {"copy": "...", "id": "..."}')
            copy, ident = (doc.get("copy"), doc.get("id")) if isinstance(doc, dict) else (0, 0)
            if not isinstance(copy, str) or not (ident is None or isinstance(ident, str)):
                return refused(400, 'name the copy (an id if you like): {"copy": "…", "id": "…"}')
            fn = watcher.retry if kind == "retry" else watcher.drop
            who = request.client.host if request.client else "?"
            log.info("dashboard: %s of copy %s (%s) asked from %s", kind, copy, ident or "all", who)
            outcomes = await watcher.call(fn, copy, ident)
            await watcher.refresh()  # the page sees the change at its next poll
            return json_response({"action": kind, "copy": copy, "id": ident, "events": outcomes})

        return act

    @answers
    async def story(request: Request) -> Response:
        entity, ident = request.query_params.get("entity"), request.query_params.get("id")
        if not entity or not ident:
            return refused(400, "give an entity and an id: /api/story?entity=Customer&id=…")
        return json_response(await watcher.call(watcher.story, entity, ident.strip()))

    async def audit_findings(_request: Request) -> Response:
        if findings is None:
            return refused(404, "no audit findings: start `charter serve --audit LOG`")
        return json_response(findings.latest())

    @answers
    async def prometheus(_request: Request) -> Response:
        text = await watcher.call(watcher.metrics)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/", index),
        Route("/dashboard.js", static("dashboard.js")),
        Route("/dashboard.css", static("dashboard.css")),
        Route("/favicon.ico", no_icon),
        Route("/api/status", status_json),
        Route("/api/info", info),
        Route("/api/session", session),
        Route("/map.svg", map_svg),
        Route("/api/copies/{copy}/latency", copy_latency),
        Route("/api/parked", parked),
        Route("/api/parked/retry", action("retry"), methods=["POST"]),
        Route("/api/parked/drop", action("drop"), methods=["POST"]),
        Route("/api/story", story),
        Route("/api/findings", audit_findings),
        Route("/metrics", prometheus),
    ]
    middleware = [Middleware(_Secured)]
    if hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts)))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.watcher = watcher
    return app
