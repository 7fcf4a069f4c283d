"""The stream's settings, read from TAPEFLOW_STREAM_* environment variables (or .env)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class StreamSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TAPEFLOW_STREAM_", env_file=".env", extra="ignore"
    )

    batch_ms: float = 50.0  # at most one frame per connection per this many ms
    max_symbols: int = 500  # distinct symbols per connection, over all kinds ("*" not counted)
    max_connections_per_key: int = 10  # across every API process (counted in Redis)
    slot_ttl_s: float = 60.0  # a crashed process's connections free their slots after this
    auth_timeout_s: float = 5.0  # time to send {"action":"auth"} when no header was given
    max_message_bytes: int = 65_536  # larger client messages: error, then close 1009
    # Events other than quotes held for one connection (quotes are conflated per symbol,
    # so bounded by its symbols). Past this, the oldest are dropped and a gap is sent.
    max_pending: int = 5_000
    slow_close_s: float = 5.0  # behind (dropping, or unable to write) this long: close 4008
    # When stale markers may be sent: "feed" = XNYS regular session at the newest event
    # time the process has seen (replays behave like the day they replay), "wall" = at
    # the wall clock, "always" / "never" for tests and operators.
    market_clock: Literal["feed", "wall", "always", "never"] = "feed"
    tick_s: float = 0.5  # how often staleness and slow consumers are checked


@lru_cache(maxsize=1)
def get_stream_settings() -> StreamSettings:
    return StreamSettings()
