"""Per-key rate limits in Redis: GCRA (the generic cell rate algorithm), one atomic script.

A key allowed L requests per minute may burst up to L requests at once and then
sustain L per minute: a token bucket of capacity L refilled at L/minute, stored as a
single number, the bucket's "theoretical arrival time" (TAT). Redis's own clock
(TIME) is used so every API process shares one clock, and the script makes
check-and-update atomic across processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from infra.aio_redis import LoopRedis, Script

# KEYS[1] bucket; ARGV[1] emission interval T (µs, 60 s / L); ARGV[2] capacity L.
# Times are µs since the epoch (~1.8e15 < 2^53: exact in Lua's doubles); '%.0f' keeps
# them from being written in exponent notation.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local horizon = interval * capacity
local new_tat = tat + interval
if new_tat - now > horizon then
  return {0, 0, tat + interval - horizon - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, math.floor((horizon - (new_tat - now)) / interval), 0}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int  # requests that could be made right now
    retry_after_s: int  # whole seconds to wait when refused (>= 1), else 0


class RateLimiter:
    def __init__(self, url: str, prefix: str = "ratelimit:") -> None:
        self.redis = redis.Redis.from_url(url)
        self.prefix = prefix
        self._script = self.redis.register_script(_GCRA)
        self._aio = LoopRedis(url)
        self._aio_script = Script(_GCRA)

    def hit(self, key: str, per_minute: int) -> Decision:
        """Count one request against `key`'s budget of `per_minute`."""
        interval_us = 60_000_000 / per_minute
        allowed, remaining, wait_us = self._script(
            keys=[self.prefix + key], args=[f"{interval_us:.0f}", per_minute]
        )
        return self._decision(allowed, remaining, wait_us)

    async def ahit(self, key: str, per_minute: int) -> Decision:
        """`hit` on the running event loop (infra/aio_redis.py), for async routes."""
        interval_us = 60_000_000 / per_minute
        allowed, remaining, wait_us = await self._aio.evalsha(
            self._aio_script, [self.prefix + key], [f"{interval_us:.0f}", per_minute]
        )
        return self._decision(allowed, remaining, wait_us)

    @staticmethod
    def _decision(allowed: int, remaining: int, wait_us: int) -> Decision:
        if allowed:
            return Decision(True, int(remaining), 0)
        return Decision(False, 0, max(1, math.ceil(int(wait_us) / 1_000_000)))
