"""The stream's parts on their own: client actions, subscription rules, a session's batches
(conflation, order, sequence numbers, gaps), the market clock, and what the flows publish
for the stream (trades from the quotes flow, bars from the candles flow)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from websockets.frames import Frame, Opcode

from api.stream.clock import MarketClock, xnys_open
from api.stream.config import StreamSettings
from api.stream.flusher import Flusher
from api.stream.peer import text_frame
from api.stream.protocol import (
    Auth,
    Change,
    Ping,
    ProtocolError,
    event,
    parse_action,
    split,
    with_seq,
)
from api.stream.session import Session
from api.stream.subscriptions import Subscriptions
from infra.bar_channel import bar_payload
from infra.candle_store import CandleStore
from infra.quote_store import QuoteStore
from infra.settings import Settings
from schemas.marketdata import Trade, TradeBreak
from tests.test_quote_store import Listener

D = Decimal


# ---------------------------------------------------------------- protocol


def test_actions_parse_and_symbols_normalize() -> None:
    assert parse_action('{"action":"auth","token":"k.s"}') == Auth("k.s")
    assert parse_action(b'{"action":"ping","id":"x"}') == Ping("x")
    change = parse_action('{"action":"subscribe","quotes":["aapl","*"],"bars":[]}')
    assert change == Change(True, {"quotes": frozenset({"AAPL", "*"}), "bars": frozenset()})
    assert parse_action('{"action":"unsubscribe"}') == Change(False, {})
    # The account's own order events: trade_updates, with the last account seq seen.
    got = parse_action('{"action":"subscribe","trade_updates":true,"since":12}')
    assert got == Change(True, {}, trade_updates=True, since=12)
    got = parse_action('{"action":"unsubscribe","trade_updates":true}')
    assert got == Change(False, {}, trade_updates=True)
    assert parse_action('{"action":"subscribe","trade_updates":false}') == Change(True, {})


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("nope", "invalid_json"),
        ("1", "invalid_message"),
        ('{"action":"x"}', "unknown_action"),
        ('{"nothing":1}', "invalid_message"),
        ('{"action":"subscribe","trades":[1]}', "invalid_message"),
        ('{"action":"subscribe","trades":["TOO-LONG-SYMBOL"]}', "invalid_symbol"),
        ('{"action":"subscribe","news":["AAPL"]}', "invalid_message"),
        ('{"action":"auth","token":""}', "invalid_message"),
        ('{"action":"subscribe","trade_updates":1}', "invalid_message"),
        ('{"action":"subscribe","since":3}', "invalid_message"),
        ('{"action":"unsubscribe","trade_updates":true,"since":3}', "invalid_message"),
        ('{"action":"subscribe","trade_updates":true,"since":-1}', "invalid_since"),
        ('{"action":"subscribe","trade_updates":true,"since":"3"}', "invalid_since"),
        ('{"action":"subscribe","trade_updates":true,"account_id":"x"}', "invalid_message"),
    ],
)
def test_bad_actions_raise_typed_errors(raw: str, code: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_action(raw)
    assert exc.value.code == code


def test_a_sequence_number_is_spliced_into_an_encoded_event() -> None:
    piece = split(b'{"T":"q","symbol":"A"}')
    assert orjson.loads(with_seq(piece, 7)) == {"T": "q", "seq": 7, "symbol": "A"}
    assert orjson.loads(with_seq(event("pong"), 1)) == {"T": "pong", "seq": 1}
    with pytest.raises(ValueError):
        split(b'{"symbol":"A"}')


# ---------------------------------------------------------------- subscriptions


def sub(**kinds: list[str]) -> Change:
    return Change(True, {k: frozenset(v) for k, v in kinds.items()})  # type: ignore[misc]


def unsub(**kinds: list[str]) -> Change:
    return Change(False, {k: frozenset(v) for k, v in kinds.items()})  # type: ignore[misc]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_a_text_frame_is_what_the_websockets_library_would_write(size: int) -> None:
    # Each boundary of the 7-bit, 16-bit and 64-bit length encodings (RFC 6455 5.2).
    payload = bytes(range(97, 123)) * (size // 26) + b"a" * (size % 26)
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


def test_subscription_rules() -> None:
    s = Subscriptions(max_symbols=3)
    d = s.apply(sub(quotes=["A", "B"], trades=["A"]))
    assert d.added == {"quotes": {"A", "B"}, "trades": {"A"}} and not d.removed
    d = s.apply(sub(quotes=["*", "C"]))
    assert d.wild_added == {"quotes"} and d.removed == {"quotes": {"A", "B"}}
    assert s.has("quotes", "ZZZ") and not s.has("trades", "B")
    assert s.apply(sub(quotes=["D"])).added == {}, "under '*' a symbol changes nothing"
    with pytest.raises(ProtocolError, match="limit of 3"):
        s.apply(sub(bars=["B", "C", "D"]))
    assert s.symbols["bars"] == set(), "a refused change changes nothing"
    d = s.apply(unsub(quotes=["*"], trades=["A", "Q"]))
    assert d.wild_removed == {"quotes"} and d.removed == {"trades": {"A"}}
    msg = orjson.loads(with_seq(s.message(), 1))
    assert msg == {"T": "subscription", "seq": 1, "quotes": [], "trades": [], "bars": [],
                   "statuses": [], "trade_updates": False, "alerts": False}  # fmt: skip


def test_a_connection_over_the_limit_may_still_shrink() -> None:
    s = Subscriptions(max_symbols=5)
    s.apply(sub(quotes=["A", "B", "C", "D", "E"]))
    s.max_symbols = 2  # e.g. lowered by an operator
    assert s.apply(unsub(quotes=["A"])).removed == {"quotes": {"A"}}


# ---------------------------------------------------------------- sessions


class _FakeWs:
    async def send_text(self, text: str) -> None:  # pragma: no cover - not started here
        raise AssertionError("not used")


def batches(cfg: StreamSettings, feed) -> list[list[dict[str, Any]]]:
    async def run() -> list[list[dict[str, Any]]]:
        session = Session(_FakeWs(), cfg)  # type: ignore[arg-type]
        out = []
        for step in feed:
            if step == "flush":
                frame = session.take_batch()
                out.append(orjson.loads(frame) if frame else [])
            else:
                kind, symbol, payload = step
                piece = split(orjson.dumps(payload))
                if kind == "quotes":
                    session.push_quote(symbol, piece)
                else:
                    session.push(kind, symbol, piece)
        return out

    return asyncio.run(run())


def q(symbol: str, bid: int) -> tuple[str, str, dict]:
    return "quotes", symbol, {"T": "q", "symbol": symbol, "bid": bid}


def t(symbol: str, i: int) -> tuple[str, str, dict]:
    return "trades", symbol, {"T": "t", "symbol": symbol, "i": i}


def test_a_batch_keeps_the_latest_quote_per_symbol_in_arrival_order() -> None:
    [batch] = batches(
        StreamSettings(), [q("A", 1), t("A", 1), q("B", 1), q("A", 2), t("A", 2), "flush"]
    )
    assert [(e["T"], e["symbol"], e.get("bid", e.get("i"))) for e in batch] == [
        ("t", "A", 1),
        ("q", "B", 1),
        ("q", "A", 2),
        ("t", "A", 2),
    ]
    assert [e["seq"] for e in batch] == [1, 2, 3, 4]


def test_overflow_drops_the_oldest_and_a_gap_covers_their_sequence_numbers() -> None:
    cfg = StreamSettings(max_pending=3)
    first, second, third = batches(
        cfg, [t("A", 0), "flush", *(t("A", i) for i in range(1, 8)), q("B", 1), "flush", "flush"]
    )
    assert [e["seq"] for e in first] == [1]
    gap, *rest = second
    assert gap == {
        "T": "gap", "seq": 6, "from_seq": 2, "to_seq": 5, "dropped": 4, "reason": "slow_consumer"
    }  # fmt: skip
    assert [(e["seq"], e["T"], e.get("i")) for e in rest] == [
        (7, "t", 5), (8, "t", 6), (9, "t", 7), (10, "q", None)
    ]  # fmt: skip
    assert third == []


class _Recorder:
    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        self.name, self.log = name, log

    def flush(self, slot: int) -> None:
        self.log.append((self.name, asyncio.get_running_loop().time()))


def test_the_flusher_sends_sessions_due_now_in_one_pass_and_others_not_before_their_time():
    async def run() -> tuple[list[tuple[str, float]], float]:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, float]] = []
        f = Flusher(loop)
        start = loop.time()
        later = [_Recorder(f"later{i}", log) for i in range(3)]
        for r in later:
            f.schedule(r, start + 0.2)
        f.schedule(_Recorder("now1", log), 0.0)
        f.schedule(_Recorder("now2", log), start - 1)
        await asyncio.sleep(0)  # one pass of the loop
        assert [n for n, _ in log] == ["now1", "now2"]
        await asyncio.sleep(0.4)
        return log, start

    log, start = asyncio.run(run())
    assert [n for n, _ in log] == ["now1", "now2", "later0", "later1", "later2"]
    assert all(at >= start + 0.2 for _, at in log[2:]), log


def test_an_urgent_event_goes_out_at_once_and_the_next_batch_waits_a_whole_interval_after_it():
    class Ws:
        def __init__(self) -> None:
            self.sent: list[tuple[float, str]] = []

        async def send_text(self, text: str) -> None:
            self.sent.append((asyncio.get_running_loop().time(), text))

    def piece(**kv: Any):
        return split(orjson.dumps(kv))

    async def run() -> list[tuple[float, str]]:
        ws = Ws()
        session = Session(ws, StreamSettings(batch_ms=200))  # type: ignore[arg-type]
        session.start(Flusher(asyncio.get_running_loop()))
        session.push_quote("AAPL", piece(T="q", n=1))  # quiet before: out at once
        await asyncio.sleep(0.03)
        session.push_quote("AAPL", piece(T="q", n=2))  # due 200 ms after the first
        session.push_control(piece(T="pong"))  # does not wait, and takes n=2 along
        await asyncio.sleep(0.001)
        session.push_quote("AAPL", piece(T="q", n=3))  # 200 ms after the pong, not the first
        await asyncio.sleep(0.45)
        return ws.sent

    sent = asyncio.run(run())
    frames = [orjson.loads(text) for _, text in sent]
    assert [[e.get("n", e["T"]) for e in f] for f in frames] == [[1], [2, "pong"], [3]]
    assert [e["seq"] for f in frames for e in f] == [1, 2, 3, 4]
    (t1, _), (t2, _), (t3, _) = sent
    assert t2 - t1 < 0.19, "the urgent message did not wait for the interval"
    assert t3 - t2 >= 0.199, "the next batch went out in the superseded slot"


# ---------------------------------------------------------------- market clock


def ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()) * 1_000_000_000


def test_the_feed_clock_follows_the_xnys_regular_session() -> None:
    clock = MarketClock("feed")
    assert clock.is_open(ns("2026-11-24T15:00:00"))  # a Tuesday, 10:00 New York
    assert not clock.is_open(ns("2026-11-24T14:29:00"))  # 09:29
    assert not clock.is_open(ns("2026-11-24T21:00:00"))  # 16:00
    assert not clock.is_open(ns("2026-11-26T15:00:00")), "Thanksgiving"
    assert not clock.is_open(ns("2026-11-28T15:00:00")), "a Saturday"
    assert not clock.is_open(None), "no feed seen: closed"
    assert not xnys_open(ns("2099-01-05T15:00:00")), "outside the calendar: closed"
    assert MarketClock("always").is_open(None) and not MarketClock("never").is_open(1)


# ---------------------------------------------------------------- what the flows publish


@pytest.mark.services
def test_the_quote_store_publishes_every_trade_and_break(services: Settings) -> None:
    store = QuoteStore(Settings(redis_port=services.redis_port, redis_db=14).redis)
    symbol = f"ZT{time.time_ns() % 10**8}"
    listen = Listener(store, f"trades:{symbol}")
    t1 = Trade(symbol, "iex", "1", D("10.5000"), 100, ("@", "I"), 5, 6)
    t2 = Trade(symbol, "iex", "2", D("10.6000"), 200, ("@",), 7, 8)
    brk = TradeBreak(symbol, "iex", "1", D("10.5000"), 100, 9, 10)
    assert store.apply([t1, t2, t1, brk]) == 0, "trades are not stored"
    got = [orjson.loads(data) for _, data in listen.drain()]
    assert got == [
        {"T": "t", "symbol": symbol, "venue": "iex", "trade_id": "1", "price": "10.5000",
         "size": 100, "conditions": ["@", "I"], "event_ns": 5, "receive_ns": 6},
        {"T": "t", "symbol": symbol, "venue": "iex", "trade_id": "2", "price": "10.6000",
         "size": 200, "conditions": ["@"], "event_ns": 7, "receive_ns": 8},
        {"T": "t", "symbol": symbol, "venue": "iex", "trade_id": "1", "price": "10.5000",
         "size": 100, "conditions": ["@", "I"], "event_ns": 5, "receive_ns": 6},
        {"T": "x", "symbol": symbol, "venue": "iex", "trade_id": "1", "price": "10.5000",
         "size": 100, "event_ns": 9, "receive_ns": 10},
    ]  # fmt: skip
    assert not store.redis.exists(f"quote:{symbol}")


class _StubClickHouse:
    """Answers the aggregate query with canned rows; records inserts."""

    def __init__(self, rows: list[tuple]) -> None:
        self.rows, self.inserted = rows, []

    def insert(self, table: str, rows: list, columns: list[str]) -> None:
        self.inserted.append((table, rows))

    def query(self, sql: str, params: Any = None) -> list[tuple]:
        return self.rows


def test_the_candle_store_hands_every_rewritten_row_to_its_publisher() -> None:
    minute = ns("2026-11-24T14:31:00")
    aggregate = [("AAPL", minute // 10**9, D("1.1"), D("1.3"), D("1.0"), D("1.2"), 2, 300,
                  D("345.0000"), 2)]  # fmt: skip
    published: list[list] = []
    store = CandleStore(_StubClickHouse(aggregate), on_rewrite=published.extend)  # type: ignore[arg-type]
    # the next minute is touched too, but the query has no row for it: all its trades broken
    store._rewrite({("AAPL", minute // 10**9), ("AAPL", minute // 10**9 + 60)})
    assert [orjson.loads(bar_payload(r)) for r in published] == [
        {"T": "b", "symbol": "AAPL", "start": "2026-11-24T14:31:00Z", "open": "1.1",
         "high": "1.3", "low": "1.0", "close": "1.2", "volume": 300, "vwap": "1.1500",
         "trades": 2},
        {"T": "b", "symbol": "AAPL", "start": "2026-11-24T14:32:00Z", "open": None,
         "high": None, "low": None, "close": None, "volume": 0, "vwap": None, "trades": 0},
    ]  # fmt: skip
