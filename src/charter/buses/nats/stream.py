"""The stream of a charter on JetStream: the API calls (requests with a budget, refusals
told at once), the stream's config, its creation or reconciliation, and its stored
messages read one at a time (a direct get)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import time
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg

from charter.buses.nats.core import (
    API_TIMEOUT_S,
    DUPLICATE_WINDOW_S,
    NS,
    BusError,
    RefusedError,
    _Core,
    log,
)

# JetStream API error codes this module tells apart
_STREAM_NOT_FOUND = 10059
_CONSUMER_NOT_FOUND = 10014
_NO_MESSAGE = 10037
_STREAM_NAME_IN_USE = 10058
_JS_UNAVAILABLE = 10008


class _ApiError(BusError):
    def __init__(self, message: str, code: int, err_code: int) -> None:
        super().__init__(message)
        self.code, self.err_code = code, err_code


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with any number of fractional digits."""
    return _parse_time(stamp).timestamp()


def _parse_time(stamp: str) -> dt.datetime:
    text = stamp.replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match:
        head, frac, tail = match.groups()
        text = head + (frac[:7] if frac else "") + tail
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class _Stream(_Core):
    """The JetStream API, and the stream it is about."""

    _direct: bool  # read the newest message of a subject by a direct get (see _last)

    async def _api(
        self,
        subject: str,
        request: dict[str, Any] | None = None,
        timeout: float = API_TIMEOUT_S,
    ) -> dict[str, Any]:
        payload = orjson.dumps(request) if request is not None else b""
        msg = await self._ask(subject, payload, timeout)
        doc: dict[str, Any] = orjson.loads(msg.data)
        error = doc.get("error")
        if error:
            raise _ApiError(
                f"NATS bus, stream {self.stream}: {error.get('description', error)}",
                int(error.get("code", 0)),
                int(error.get("err_code", 0)),
            )
        return doc

    async def _ask(self, subject: str, payload: bytes, timeout: float) -> Msg:
        """The answer to an API request; a refusal of its subject raises at once."""
        timeout = self._remaining(timeout)
        if timeout <= 0:
            raise BusError(f"NATS bus: out of time before a request on stream {self.stream}")
        full = f"{self._api_prefix}.{subject}"
        refused: asyncio.Future[str] = self._loop.create_future()

        def refuse(original: str) -> None:
            if not refused.done():
                refused.set_result(original)

        answer = asyncio.ensure_future(self.nc.request(full, payload, timeout=timeout))
        try:
            with self._watch((full,), refuse):
                await asyncio.wait((answer, refused), return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                raise self._refusal(refused.result())
            msg = answer.result()
        except nats.errors.NoRespondersError:
            raise _ApiError(
                f"NATS bus: JetStream is not available on {', '.join(self.options.servers)}",
                503,
                _JS_UNAVAILABLE,
            ) from None
        except nats.errors.TimeoutError:
            raise BusError(
                f"NATS bus: no answer to {' '.join(subject.split('.')[:2]).lower()} request "
                f"on stream {self.stream} within {timeout:.1f}s; try again"
            ) from None
        finally:
            if not answer.done():
                answer.cancel()
        return msg

    def _stream_config(self) -> dict[str, Any]:
        return {
            "name": self.stream,
            "description": f"charter '{self.system}': owners' events (transport, not truth)",
            "subjects": [f"{self._prefix}.>"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.options.replicas,
            "duplicate_window": int(DUPLICATE_WINDOW_S * NS),
            "discard": "old",
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msgs_per_subject": -1,
            "max_msg_size": -1,
            "max_consumers": -1,
            "allow_direct": True,  # a subject's newest message read by a direct get (_last)
        }

    async def _ensure_stream(self) -> None:
        wanted = self._stream_config()
        deadline = time.monotonic() + 3 * API_TIMEOUT_S
        while True:
            try:
                try:
                    info = await self._api(f"STREAM.INFO.{self.stream}")
                except _ApiError as exc:
                    if exc.err_code != _STREAM_NOT_FOUND:
                        raise
                    try:
                        await self._api(f"STREAM.CREATE.{self.stream}", wanted)
                        return
                    except RefusedError as refused:
                        raise self._not_created(refused) from None
                    except _ApiError as exc2:
                        if exc2.err_code != _STREAM_NAME_IN_USE:
                            raise
                        info = await self._api(f"STREAM.INFO.{self.stream}")
                await self._reconcile_stream(info["config"], wanted)
                return
            except _ApiError as exc:
                if exc.code != 503 or time.monotonic() > deadline:
                    raise BusError(f"cannot set up stream {self.stream}: {exc}") from None
                await asyncio.sleep(0.25)  # a cluster still electing its leaders

    def _not_created(self, refused: RefusedError) -> RefusedError:
        """The stream is missing and these credentials may not create it: say who does."""
        how = (
            "; then start this one again"
            if refused.explained
            else "; the admin's credentials create it (start one charter process with them in "
            "its bus URL, e.g. `charter run` or `charter status`), then start this one again"
        )
        return RefusedError(
            f"NATS bus: stream {self.stream} does not exist yet, and {refused.reason}{how}",
            refused.subject,
            refused.reason,
            refused.explained,
        )

    async def _reconcile_stream(self, config: dict[str, Any], wanted: dict[str, Any]) -> None:
        """Update what is safe to update on an existing stream; warn about the rest."""
        update = dict(config)
        subjects = list(config.get("subjects") or [])
        if wanted["subjects"][0] not in subjects:
            update["subjects"] = [*subjects, wanted["subjects"][0]]
        for key in ("duplicate_window", "num_replicas", "allow_direct"):
            if config.get(key) != wanted[key]:
                update[key] = wanted[key]
        for key, safe in (("retention", "limits"), ("storage", "file")):
            if config.get(key) != safe:
                log.warning(
                    "NATS bus: stream %s has %s=%s, charter expects %s; left as it is "
                    "(JetStream cannot change it; delete the stream to recreate it)",
                    self.stream,
                    key,
                    config.get(key),
                    safe,
                )
        for key in ("max_age", "max_msgs", "max_bytes", "max_msgs_per_subject"):
            if config.get(key) not in (None, 0, -1):
                log.warning(
                    "NATS bus: stream %s has %s=%s: the server may forget events a copy has "
                    "not applied; left as it is",
                    self.stream,
                    key,
                    config[key],
                )
        if update != config:
            try:
                await self._api(f"STREAM.UPDATE.{self.stream}", update)
            except _ApiError as exc:
                log.warning("NATS bus: could not update stream %s: %s", self.stream, exc)
            except RefusedError as exc:  # a context's credentials: the admin's process does
                log.warning(
                    "NATS bus: stream %s is not set up as this charter asks (%s); this "
                    "process may not update it, a process with the admin's credentials "
                    "does (%s)",
                    self.stream,
                    ", ".join(k for k in update if update[k] != config.get(k)),
                    exc,
                )

    async def _message(self, request: dict[str, Any]) -> dict[str, Any] | None:
        try:
            doc = await self._api(f"STREAM.MSG.GET.{self.stream}", request)
        except _ApiError as exc:
            if exc.err_code == _NO_MESSAGE:
                return None
            raise
        message: dict[str, Any] = doc["message"]
        return message

    async def _last(self, subject: str) -> dict[str, Any] | None:
        """The newest message on `subject` (a wildcard one too), as `_message` returns it;
        None when there is none. A stored message can be read by its sequence whatever its
        subject, so under contract visibility (charter.natsauth) only the admin may; a
        context's process is refused once, and from then on asks by a direct get with the
        subject in the request's own subject, which the server permits subject by subject
        (on a stream with replicas, a follower may answer it a moment behind)."""
        if not self._direct:
            try:
                return await self._message({"last_by_subj": subject})
            except RefusedError:
                self._direct = True
        msg = await self._ask(f"DIRECT.GET.{self.stream}.{subject}", b"", API_TIMEOUT_S)
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status:
            raise BusError(
                f"NATS bus, stream {self.stream}: reading the newest message on {subject} "
                f"failed (status {status}); try again"
            )
        return {
            "subject": headers.get("Nats-Subject", subject),
            "seq": int(headers.get("Nats-Sequence", 0)),
            "time": headers.get("Nats-Time-Stamp", ""),
            "data": base64.b64encode(msg.data).decode(),
        }
