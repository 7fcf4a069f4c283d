"""Redis on an event loop, for the order route: one pipelined connection per loop.

redis.asyncio cost the order route a third of its CPU (per command: connection checkout,
health checks, timeouts, argument filtering). The route needs little: a script call
and a few reads per request. `LoopRedis.execute(*commands)` writes the commands at once
on the loop's single connection and awaits their replies, which Redis sends in order;
concurrent requests share that connection, their commands interleaved whole.
hiredis parses the replies (errors come back as `hiredis.ReplyError` values, which
`execute` raises). A lost connection fails the commands in flight and the next call
connects again. An app may serve on more than one loop (tests run each TestClient on a
loop of its own): each has its own connection.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis


class RedisReplyError(Exception):
    pass


def pack(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError(f"Redis connection lost: {exc}"))


class LoopRedis:
    """Commands pipelined on one connection of the running loop."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.db = int(u.path.lstrip("/") or 0)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self._conns: dict[int, tuple[asyncio.AbstractEventLoop, _Protocol]] = {}
        self._connecting: dict[int, asyncio.Future[_Protocol]] = {}

    async def _connection(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        found = self._conns.get(id(loop))
        if found is not None and found[0] is loop and not found[1].closed:
            return found[1]
        pending = self._connecting.get(id(loop))
        if pending is not None and pending.get_loop() is loop:
            return await asyncio.shield(pending)
        fut: asyncio.Future[_Protocol] = loop.create_future()
        self._connecting[id(loop)] = fut
        try:
            _, proto = await loop.create_connection(_Protocol, self.host, self.port)
            setup = []
            if self.password is not None:
                auth = (self.username, self.password) if self.username else (self.password,)
                setup.append(("AUTH", *auth))
            if self.db:
                setup.append(("SELECT", self.db))
            if setup:
                await self._send(proto, setup)
            self._conns[id(loop)] = (loop, proto)
            fut.set_result(proto)
            return proto
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._connecting.pop(id(loop), None)

    @staticmethod
    async def _send(proto: _Protocol, commands: list[tuple[Any, ...]]) -> list[Any]:
        if proto.closed or proto.transport is None:
            raise ConnectionError("Redis connection closed")
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in commands]
        proto.waiters.extend(futs)
        proto.transport.write(b"".join(pack(c) for c in commands))
        replies = [await f for f in futs]
        for r in replies:
            if isinstance(r, hiredis.ReplyError):
                raise RedisReplyError(str(r))
        return replies

    async def execute(self, *commands: tuple[Any, ...]) -> list[Any]:
        """The replies of `commands`, sent together; raises on any error reply."""
        return await self._send(await self._connection(), list(commands))

    async def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            (reply,) = await self.execute(("EVALSHA", script.sha, len(keys), *keys, *args))
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            (reply,) = await self.execute(("EVAL", script.source, len(keys), *keys, *args))
        return reply


class Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def pairs(flat: list[bytes] | None) -> dict[bytes, bytes]:
    """An HGETALL reply (a flat list) as a dict."""
    if not flat:
        return {}
    it = iter(flat)
    return dict(zip(it, it, strict=True))
