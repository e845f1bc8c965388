"""NatsBus: the Bus on NATS JetStream (the package's docstring says how it works). The
class is built in layers, each a module: core (the loop thread, refusals), stream (the
API calls), publish, compaction (position notes, notes, purge) and readers; here, what
it keeps, opening the connection, and closing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import threading
from collections.abc import Callable

import nats
import orjson
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from charter.buses.nats.commands import _Commands, _Queue
from charter.buses.nats.core import API_TIMEOUT_S, BusError, log
from charter.buses.nats.publish import _Batch
from charter.buses.nats.readers import _Pull
from charter.buses.nats.subjects import inbox_prefix, parse_url, stream_name, token

# How nats-server refuses a publish (nats-py lower-cases the whole text: match it so)
_VIOLATION = re.compile(r'permissions violation for publish to "?([^"\s]+)', re.IGNORECASE)


class NatsBus(_Commands):
    """Events in one JetStream stream per charter; per copy, a note of what it has applied
    and, in each process running it, one ephemeral consumer to read."""

    def __init__(
        self, url: str, system: str, explain: Callable[[str], str | None] | None = None
    ) -> None:
        """`explain` says, in the charter's words, why this process may not publish on a
        subject the server refused (charter.natsauth.explainer); None: the subject only."""
        self.url = url
        self._explain = explain
        # lower-cased subject -> what waits on it, told at once when the server refuses it
        self._watchers: dict[str, dict[Callable[[str], None], str]] = {}
        self._said: set[str] = set()  # refusals nobody waited for, logged once each
        self._may_compact = True
        self._direct = False  # True once stored messages may not be read by sequence
        self.system = system
        self.options = parse_url(url)
        self.partitions = self.options.partitions
        self.stream = stream_name(system)
        self._prefix = f"charter.{token(system)}"
        self._api_prefix = "$JS.API"
        self._closed = False
        self._nc: Client | None = None
        self._acks: dict[str, _Batch] = {}  # reply subject -> the batch awaiting it
        self._ack_inbox = ""
        self._ack_ids = itertools.count(1)
        self._readers: dict[tuple[str, str], _Pull] = {}
        self._ack_wanted: dict[tuple[str, str], int] = {}  # what copies asked to acknowledge
        self._ack_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._ack_refused: set[tuple[str, str]] = set()  # positions these credentials may not write
        self._hurry: asyncio.Event | None = None  # set: acknowledge now, do not wait to gather
        self._chores: set[asyncio.Task[None]] = set()  # deletes nobody waits for
        self._queues: dict[str, _Queue] = {}  # owner -> its commands' consumer, pulled here
        self._answers: dict[str, set[asyncio.Future[bytes]]] = {}
        self._reply_subs: dict[str, Subscription] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, name=f"charter-nats:{system}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._open(), 3 * API_TIMEOUT_S + 2 * len(self.options.servers) + 10)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- connection

    async def _open(self) -> None:
        self._hurry = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            refused = _VIOLATION.search(str(exc))
            if refused is None:
                log.warning("NATS bus %s: %s", self.stream, exc)
            elif not self._refuse(refused.group(1)) and refused.group(1) not in self._said:
                self._said.add(refused.group(1))  # nobody waits for it: say it here, once
                log.warning("NATS bus %s: %s", self.stream, exc)

        async def on_disconnect() -> None:
            # what was sent on the lost connection will not be acknowledged: say so now
            for batch in set(self._acks.values()):
                batch.lost = True
                batch.done.set()
            if not self._closed:
                log.info("NATS bus %s: disconnected, reconnecting", self.stream)

        async def on_reconnect() -> None:
            url = self._nc.connected_url if self._nc else None
            log.info("NATS bus %s: reconnected to %s", self.stream, url.netloc if url else "?")

        connecting = nats.connect(
            servers=list(self.options.servers),
            user=self.options.user,
            password=self.options.password,
            name=f"charter:{self.system}",
            inbox_prefix=inbox_prefix(self.options.user),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            ping_interval=5,
            max_outstanding_pings=2,
            pending_size=32 * 1024 * 1024,
            drain_timeout=2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        wait = 3.0 + 2.0 * len(self.options.servers)
        try:
            self._nc = await asyncio.wait_for(connecting, wait)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise BusError(
                f"cannot connect to NATS at {', '.join(self.options.servers)} within "
                f"{wait:.0f}s ({exc!r}); is the server running, are the credentials right?"
            ) from None
        self._ack_inbox = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._ack_inbox}.*", cb=self._on_publish_ack)
        await self._ensure_stream()

    # ----------------------------------------------------------------- closing

    async def _shutdown(self) -> None:
        if self._nc is None or self._nc.is_closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settle(), 3)
        readers = [r.name for r in self._readers.values() if r.name]
        if readers and self._nc.is_connected:  # else they go away once idle
            with contextlib.suppress(BusError, TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(self._delete_consumer(n) for n in readers)), 2
                )
        nc, self._nc = self._nc, None
        with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
            await asyncio.wait_for(nc.drain(), 3)
        if not nc.is_closed:
            await nc.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._thread.is_alive():
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
                try:
                    future.result(10)
                except (TimeoutError, nats.errors.Error, OSError):
                    future.cancel()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> NatsBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def delete_stream(url: str, system: str) -> bool:
        """Delete the stream of the charter `system` (tests, teardown). False if none."""
        options = parse_url(url)
        name = stream_name(system)

        async def delete() -> bool:
            nc = await nats.connect(
                servers=list(options.servers),
                user=options.user,
                password=options.password,
                connect_timeout=2,
                max_reconnect_attempts=1,
            )
            try:
                msg = await nc.request(f"$JS.API.STREAM.DELETE.{name}", timeout=API_TIMEOUT_S)
                doc = orjson.loads(msg.data)
                return bool(doc.get("success"))
            finally:
                await nc.close()

        return asyncio.run(delete())
