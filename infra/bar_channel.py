"""1-minute bars on Redis pub/sub: bars:{SYM}, one message per rewritten candle.

The candles flow publishes each candles_1m row right after writing it, so a
subscriber sees every revision of a minute (late trades, breaks) as a new
message for the same `start`; the last one for a start is the candle. A minute
whose trades were all broken is published once more with `trades` 0, `volume` 0
and null prices: the minute is retired.
"""

from __future__ import annotations

from datetime import datetime

import orjson
import redis

from infra.candle_store import CANDLE_COLUMNS

_COL = {name: i for i, name in enumerate(CANDLE_COLUMNS)}


def _money(value: object) -> str | None:
    return None if value is None else str(value)


def bar_payload(row: list) -> bytes:
    start: datetime = row[_COL["start"]]
    deleted = bool(row[_COL["is_deleted"]])
    return orjson.dumps(
        {
            "T": "b",
            "symbol": row[_COL["symbol"]],
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "open": _money(row[_COL["open"]]),
            "high": _money(row[_COL["high"]]),
            "low": _money(row[_COL["low"]]),
            "close": _money(row[_COL["close"]]),
            "volume": 0 if deleted else int(row[_COL["volume"]]),
            "vwap": None if deleted else _money(row[_COL["vwap"]]),
            "trades": 0 if deleted else int(row[_COL["trades"]]),
        }
    )


class BarPublisher:
    """PUBLISHes candles_1m rows on bars:{SYM}; pass it as CandleStore(on_rewrite=...)."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url)

    def __call__(self, rows: list[list]) -> None:
        if not rows:
            return
        pipe = self.redis.pipeline(transaction=False)
        for row in rows:
            pipe.publish(f"bars:{row[_COL['symbol']]}", bar_payload(row))
        pipe.execute()
