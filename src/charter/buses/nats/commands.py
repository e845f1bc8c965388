"""Commands to owners on the NATS bus (charter.commands).

A command waits in the charter's stream, on ``charter.<system>._cmd.<owner>.<Command>``,
so one sent while its owner is down is there when it comes back (until compaction forgets
it, after the charter's retention). Subject permissions let a context publish only the
commands the charter lets it send (charter.natsauth): the server refuses the others at
once. The owner takes its commands through a durable pull consumer of its own,
``cmd-<owner>`` (explicit acks; one not acknowledged within COMMAND_LEASE_S is handed out
again, also to another process of the owner), and acknowledges one once answered.

Answers go by core NATS to ``charter_reply.<system>.<sender>.<digest of owner and key>``:
every attempt with one key waits on the same subject, so whichever delivery answers, the
sender waiting hears it; a sender gone by then misses nothing it could not ask again (the
owner's store answers a retry). Each process subscribes once per sending context. A
command carries its key, name, sender and reply subject in headers, and its message id is
new for every attempt: the stream's duplicate window must not swallow a retry, whose
answer the sender waits for (the owner's store, not the stream, keeps a key once)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from charter.buses.base import COMMAND_LEASE_S, OutgoingCommand
from charter.buses.nats.core import _DEADLINE, API_TIMEOUT_S, NS, PUBLISH_TIMEOUT_S, BusError
from charter.buses.nats.readers import _Reading
from charter.buses.nats.subjects import command_consumer, command_subject, reply_prefix, token
from charter.ids import uuid7
from charter.records import CommandDelivery

KEY, NAME, SENDER, REPLY = "Charter-Key", "Charter-Command", "Charter-Sender", "Charter-Reply"
MAX_WAITING = 1000  # commands handed to one owner and not yet acknowledged


@dataclass(eq=False)
class _Queue:
    """An owner's durable consumer of its commands, as this process pulls from it."""

    owner: str
    name: str
    inbox: str = ""
    sub: Subscription | None = None
    arrived: list[Msg] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Commands(_Reading):
    """send_command, take_commands, answer_command."""

    _queues: dict[str, _Queue]
    _answers: dict[str, set[asyncio.Future[bytes]]]  # reply subject -> who waits on it
    _reply_subs: dict[str, Subscription]  # sending context -> its answers' subscription

    # -- the sender's side -----------------------------------------------------------------

    async def _command_replies(self, sender: str) -> None:
        if sender in self._reply_subs:
            return

        async def arrive(msg: Msg) -> None:
            for waiter in self._answers.pop(msg.subject, set()):
                if not waiter.done():
                    waiter.set_result(msg.data)

        self._reply_subs[sender] = await self.nc.subscribe(
            f"{reply_prefix(self.system, sender)}.*", cb=arrive
        )

    async def _send_command(
        self, sender: str, owner: str, name: str, key: str, body: bytes
    ) -> asyncio.Future[bytes]:
        await self._command_replies(sender)
        digest = hashlib.sha256(f"{owner}\n{key}".encode()).hexdigest()[:32]
        reply = f"{reply_prefix(self.system, sender)}.{digest}"
        answer: asyncio.Future[bytes] = self._loop.create_future()
        self._answers.setdefault(reply, set()).add(answer)
        headers = {KEY: key, NAME: name, SENDER: sender, REPLY: reply}
        item = (f"cmd-{uuid7()}", command_subject(self._prefix, owner, name), body)
        try:
            await self._publish([item], headers)
        except BaseException:
            self._answers.get(reply, set()).discard(answer)
            raise
        answer.add_done_callback(lambda done: self._answers.get(reply, set()).discard(done))
        return answer

    def send_command(
        self, sender: str, owner: str, name: str, key: str, body: bytes
    ) -> Callable[[float], bytes | None]:
        answer = self._call(self._send_command(sender, owner, name, key, body), PUBLISH_TIMEOUT_S)

        async def wait(timeout: float) -> bytes | None:
            # still waiting after a timeout (an answer may come later: asked again, it is
            # there); until the process ends, when no answer ever comes
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(answer), timeout)
            return None

        return lambda timeout: self._call(wait(timeout), timeout)

    def send_commands(
        self, sender: str, commands: Sequence[OutgoingCommand]
    ) -> list[Callable[[float], bytes | None]]:
        async def send_all() -> list[asyncio.Future[bytes]]:
            return list(await asyncio.gather(*(self._send_command(sender, *c) for c in commands)))

        answers = self._call(send_all(), PUBLISH_TIMEOUT_S)
        return [self._waiter(answer) for answer in answers]

    def _waiter(self, answer: asyncio.Future[bytes]) -> Callable[[float], bytes | None]:
        async def wait(timeout: float) -> bytes | None:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(answer), timeout)
            return None

        return lambda timeout: self._call(wait(timeout), timeout)

    # -- the owner's side ------------------------------------------------------------------

    async def _command_queue(self, owner: str) -> _Queue:
        """The owner's durable consumer (made if missing; the same config is no change),
        and this process's inbox for what it hands out."""
        queue = self._queues.get(owner)
        if queue is not None and queue.sub is not None:
            return queue
        queue = self._queues[owner] = _Queue(owner, command_consumer(owner))
        config = {
            "durable_name": queue.name,
            "name": queue.name,
            "description": f"commands for context '{owner}' (charter.commands)",
            "ack_policy": "explicit",
            "ack_wait": int(COMMAND_LEASE_S * NS),
            "max_deliver": -1,
            "max_ack_pending": MAX_WAITING,
            "filter_subject": command_subject(self._prefix, owner, "*"),
            "deliver_policy": "all",
            "replay_policy": "instant",
        }
        await self._api(
            f"CONSUMER.CREATE.{self.stream}.{queue.name}",
            {"stream_name": self.stream, "config": config},
        )
        queue.inbox = self.nc.new_inbox()

        async def arrive(msg: Msg) -> None:
            if (msg.reply or "").startswith("$JS.ACK."):
                queue.arrived.append(msg)  # else a request's end (408 expired, 404 nothing…)
            queue.wake.set()

        queue.sub = await self.nc.subscribe(queue.inbox, cb=arrive)
        return queue

    async def _take_commands(self, owner: str, limit: int, wait: float) -> list[CommandDelivery]:
        """What arrived; else a pull request for up to `limit`, waited for up to `wait`. A
        request is not followed to its end (a lost end would stall the queue): each take
        that finds nothing asks anew, and what an older request still brings arrives for
        the next one (within its lease)."""
        queue = await self._command_queue(owner)
        async with queue.lock:
            if not queue.arrived:
                request: dict[str, object] = {"batch": limit}
                if wait > 0:
                    request["expires"] = int(wait * NS)
                else:
                    request["no_wait"] = True
                queue.wake.clear()
                await self.nc.publish(
                    f"{self._api_prefix}.CONSUMER.MSG.NEXT.{self.stream}.{queue.name}",
                    orjson.dumps(request),
                    reply=queue.inbox,
                )
                deadline = min(time.monotonic() + wait, _DEADLINE.get())
                while not queue.arrived and (left := deadline - time.monotonic()) > 0:
                    queue.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(queue.wake.wait(), left)
            taken, queue.arrived = queue.arrived[:limit], queue.arrived[limit:]
        return [
            CommandDelivery(msg.headers.get(KEY, ""), msg.headers.get(NAME, ""), msg.data, msg)
            for msg in taken
            if msg.headers
        ]

    def take_commands(self, owner: str, limit: int, wait: float) -> list[CommandDelivery]:
        return self._call(self._take_commands(owner, max(1, limit), wait), wait + API_TIMEOUT_S)

    async def _answer_command(self, command: CommandDelivery, answer: bytes) -> None:
        msg = command.ticket
        if not isinstance(msg, Msg) or not msg.reply:
            raise BusError(f"NATS bus: {command.name} (key {command.key!r}) is no delivery")
        reply = (msg.headers or {}).get(REPLY)
        if reply:
            await self.nc.publish(reply, answer)
        # acknowledged for sure: handed out again otherwise, and answered again (harmless)
        await self.nc.request(msg.reply, b"+ACK", timeout=self._remaining(API_TIMEOUT_S))

    def answer_command(self, owner: str, command: CommandDelivery, answer: bytes) -> None:
        self._call(self._answer_command(command, answer), API_TIMEOUT_S)

    def answer_commands(self, owner: str, answers: Sequence[tuple[CommandDelivery, bytes]]) -> None:
        async def answer_all() -> None:
            await asyncio.gather(*(self._answer_command(c, a) for c, a in answers))

        self._call(answer_all(), API_TIMEOUT_S)


__all__ = ["KEY", "NAME", "REPLY", "SENDER", "_Commands", "token"]
