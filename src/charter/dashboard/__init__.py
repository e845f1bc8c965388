"""`charter serve`: the live dashboard (`pip install 'charter[web]'`: Starlette, uvicorn).
The map with the copies' live states; every copy against its window (lag, staleness,
p50/p99, the share within the window, a latency plot over the last hour); parked events,
retried or dropped with the token; one record's story; the latest audit findings; and
`/metrics` for Prometheus. Plain HTML and a small script, served by the app: no build.

`watch` measures (one thread reads the stores; one snapshot answers every viewer),
`story` tells one record's, `findings` keeps the audit's, `auth` guards the actions, `app`
routes, `scrape` is `/metrics`, `serve` runs it on uvicorn."""

from __future__ import annotations

from charter.dashboard.app import create_app
from charter.dashboard.serve import serve

__all__ = ["create_app", "serve"]
