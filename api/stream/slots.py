"""Open streams per API key, counted in Redis so the limit holds across API processes.

Each key has a sorted set stream:conns:{key_id} of connection ids scored by when
their slot expires (Redis server time, so hosts' clocks do not matter). A process
refreshes its connections' slots every ttl/3; one that crashes stops refreshing,
and its slots expire after `slot_ttl_s` instead of leaking.
"""

from __future__ import annotations

import redis.asyncio as aioredis

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
_REFRESH = (
    _NOW_MS
    + """
local n = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""
)


def slot_key(key_id: str) -> str:
    return f"stream:conns:{key_id}"


class Slots:
    def __init__(self, client: aioredis.Redis, ttl_s: float) -> None:
        self.redis = client
        self.ttl_ms = int(ttl_s * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)

    async def acquire(self, key_id: str, conn_id: str, limit: int) -> bool:
        ok = await self._acquire(keys=[slot_key(key_id)], args=[limit, conn_id, self.ttl_ms])
        return ok == 1

    async def refresh(self, held: list[tuple[str, str]]) -> None:
        """Extend the slots of (key_id, conn_id) pairs this process still serves."""
        if not held:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key_id, conn_id in held:
            await self._refresh(keys=[slot_key(key_id)], args=[conn_id, self.ttl_ms], client=pipe)
        await pipe.execute()

    async def release(self, key_id: str, conn_id: str) -> None:
        await self.redis.zrem(slot_key(key_id), conn_id)

    async def count(self, key_id: str) -> int:
        return int(await self.redis.zcard(slot_key(key_id)))
