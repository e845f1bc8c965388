"""One module per transport, each behind the protocol in `base`."""

from __future__ import annotations

import importlib
import socket
from typing import TYPE_CHECKING

from charter import urls
from charter.boundary import Guard, driver, guard
from charter.buses.base import Bus
from charter.errors import UnavailableError
from charter.records import Delivery

if TYPE_CHECKING:
    from charter.model import Charter

PROBE_TIMEOUT_S = 1.0


def open_bus(url: str, system: str, charter: Charter | None = None) -> Bus:
    """The bus for a URL from the charter of the system named `system`. Its methods raise
    charter errors only (charter.boundary); the URL was checked by the charter's loader.
    With the `charter`, a NATS bus says a refusal of its server in the charter's words."""
    what = "the bus"
    if url.startswith("sqlite:///"):
        from charter.buses.sqlite import SQLiteBus

        return guard(SQLiteBus(url), what, url, Bus)
    if url.startswith("nats://"):
        with driver(what, url):
            from charter import natsauth
            from charter.buses.nats import NatsBus, parse_url

        _probe(url, what)
        explain = natsauth.explainer(charter, parse_url(url).user) if charter else None
        return guard(NatsBus(url, system, explain), what, url, Bus)
    if url.startswith("memory://"):
        from charter.buses.memory import MemoryBus

        return guard(MemoryBus(url), what, url, Bus)
    raise ValueError(f"no bus for '{url}' (supported: sqlite:///…, nats://…, memory://…)")


def check_driver(url: str) -> None:
    """What open_bus raises when the bus needs a driver not installed here
    (MissingExtraError, naming the extra), found without connecting: for `charter check`."""
    if url.startswith(urls.NATS):
        with driver("the bus", url):
            importlib.import_module("charter.buses.nats")


def _probe(url: str, what: str) -> None:
    """Fail at once, clearly, when no server of a NATS URL accepts a connection (the
    client would try again for seconds, logging each refusal)."""
    netloc = url[len(urls.NATS) :].partition("?")[0].rstrip("/").rpartition("@")[2]
    hosts = [h.strip() for h in netloc.split(",") if h.strip()]
    reasons = []
    for host in hosts:
        name, _, port = host.partition(":")
        try:
            socket.create_connection((name, int(port or 4222)), PROBE_TIMEOUT_S).close()
            return
        except OSError as exc:
            reasons.append(f"{host}: {exc.strerror or exc}")
    where = ", ".join(hosts)
    raise UnavailableError(
        f"{Guard(what, url)!r}: cannot connect to NATS ({'; '.join(reasons).lower()}); "
        f"is nats-server running at {where}?",
        what=what,
        server=where,
    )


__all__ = ["Bus", "Delivery", "check_driver", "open_bus"]
