"""The process's one Redis connection in subscriber mode: an asyncio protocol on hiredis.

redis-py's asyncio PubSub costs tens of microseconds of Python per message; this
reads replies with hiredis's C parser straight from data_received and hands each
one to a callback, so the hub sees [b"message", channel, data], [b"pmessage",
pattern, channel, data] and the (p)(un)subscribe confirmations, in stream order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.connection import parse_url

Reply = Any  # list[bytes | int] for pub/sub traffic, bytes or hiredis.ReplyError otherwise


def encode_command(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class PubSubProtocol(asyncio.Protocol):
    def __init__(
        self, on_reply: Callable[[Reply], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        self.on_reply, self.on_lost = on_reply, on_lost
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._handshake: deque[asyncio.Future[Reply]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        gets, on_reply = self._reader.gets, self.on_reply
        while (reply := gets()) is not False:
            if self._handshake and not isinstance(reply, list):
                self._handshake.popleft().set_result(reply)
            else:
                on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for fut in self._handshake:
            if not fut.done():
                fut.set_exception(ConnectionError("redis connection lost"))
        self.on_lost(exc)

    def send(self, *parts: str | bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_command(*parts))

    async def call(self, *parts: str | bytes) -> Reply:
        """A command answered before subscribing (AUTH): await its reply."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._handshake.append(fut)
        self.send(*parts)
        reply = await fut
        if isinstance(reply, hiredis.ReplyError):
            raise ConnectionError(f"redis: {reply}")
        return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(
    url: str,
    on_reply: Callable[[Reply], None],
    on_lost: Callable[[Exception | None], None],
    name: str = "tapeflow-stream",
) -> PubSubProtocol:
    """Open a subscriber connection to the Redis of `url` (redis://; rediss:// is not handled),
    named `name` in CLIENT LIST."""
    opts = parse_url(url)
    loop = asyncio.get_running_loop()

    def factory() -> PubSubProtocol:
        return PubSubProtocol(on_reply, on_lost)

    if "path" in opts:
        _, proto = await loop.create_unix_connection(factory, opts["path"])
    else:
        _, proto = await loop.create_connection(
            factory, opts.get("host", "127.0.0.1"), int(opts.get("port", 6379))
        )
    if opts.get("password"):
        user = opts.get("username")
        await proto.call("AUTH", *([user] if user else []), opts["password"])
    await proto.call("CLIENT", "SETNAME", name)
    return proto
