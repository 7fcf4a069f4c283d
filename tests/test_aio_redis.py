"""infra/aio_redis.py, the order route's Redis client, against the real Redis: replies in
order for concurrent callers, its database, error replies, EVALSHA falling back to EVAL,
and a new connection after the old one is lost."""

from __future__ import annotations

import asyncio

import pytest
import redis

from infra.aio_redis import LoopRedis, RedisReplyError, Script, pairs
from infra.settings import Settings

pytestmark = pytest.mark.services
DB = 13


@pytest.fixture
def url(services: Settings) -> str:
    settings = Settings(redis_port=services.redis_port, redis_db=DB)
    sync = redis.Redis.from_url(settings.redis)
    sync.flushdb()
    sync.hset("h", mapping={"a": "1", "b": "2"})
    yield settings.redis
    sync.flushdb()
    sync.close()


def test_commands_replies_and_errors(url: str) -> None:
    async def main() -> None:
        r = LoopRedis(url)
        got = await r.execute(("HGETALL", "h"), ("HGET", "h", "a"), ("HGET", "h", "zz"))
        assert pairs(got[0]) == {b"a": b"1", b"b": b"2"} and got[1:] == [b"1", None]
        assert await r.execute(("SISMEMBER", "nothing", "x")) == [0]
        with pytest.raises(RedisReplyError):
            await r.execute(("INCR", "h"))  # WRONGTYPE
        # many callers at once on the one connection: each gets its own replies
        keys = [f"k{i}" for i in range(200)]
        await asyncio.gather(*(r.execute(("SET", k, k)) for k in keys))
        values = await asyncio.gather(*(r.execute(("GET", k), ("GET", "h2")) for k in keys))
        assert [v[0] for v in values] == [k.encode() for k in keys]

    asyncio.run(main())


def test_evalsha_loads_the_script_and_reconnects(url: str) -> None:
    script = Script("return {tonumber(ARGV[1]) + 1, redis.call('HGET', KEYS[1], 'a')}")

    async def main() -> None:
        r = LoopRedis(url)
        await r.execute(("SCRIPT", "FLUSH"))
        assert await r.evalsha(script, ["h"], [41]) == [42, b"1"]  # NOSCRIPT, then EVAL
        proto = await r._connection()
        assert proto.transport is not None
        proto.transport.close()
        await asyncio.sleep(0.05)
        assert await r.evalsha(script, ["h"], [1]) == [2, b"1"]  # connected again

    asyncio.run(main())
