"""QuoteStore on real Redis (its own database index, flushed first): forward-only writes,
NBBO versions, pub/sub on accepted writes only, conflation within a batch, known()."""

from __future__ import annotations

import time
from decimal import Decimal

import orjson
import pytest

from infra.quote_store import QuoteStore, StoredQuote, quote_payload, status_payload
from infra.settings import Settings
from schemas.marketdata import NBBO_VENUE, Quote, Security, Status, SystemEvent

pytestmark = pytest.mark.services

T0 = 1_795_530_600_000_000_000
D = Decimal
DB = 14


@pytest.fixture
def store(services: Settings) -> QuoteStore:
    settings = Settings(redis_port=services.redis_port, redis_db=DB)
    s = QuoteStore(settings.redis)
    s.redis.flushdb()
    return s


def q(bid: str, ns: int, venue: str = "iex", symbol: str = "AAPL", seq: int = 0) -> Quote:
    return Quote(symbol, venue, D(bid), 100, D(bid) + D("0.0200"), 200, ns, ns + 7, seq)


def stored(quote: Quote) -> StoredQuote:
    return StoredQuote(
        quote.venue,
        quote.bid_price,
        quote.bid_size,
        quote.ask_price,
        quote.ask_size,
        quote.event_ns,
        quote.receive_ns,
    )


class Listener:
    """A pub/sub subscription opened before the writes it should see."""

    def __init__(self, store: QuoteStore, *channels: str) -> None:
        self.pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*channels)
        # Wait until the server has registered every subscription, so nothing is missed.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            counts = dict(store.redis.pubsub_numsub(*channels))
            if all(counts.get(c.encode(), 0) >= 1 for c in channels):
                return
            time.sleep(0.01)
        raise AssertionError(f"could not subscribe to {channels}")

    def drain(self, quiet_s: float = 0.3) -> list[tuple[str, bytes]]:
        out, last = [], time.monotonic()
        while time.monotonic() - last < quiet_s:
            msg = self.pubsub.get_message(timeout=0.05)
            if msg and msg["type"] == "message":
                out.append((msg["channel"].decode(), msg["data"]))
                last = time.monotonic()
        self.pubsub.close()
        return out


def test_writes_only_move_forward_in_event_time(store):
    newer, older = q("10.0000", T0 + 10), q("9.0000", T0 + 5)
    assert store.apply([newer]) == 1
    assert store.apply([older]) == 0
    assert store.quotes("AAPL") == {"iex": stored(newer)}
    # Equal event time: a no-op, even with other prices.
    assert store.apply([q("11.0000", T0 + 10)]) == 0
    assert store.quotes("AAPL") == {"iex": stored(newer)}
    newest = q("12.0000", T0 + 11)
    assert store.apply([newest]) == 1
    assert store.quotes("AAPL") == {"iex": stored(newest)}


def test_versions_are_per_symbol_and_venue(store):
    assert store.apply([q("10.0000", T0 + 10, "iex"), q("20.0000", T0 + 10, "iex", "MSFT")]) == 2
    # Older than iex's AAPL quote, but nasdaq's first: accepted.
    assert store.apply([q("9.0000", T0 + 1, "nasdaq")]) == 1
    assert set(store.quotes("AAPL")) == {"iex", "nasdaq"}
    assert store.many_quotes(["AAPL", "MSFT", "NONE"]) == {
        "AAPL": store.quotes("AAPL"),
        "MSFT": {"iex": stored(q("20.0000", T0 + 10, "iex", "MSFT"))},
        "NONE": {},
    }


def test_nbbo_is_ordered_by_event_time_then_seq(store):
    def nbbo(bid: str, ns: int, seq: int) -> Quote:
        return q(bid, ns, NBBO_VENUE, seq=seq)

    assert store.apply([nbbo("10.0000", T0 + 10, 2 * T0 + 15)]) == 1
    assert store.apply([nbbo("9.0000", T0 + 10, 2 * T0 + 14)]) == 0, "smaller seq"
    assert store.apply([nbbo("9.5000", T0 + 10, 2 * T0 + 15)]) == 0, "equal version"
    assert store.apply([nbbo("9.0000", T0 + 9, 3 * T0)]) == 0, "older event_ns, larger seq"
    assert store.apply([nbbo("11.0000", T0 + 10, 2 * T0 + 16)]) == 1, "same event_ns, newer seq"
    assert store.quotes("AAPL")[NBBO_VENUE].bid_price == D("11.0000")
    assert store.apply([nbbo("12.0000", T0 + 11, 0)]) == 1, "newer event_ns wins whatever seq"
    assert store.quotes("AAPL")[NBBO_VENUE].bid_price == D("12.0000")
    raw = store.redis.hget("quote:AAPL", f"{NBBO_VENUE}:ns").decode()
    assert raw == nbbo("12.0000", T0 + 11, 0).version


def test_status_is_forward_only_too(store):
    halted = Status("AAPL", "iex", "halted", "T1", T0 + 10, T0 + 11)
    stale = Status("AAPL", "iex", "trading", "", T0 + 5, T0 + 12)
    assert store.apply([halted]) == 1
    assert store.apply([stale]) == 0
    assert store.apply([Status("AAPL", "iex", "trading", "", T0 + 10, 0)]) == 0
    assert store.statuses("AAPL") == {"iex": orjson.loads(status_payload(halted))}
    assert store.quotes("AAPL") == {}, "status and quotes live apart"


def test_only_accepted_writes_are_published(store):
    listener = Listener(store, "quotes:AAPL", "status:AAPL", "quotes:MSFT")
    first, older, equal = q("10.0000", T0 + 10), q("9.0000", T0 + 5), q("9.5000", T0 + 10)
    newer = q("10.5000", T0 + 20)
    halt = Status("AAPL", "iex", "halted", "T1", T0 + 10, T0 + 11)
    store.apply([first])
    store.apply([older])
    store.apply([equal])
    store.apply([halt])
    store.apply([halt])  # a redelivery
    store.apply([newer])
    got = listener.drain()
    assert got == [
        ("quotes:AAPL", quote_payload(first)),
        ("status:AAPL", status_payload(halt)),
        ("quotes:AAPL", quote_payload(newer)),
    ]
    payload = orjson.loads(got[0][1])
    assert payload["bid_price"] == "10.0000" and isinstance(payload["ask_price"], str)


def test_a_batch_is_conflated_to_the_newest_per_symbol_and_venue(store):
    listener = Listener(store, "quotes:AAPL")
    batch = [
        q("10.0300", T0 + 3),
        q("10.0100", T0 + 1),
        q("20.0000", T0 + 2, "nasdaq"),
        q("10.0200", T0 + 2),
        q("19.0000", T0 + 1, "nasdaq"),
    ]
    assert store.apply(batch) == 2, "one write per (symbol, venue)"
    assert store.quotes("AAPL") == {
        "iex": stored(q("10.0300", T0 + 3)),
        "nasdaq": stored(q("20.0000", T0 + 2, "nasdaq")),
    }
    got = listener.drain()
    assert sorted(got) == sorted(
        [
            ("quotes:AAPL", quote_payload(q("10.0300", T0 + 3))),
            ("quotes:AAPL", quote_payload(q("20.0000", T0 + 2, "nasdaq"))),
        ]
    ), "conflated-away quotes are never published"


def test_known_lists_every_symbol_seen(store):
    store.apply(
        [
            q("10.0000", T0),
            Status("HALT", "nasdaq", "halted", "LUDP", T0, T0),
            Security("NEWCO", "iex", 100, False, T0, T0),
            SystemEvent("iex", "O", T0, T0),  # no symbol: ignored
        ]
    )
    assert store.known(["AAPL", "HALT", "NEWCO", "MSFT", ""]) == [True, True, True, False, False]
    sec = orjson.loads(store.redis.hget("security:NEWCO", "iex"))
    assert sec == {
        "T": "d",
        "symbol": "NEWCO",
        "venue": "iex",
        "round_lot": 100,
        "test": False,
        "event_ns": T0,
    }


def test_equal_versions_give_the_same_result_whatever_the_batching(store):
    a, b = q("10.0000", T0 + 10), q("10.5000", T0 + 10)  # same venue, same event time
    store.apply([a])
    store.apply([b])
    split = store.quotes("AAPL")
    store.redis.flushdb()
    store.apply([a, b])
    assert store.quotes("AAPL") == split


def test_apply_counts_one_write_per_new_security(store):
    assert store.apply([Security("NEWCO", "iex", 100, False, T0, T0)]) == 1


def test_a_halt_and_its_resumption_in_one_batch_are_both_published_in_order(store):
    listener = Listener(store, "status:HALT")
    halt = Status("HALT", "iex", "halted", "T1", T0 + 1, T0 + 1)
    resume = Status("HALT", "iex", "trading", "", T0 + 2, T0 + 2)
    stale = Status("HALT", "iex", "paused", "LUDP", T0, T0)  # older than both: refused
    assert store.apply([halt, stale, resume]) == 2
    assert store.statuses("HALT")["iex"]["state"] == "trading"
    assert listener.drain() == [
        ("status:HALT", status_payload(halt)),
        ("status:HALT", status_payload(resume)),
    ]
