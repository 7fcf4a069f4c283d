"""WS /v1/stream over real sockets: protocol tests against a stream-only app on real Redis
(events published straight to Redis channels), and one end to end through `tapeflow run`."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from api.stream.config import StreamSettings
from infra import api_keys, db
from infra.replay import replay
from infra.settings import Settings
from schemas.marketdata import Trade
from tests.conftest import SAMPLE, Pipeline, new_user
from tests.e2e_support import expected_candles, parse_recording, until
from tests.stream_support import (
    StreamServer,
    bar,
    check_sequence,
    client,
    quote,
    small_buffer_socket,
    status,
    symbols,
    trade,
)

pytestmark = pytest.mark.services
STREAM_DB = 13  # the stream tests' Redis database (pipelines count up from 1)

Start = Callable[..., StreamServer]


@pytest.fixture
def stream(services: Settings) -> Iterator[Start]:
    """Start stream-only servers: stream(stale_after_s=..., **StreamSettings overrides)."""
    started: list[StreamServer] = []

    def start(stale_after_s: float = 5.0, **cfg) -> StreamServer:
        settings = Settings(
            redis_db=STREAM_DB,
            redis_port=services.redis_port,
            kafka_port=services.kafka_port,
            stale_after_s=stale_after_s,
        )
        cfg.setdefault("market_clock", "never")
        server = StreamServer(settings, StreamSettings(**cfg))
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def token(services: Settings) -> str:
    """A fresh user's key: its connection slots are this test's alone."""
    return new_user(services)[2]


def kinds_and_symbols(events: list[dict], mine: set[str]) -> list[tuple[str, str]]:
    return [(e["T"], e["symbol"]) for e in events if e.get("symbol") in mine]


# ---------------------------------------------------------------- subscriptions


def test_subscribe_and_unsubscribe_answer_the_full_set(stream: Start, token: str) -> None:
    srv = stream()
    a, b, c = symbols(3)
    with client(srv.url, token) as ws:
        assert ws.subscribe(quotes=[a, b], trades=[a]) == {
            "T": "subscription",
            "seq": 2,
            "quotes": sorted([a, b]),
            "trades": [a],
            "bars": [],
            "statuses": [],
            "trade_updates": False,
            "alerts": False,
        }
        sub = ws.subscribe(bars=[c], quotes=[b.lower()])  # case-insensitive; no duplicates
        assert (sub["quotes"], sub["trades"], sub["bars"]) == (sorted([a, b]), [a], [c])
        sub = ws.unsubscribe(quotes=[a], bars=[c, "ZZNOTMINE"])  # not subscribed: no-op
        assert (sub["quotes"], sub["trades"], sub["bars"], sub["statuses"]) == ([b], [a], [], [])
        sub = ws.subscribe()  # no kinds: changes nothing, tells the set
        assert (sub["quotes"], sub["trades"]) == ([b], [a])

        srv.publish(f"quotes:{a}", quote(a, "1.0000"))
        srv.publish(f"trades:{a}", trade(a, 1))
        srv.publish(f"quotes:{b}", quote(b, "2.0000"))
        srv.publish(f"bars:{c}", bar(c))
        got = ws.drain()
        assert sorted(kinds_and_symbols(got, {a, b, c})) == [("q", b), ("t", a)]
        check_sequence(ws.events)


def test_the_wildcard_subscribes_every_symbol_once(stream: Start, api_token: str) -> None:
    srv = stream()
    a, b, c = symbols(3)
    mine = {a, b, c}
    with client(srv.url, api_token) as one, client(srv.url, api_token) as every:
        one.subscribe(quotes=[a])
        assert every.subscribe(quotes=["*"], trades=[a])["quotes"] == ["*"]
        assert every.subscribe(quotes=[b])["quotes"] == ["*"], "symbols under '*' change nothing"
        for s in (a, b, c):
            srv.publish(f"quotes:{s}", quote(s, "3.0000"))
        srv.publish(f"quotes:{a}", quote(a, "9.0000", venue="iex"))  # venue quotes: not streamed
        srv.publish(f"trades:{b}", trade(b, 1))  # trades of b: not subscribed
        # a has a channel subscription and the pattern: Redis sends it twice, we deliver once
        assert sorted(kinds_and_symbols(every.drain(), mine)) == [("q", a), ("q", b), ("q", c)]
        assert kinds_and_symbols(one.drain(), mine) == [("q", a)]

        sub = every.unsubscribe(quotes=["*"])
        assert (sub["quotes"], sub["trades"]) == ([], [a])
        for s in (a, b, c):
            srv.publish(f"quotes:{s}", quote(s, "4.0000"))
        assert kinds_and_symbols(every.drain(), mine) == []
        assert kinds_and_symbols(one.drain(), mine) == [("q", a)]
        check_sequence(every.events)
        check_sequence(one.events)


def test_subscribing_sends_the_current_quote_and_status_at_once(
    stream: Start, api_token: str
) -> None:
    srv = stream()
    a, b = symbols(2)
    held = quote(a, "5.0000", event_ns=1_700_000_000_000_000_000)
    srv.redis.hset(
        f"quote:{a}",
        mapping={
            "NBBO": orjson.dumps(held),
            "NBBO:ns": "1",
            "iex": orjson.dumps(quote(a, "4.0000", venue="iex")),
        },
    )
    srv.redis.hset(f"status:{a}", mapping={"iex": orjson.dumps(status(a)), "iex:ns": "1"})
    with client(srv.url, api_token) as ws:
        ws.subscribe(quotes=[a, b], statuses=[a])
        ws.until(lambda e: e["T"] in ("q", "s"), timeout=2)
        ws.drain()
        got = ws.events
        quotes = [e for e in got if e["T"] == "q"]
        assert [(q["symbol"], q["venue"], q["bid_price"]) for q in quotes] == [
            (a, "NBBO", "5.0000")
        ]
        assert quotes[0]["event_ns"] == held["event_ns"], "the quote says when it was produced"
        assert "receive_ns" in quotes[0]
        assert [(e["symbol"], e["state"]) for e in got if e["T"] == "s"] == [(a, "halted")]
        check_sequence(ws.events)


def test_subscribing_to_every_symbol_sends_each_known_symbols_current_quote(
    stream: Start, api_token: str
) -> None:
    srv = stream()
    a, b, c = symbols(3)
    for s, bid in ((a, "5.0000"), (b, "6.0000")):
        srv.redis.hset(f"quote:{s}", mapping={"NBBO": orjson.dumps(quote(s, bid)), "NBBO:ns": "1"})
    srv.redis.sadd("symbols", a, b, c)  # c is known but has no quote yet
    with client(srv.url, api_token) as ws:
        ws.subscribe(quotes=["*"])
        ws.until(lambda e: e["T"] == "q" and e["symbol"] in (a, b), timeout=2)
        ws.drain()
        mine = sorted(
            (e["symbol"], e["bid_price"])
            for e in ws.events
            if e["T"] == "q" and e["symbol"] in (a, b, c)
        )
        assert mine == [(a, "5.0000"), (b, "6.0000")]
        check_sequence(ws.events)


def test_one_redis_subscription_per_process_whatever_the_clients(
    stream: Start, api_token: str, services: Settings
) -> None:
    """Fan-out is the process's: three clients (two users) on one symbol make one Redis
    subscriber of its channel, every client gets each message, and the channel is let
    go when the last one leaves."""
    srv = stream()
    (a,) = symbols(1)
    _, _, other = new_user(services)

    def subscribers() -> list[int]:
        return [n for _, n in srv.redis.pubsub_numsub(f"quotes:{a}", f"trades:{a}")]

    with (
        client(srv.url, api_token) as one,
        client(srv.url, api_token) as two,
        client(srv.url, other) as three,
    ):
        for ws in (one, two, three):
            ws.subscribe(quotes=[a], trades=[a])
        assert subscribers() == [1, 1]
        srv.publish(f"trades:{a}", trade(a, 7))
        for ws in (one, two, three):
            ws.until(lambda e: e["T"] == "t" and e["trade_id"] == "7", timeout=2)
    until(lambda: subscribers() == [0, 0], timeout=5)  # the channels let go


# ---------------------------------------------------------------- batching and conflation


def test_events_come_in_arrays_about_every_50_ms(stream: Start, api_token: str) -> None:
    srv = stream(batch_ms=50)
    (a,) = symbols(1)
    with client(srv.url, api_token) as ws:
        ws.subscribe(quotes=[a], trades=[a])
        n = 200

        def publish() -> None:  # a quote and a trade every 5 ms for about 1 s
            for i in range(n):
                srv.publish(f"quotes:{a}", quote(a, f"{i}.0000"))
                srv.publish(f"trades:{a}", trade(a, i))
                time.sleep(0.005)

        publisher = threading.Thread(target=publish)
        publisher.start()
        ws.drain(0.5)  # read as they come: frames are timed on arrival
        publisher.join()
        i = n
        frames = [(t, b) for t, b in ws.frames if any(e["T"] in ("q", "t") for e in b)]
        times = [t for t, _ in frames]
        spacing = sorted(b - a for a, b in itertools.pairwise(times))
        seconds = times[-1] - times[0]
        assert len(frames) <= seconds / 0.05 + 2, f"{len(frames)} messages in {seconds:.2f} s"
        assert len(frames) >= 10
        assert spacing[len(spacing) // 2] >= 0.040, f"median spacing {spacing}"
        for _, batch in frames:
            assert sum(1 for e in batch if e["T"] == "q") <= 1, "quotes conflated per batch"
        events = ws.events
        assert [int(e["trade_id"]) for e in events if e["T"] == "t"] == list(range(i))
        assert [e for e in events if e["T"] == "q"][-1]["bid_price"] == f"{i - 1}.0000"
        assert check_sequence(events) == 0


def test_a_burst_conflates_quotes_to_the_latest_and_keeps_every_trade(
    stream: Start, api_token: str
) -> None:
    srv = stream(batch_ms=200)
    a, b = symbols(2)
    with client(srv.url, api_token) as ws:
        ws.subscribe(quotes=[a, b], trades=[a], bars=[a], statuses=[a])
        srv.publish(f"trades:{a}", trade(a, 0))  # goes out at once: the burst waits 200 ms
        ws.until(lambda e: e["T"] == "t")
        pipe = srv.redis.pipeline(transaction=False)
        for i in range(1, 101):
            pipe.publish(f"quotes:{a}", orjson.dumps(quote(a, f"{i}.0000")))
            pipe.publish(f"quotes:{b}", orjson.dumps(quote(b, f"{i}.5000")))
            pipe.publish(f"trades:{a}", orjson.dumps(trade(a, i)))
        pipe.publish(f"bars:{a}", orjson.dumps(bar(a)))
        pipe.publish(f"status:{a}", orjson.dumps(status(a)))
        pipe.execute()
        got = ws.drain(0.6)
        quotes = [(e["symbol"], e["bid_price"]) for e in got if e["T"] == "q"]
        assert quotes == [(a, "100.0000"), (b, "100.5000")], "one quote per symbol: the latest"
        assert [int(e["trade_id"]) for e in got if e["T"] == "t"] == list(range(1, 101))
        assert [e["T"] for e in got if e["T"] in ("b", "s")] == ["b", "s"]
        assert len(ws.frames) <= 4
        assert check_sequence(ws.events) == 0


# ---------------------------------------------------------------- slow clients


def test_a_client_that_stops_reading_gets_a_gap_then_is_closed_4008(
    stream: Start, api_token: str
) -> None:
    srv = stream(batch_ms=20, max_pending=200, slow_close_s=1.0, tick_s=0.1)
    (a,) = symbols(1)
    sock = small_buffer_socket(srv.port, 4096)
    with client(srv.url, api_token, sock=sock, max_queue=1) as ws:
        ws.subscribe(trades=[a])
        # Stop reading; publish ~4 KB trades at ~2,000/s until the server gives up on us.
        sent = 0
        deadline = time.monotonic() + 20
        closed = False
        while time.monotonic() < deadline and not closed:
            pipe = srv.redis.pipeline(transaction=False)
            for _ in range(50):
                pipe.publish(f"trades:{a}", orjson.dumps(trade(a, sent, pad=1000)))
                sent += 1
            pipe.execute()
            time.sleep(0.025)
            closed = sent % 500 == 0 and _server_closed(srv)
        code = ws.closed_with(timeout=30)
    assert code == 4008
    events = [e for e in ws.events if e.get("symbol") == a or e["T"] != "t"]
    gaps = [e for e in events if e["T"] == "gap"]
    assert gaps and all(g["reason"] == "slow_consumer" for g in gaps)
    dropped = check_sequence(ws.events)
    got = [int(e["trade_id"]) for e in events if e["T"] == "t"]
    assert dropped > 0
    assert got == sorted(set(got)), "what arrives is in order, each trade once"
    # Nothing vanishes unannounced: between two delivered trades, the trades missing are
    # exactly those the gaps between them count (only trades are subscribed, and trades
    # are never conflated).
    previous, announced, skipped = None, 0, 0
    for e in ws.events:
        if e["T"] == "gap":
            announced += e["dropped"]
        elif e["T"] == "t":
            if previous is not None:
                assert int(e["trade_id"]) - previous - 1 == announced, (previous, e, announced)
                skipped += announced
            previous, announced = int(e["trade_id"]), 0
    assert skipped > 0, "the gaps fell between delivered trades, where they are checked"
    assert ws.events[-1]["T"] == "error" and ws.events[-1]["code"] == "slow_consumer"


def _server_closed(srv: StreamServer) -> bool:
    hub = srv.app.state.stream_hub.result()
    return all(s.closed for s in list(hub.sessions))


# ---------------------------------------------------------------- authentication


def _closed(ws, timeout: float = 10.0) -> tuple[int | None, list[str]]:
    code = ws.closed_with(timeout)
    return code, [e["code"] for e in ws.events if e["T"] == "error"]


def test_no_token_is_closed_4001_after_the_auth_timeout(stream: Start) -> None:
    srv = stream(auth_timeout_s=0.5)
    with client(srv.url, authed=False) as ws:
        assert _closed(ws) == (4001, ["auth_timeout"])


@pytest.mark.parametrize(
    "header",
    ["Bearer TFAAAAAAAAAAAAAAAA.nope", "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer"],
)
def test_a_bad_header_token_is_closed_4001(stream: Start, header: str) -> None:
    srv = stream(auth_timeout_s=5.0)
    with client(srv.url, authorization=header, authed=False) as ws:
        # Refused for the header itself, well before the auth timeout would close it.
        assert _closed(ws, timeout=3.0) == (4001, ["unauthorized"])


def test_a_revoked_key_is_refused(stream: Start, services: Settings) -> None:
    srv = stream()
    _, _, token = new_user(services)
    assert api_keys.revoke_key(db.pool(services.postgres), token.split(".")[0])
    with client(srv.url, token, authed=False) as ws:
        assert _closed(ws) == (4001, ["unauthorized"])
    with client(srv.url, authed=False) as ws:
        ws.send({"action": "auth", "token": token})
        assert _closed(ws) == (4001, ["unauthorized"])


def test_auth_by_first_message(stream: Start, api_token: str) -> None:
    srv = stream()
    (a,) = symbols(1)
    with client(srv.url, authed=False) as ws:
        ws.send({"action": "auth", "token": api_token})
        ok = ws.until(lambda e: e["T"] in ("authenticated", "error"))
        assert ok["T"] == "authenticated" and ok["key_id"] == api_token.split(".")[0]
        assert ws.subscribe(quotes=[a])["quotes"] == [a]
        ws.send({"action": "auth", "token": api_token})
        assert ws.until(lambda e: e["T"] == "error")["code"] == "already_authenticated"
        check_sequence(ws.events)


def test_an_action_before_auth_is_refused(stream: Start) -> None:
    srv = stream()
    with client(srv.url, authed=False) as ws:
        ws.send({"action": "subscribe", "quotes": ["AAPL"]})
        assert _closed(ws) == (4001, ["not_authenticated"])


def test_a_bad_token_by_message_is_refused(stream: Start) -> None:
    srv = stream()
    with client(srv.url, authed=False) as ws:
        ws.send({"action": "auth", "token": "TFAAAAAAAAAAAAAAAA.wrong"})
        assert _closed(ws) == (4001, ["unauthorized"])


# ---------------------------------------------------------------- limits


def test_too_many_symbols_is_refused_whole(stream: Start, api_token: str) -> None:
    srv = stream(max_symbols=3)
    a, b, c, d = symbols(4)
    with client(srv.url, api_token) as ws:
        assert ws.subscribe(quotes=[a, b], trades=[a])["quotes"] == sorted([a, b])
        err = ws.subscribe(bars=[c, d])
        assert (err["T"], err["code"]) == ("error", "too_many_symbols")
        sub = ws.subscribe()
        assert (sub["quotes"], sub["trades"], sub["bars"]) == (sorted([a, b]), [a], [])
        assert ws.subscribe(bars=[c], statuses=[a, b, c])["bars"] == [c], "3 distinct symbols"
        assert ws.subscribe(quotes=["*"], trades=["*"])["quotes"] == ["*"], "'*' is not counted"
        check_sequence(ws.events)


def test_connections_per_key_are_limited_across_processes(stream: Start, token: str) -> None:
    one = stream(max_connections_per_key=2)
    other = stream(max_connections_per_key=2)  # another API process: its own hub
    with client(one.url, token), client(other.url, token):
        for srv in (one, other):
            with client(srv.url, token, authed=False) as ws:
                assert _closed(ws) == (4029, ["too_many_connections"])
    with client(other.url, token), client(one.url, token) as ws:  # slots were released
        assert ws.subscribe(quotes=["AAPL"])["quotes"] == ["AAPL"]


def test_a_crashed_process_slots_expire(stream: Start, token: str) -> None:
    srv = stream(max_connections_per_key=1, slot_ttl_s=1.0)
    key_id = token.split(".")[0]
    sec, usec = srv.redis.time()
    expires_ms = sec * 1000 + usec // 1000 + 2000  # to the millisecond, as the server reads it
    srv.redis.zadd(f"stream:conns:{key_id}", {"ghost": expires_ms})  # nobody refreshes it
    with client(srv.url, token, authed=False) as ws:
        assert _closed(ws) == (4029, ["too_many_connections"])
    while (t := srv.redis.time())[0] * 1000 + t[1] // 1000 <= expires_ms:
        time.sleep(0.05)
    with client(srv.url, token) as ws:
        assert ws.subscribe(trades=["AAPL"])["trades"] == ["AAPL"]


# ---------------------------------------------------------------- bad input


def test_bad_messages_answer_typed_errors_and_keep_the_connection(
    stream: Start, api_token: str
) -> None:
    srv = stream()
    with client(srv.url, api_token) as ws:
        for msg, code in [
            ("{not json", "invalid_json"),
            ("[1, 2]", "invalid_message"),
            ({"action": 3}, "invalid_message"),
            ({"action": "dance"}, "unknown_action"),
            ({"action": "subscribe", "quotes": "AAPL"}, "invalid_message"),
            ({"action": "subscribe", "quote": ["AAPL"]}, "invalid_message"),
            ({"action": "subscribe", "quotes": ["AA PL"]}, "invalid_symbol"),
            ({"action": "auth"}, "invalid_message"),
        ]:
            ws.send(msg)
            err = ws.until(lambda e: e["T"] == "error")
            assert err["code"] == code, (msg, err)
            assert err["msg"]
        ws.send(b'{"action": "ping", "id": 42}')  # binary frames are read as JSON too
        assert ws.until(lambda e: e["T"] == "pong")["id"] == 42
        assert ws.subscribe()["quotes"] == []
        check_sequence(ws.events)


def test_an_oversize_message_is_answered_then_closed_1009(stream: Start, api_token: str) -> None:
    srv = stream(max_message_bytes=65_536)
    with client(srv.url, api_token) as ws:
        ws.send({"action": "subscribe", "quotes": ["A"] * 20_000})  # ~100 KB
        assert _closed(ws) == (1009, ["message_too_big"])


# ---------------------------------------------------------------- isolation


def test_a_client_gets_only_what_it_subscribed_to(
    stream: Start, api_token: str, token: str
) -> None:
    srv = stream()
    a, b = symbols(2)
    mine = {a, b}
    with client(srv.url, api_token) as alice, client(srv.url, token) as bob:
        alice.subscribe(quotes=[a], trades=[b])
        bob.subscribe(quotes=[b], bars=[a], statuses=[a])
        for s in (a, b):
            srv.publish(f"quotes:{s}", quote(s, "1.0000"))
            srv.publish(f"trades:{s}", trade(s, 1))
            srv.publish(f"bars:{s}", bar(s))
            srv.publish(f"status:{s}", status(s))
        assert sorted(kinds_and_symbols(alice.drain(), mine)) == [("q", a), ("t", b)]
        assert sorted(kinds_and_symbols(bob.drain(), mine)) == [("b", a), ("q", b), ("s", a)]
        bob.unsubscribe(quotes=[b], bars=["*"], statuses=[a])
        for s in (a, b):
            srv.publish(f"quotes:{s}", quote(s, "2.0000"))
            srv.publish(f"bars:{s}", bar(s))
        assert kinds_and_symbols(bob.drain(), mine) == []
        assert kinds_and_symbols(alice.drain(), mine) == [("q", a)]


# ---------------------------------------------------------------- staleness


def test_a_quiet_symbol_gets_one_stale_marker_while_the_market_is_open(
    stream: Start, api_token: str
) -> None:
    srv = stream(stale_after_s=0.5, market_clock="always", tick_s=0.1)
    a, b = symbols(2)
    with client(srv.url, api_token) as ws:
        ws.subscribe(quotes=[a, b])
        srv.publish(f"quotes:{a}", quote(a, "1.0000"))
        ws.until(lambda e: e["T"] == "q")
        seen = time.monotonic()
        stale = ws.until(lambda e: e["T"] == "stale", timeout=3)
        assert stale["symbol"] == a and stale["after_s"] == 0.5
        assert time.monotonic() - seen >= 0.4
        assert [e for e in ws.drain(0.8) if e["T"] == "stale"] == [], "once per quiet spell"
        srv.publish(f"quotes:{a}", quote(a, "2.0000"))  # live again, and quiet again
        ws.until(lambda e: e["T"] == "q")
        assert ws.until(lambda e: e["T"] == "stale", timeout=3)["symbol"] == a
        check_sequence(ws.events)


def test_no_stale_marker_while_the_market_is_closed(stream: Start, api_token: str) -> None:
    srv = stream(stale_after_s=0.3, market_clock="never", tick_s=0.1)
    (a,) = symbols(1)
    with client(srv.url, api_token) as ws:
        ws.subscribe(quotes=[a])
        srv.publish(f"quotes:{a}", quote(a, "1.0000"))
        assert [e["T"] for e in ws.drain(1.0) if e.get("symbol") == a] == ["q"]


# ---------------------------------------------------------------- end to end


RECORDINGS = {"iex": SAMPLE / "iex.tops", "nasdaq": SAMPLE / "nasdaq.jsonl"}


def test_a_replayed_session_reaches_a_websocket_client(pipeline: Pipeline, api_token: str) -> None:
    """Kafka -> normalize -> quotes/candles flows -> Redis pub/sub -> hub -> this client."""
    pipeline.start()
    url = f"ws://127.0.0.1:{pipeline.settings.api_port}/v1/stream"
    symbol = "AAPL"
    trades = [
        e
        for venue, path in RECORDINGS.items()
        for e in parse_recording(path, venue)[0]
        if isinstance(e, Trade) and e.symbol == symbol
    ]
    candles = expected_candles(RECORDINGS)[symbol]
    with client(url, api_token) as ws:
        ws.subscribe(quotes=[symbol, "MSFT"], trades=[symbol], bars=[symbol], statuses=["*"])
        threads = [
            threading.Thread(
                target=replay,
                args=(path, venue, pipeline.settings.bootstrap, None, pipeline.topics.raw(venue)),
            )
            for venue, path in RECORDINGS.items()
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        bars: dict[str, dict] = {}
        got_trades: set[tuple[str, str]] = set()
        while time.monotonic() < deadline:
            try:
                batch = ws.recv(5.0)
            except TimeoutError:
                if len(got_trades) >= len(trades) and len(bars) == len(candles):
                    break
                continue
            for e in batch:
                if e["T"] == "t":
                    got_trades.add((e["venue"], e["trade_id"]))
                elif e["T"] == "b":
                    bars[e["start"]] = e
        for t in threads:
            t.join()
    events = ws.events
    check_sequence(events)
    assert got_trades == {(t.venue, t.trade_id) for t in trades}, "every trade, none dropped"
    quotes = [e for e in events if e["T"] == "q"]
    assert {q["symbol"] for q in quotes} == {symbol, "MSFT"}
    assert {q["venue"] for q in quotes} == {"NBBO"}
    last = [q for q in quotes if q["symbol"] == symbol][-1]
    held = orjson.loads(pipeline_redis(pipeline).hget(f"quote:{symbol}", "NBBO"))
    assert (last["bid_price"], last["ask_price"], last["event_ns"]) == (
        held["bid_price"],
        held["ask_price"],
        held["event_ns"],
    ), "the stream ends on the quote Redis holds"
    statuses = {e["symbol"] for e in events if e["T"] == "s"}
    assert statuses, "the sample's halt and trading statuses"
    want = {
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.start_ns // 1_000_000_000)): c
        for c in candles
    }
    assert set(bars) == set(want)
    for start, c in want.items():
        b = bars[start]
        assert (b["open"], b["close"], b["volume"], b["trades"]) == (
            _s(c.open),
            _s(c.close),
            c.volume,
            c.trades,
        ), start
        assert Decimal(b["vwap"]) == c.vwap


def _s(d: Decimal | None) -> str | None:
    return None if d is None else str(d)


def pipeline_redis(p: Pipeline):
    import redis

    return redis.Redis.from_url(p.settings.redis)


def test_closed_clients_leave_no_trace_in_the_hub(stream: Start, api_token: str) -> None:
    srv = stream()
    a, b = symbols(2)
    with client(srv.url, api_token) as ws:
        ws.subscribe(quotes=[a], trades=["*"], bars=[b])
    hub = srv.app.state.stream_hub.result()
    deadline = time.monotonic() + 5
    while hub.sessions or hub.by_channel or any(hub.wild.values()):
        assert time.monotonic() < deadline, "the hub still holds the closed client"
        time.sleep(0.05)
    assert not hub.sessions and not hub.by_channel and not any(hub.wild.values())
    with pytest.raises(ConnectionClosed):
        ws.ws.send("{}")


def test_after_losing_redis_the_hub_resyncs_and_streams_again(
    stream: Start, api_token: str
) -> None:
    srv = stream()
    (a,) = symbols(1)
    srv.redis.hset(f"quote:{a}", mapping={"NBBO": orjson.dumps(quote(a, "7.0000")), "NBBO:ns": "1"})
    with client(srv.url, api_token) as ws:
        ws.subscribe(quotes=[a], trades=[a])
        assert ws.until(lambda e: e["T"] == "q")["bid_price"] == "7.0000"
        hub = srv.app.state.stream_hub.result()
        [victim] = [c for c in srv.redis.client_list() if c["name"] == hub.name]
        srv.redis.client_kill_filter(_id=victim["id"])
        assert ws.until(lambda e: e["T"] == "resync")["reason"] == "upstream_reconnected"
        assert ws.until(lambda e: e["T"] == "q")["bid_price"] == "7.0000", "current quote again"
        srv.publish(f"trades:{a}", trade(a, 1))
        assert ws.until(lambda e: e["T"] == "t")["trade_id"] == "1", "live again"
        check_sequence(ws.events)
