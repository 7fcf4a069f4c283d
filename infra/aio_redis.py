"""redis.asyncio clients, one per event loop: an asyncio client's connections belong to
the loop that opened them, and an app may serve on more than one (tests run each
TestClient on a loop of its own)."""

from __future__ import annotations

import asyncio

import redis.asyncio


class PerLoopRedis:
    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis]] = {}

    def client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        found = self._clients.get(id(loop))
        if found is None or found[0] is not loop:
            found = self._clients[id(loop)] = (loop, redis.asyncio.Redis.from_url(self.url))
        return found[1]
