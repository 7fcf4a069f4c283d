"""End to end through real Kafka, Redis and ClickHouse: replay a session, check the outcome."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from infra.replay import replay
from schemas.marketdata import NBBO_VENUE
from tests.conftest import SAMPLE, Pipeline
from tests.e2e_support import (
    candle_from_api,
    eventually,
    expected_candles,
    expected_last_quotes,
    nbbo_of,
    parse_recording,
    read_topic,
)

RECORDINGS = {"iex": SAMPLE / "iex.tops", "nasdaq": SAMPLE / "nasdaq.jsonl"}
pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def expected():
    return expected_candles(RECORDINGS), expected_last_quotes(RECORDINGS)


def replay_all(p: Pipeline, speed: float | None = None) -> None:
    threads = [
        threading.Thread(
            target=replay, args=(path, venue, p.settings.bootstrap, speed, p.topics.raw(venue))
        )
        for venue, path in RECORDINGS.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def api_candles(p: Pipeline, symbols) -> dict:
    out = {}
    for s in symbols:
        r = p.get(f"/v1/candles/{s}", interval="1m", limit=10_000)
        out[s] = (
            [candle_from_api(s, row) for row in r.json()["candles"]]
            if r.status_code == 200
            else r.status_code
        )
    return out


def assert_candles_and_quotes(p: Pipeline, expected) -> None:
    candles, last_quotes = expected
    got = eventually(lambda: api_candles(p, candles), lambda g: g == candles)
    for symbol in candles:
        assert got[symbol] == candles[symbol], f"candles of {symbol} differ"
    for symbol, venues in last_quotes.items():
        body = eventually(
            lambda s=symbol: p.get(f"/v1/quotes/{s}").json(),
            lambda b, v=venues: all(
                b.get("venues", {}).get(name, {}).get("bid_price") == str(q.bid_price)
                for name, q in v.items()
            ),
            timeout_s=30,
        )
        for name, q in venues.items():
            assert body["venues"][name]["bid_price"] == str(q.bid_price), (symbol, name)
            assert body["venues"][name]["ask_size"] == q.ask_size, (symbol, name)
        nbbo = nbbo_of(venues)
        assert Decimal(body["nbbo"]["bid_price"]) == nbbo.bid_price, symbol
        assert Decimal(body["nbbo"]["ask_price"]) == nbbo.ask_price, symbol
        assert body["nbbo"]["bid_size"] == nbbo.bid_size, symbol


def test_replayed_session_gives_independently_computed_candles_and_quotes(pipeline, expected):
    pipeline.start()
    replay_all(pipeline)
    assert_candles_and_quotes(pipeline, expected)
    # Replaying the same session again changes nothing: every write is idempotent.
    replay_all(pipeline)
    time.sleep(3)
    assert_candles_and_quotes(pipeline, expected)


def test_two_workers_per_flow_give_the_same_candles_and_quotes(pipeline, expected):
    pipeline.start(workers=2)
    replay_all(pipeline, speed=None)
    assert_candles_and_quotes(pipeline, expected)


@pytest.mark.parametrize("split", [False, True], ids=["one-process", "split-processes"])
def test_killed_and_restarted_pipeline_ends_identical(pipeline, expected, split):
    pipeline.start(split=split)
    feeder = threading.Thread(target=replay_all, args=(pipeline, 60.0))
    feeder.start()
    time.sleep(6)  # mid-replay: flows have snapshotted some epochs, not all
    pipeline.kill()  # with --split, the kernel kills the flow children with it
    time.sleep(1)
    pipeline.start(split=split)
    feeder.join()
    assert_candles_and_quotes(pipeline, expected)


def test_every_malformed_message_lands_in_the_deadletter_topic(pipeline):
    pipeline.start()
    replay_all(pipeline)
    bad = {venue: parse_recording(path, venue)[1] for venue, path in RECORDINGS.items()}
    wanted = sum(len(v) for v in bad.values())
    assert wanted > 0, "the sample must contain malformed input"
    dead = eventually(
        lambda: read_topic(pipeline.settings.bootstrap, pipeline.topics.deadletter, idle_s=1),
        lambda msgs: len(msgs) >= wanted,
        timeout_s=60,
    )
    assert sorted(m.value() for m in dead) == sorted(b.raw for v in bad.values() for b in v)
    for m in dead:
        headers = dict(m.headers())
        assert headers["reason"], "each dead letter says why"
        assert headers["venue"].decode() in RECORDINGS
    # ...and every good message went through: the quotes for every symbol arrived.
    symbols = sorted(expected_last_quotes(RECORDINGS))
    r = pipeline.get("/v1/quotes", symbols=",".join(symbols))
    assert r.status_code == 200, r.text
    assert set(r.json()["quotes"]) == set(symbols)
    assert all(q["nbbo"] for q in r.json()["quotes"].values())
    assert NBBO_VENUE not in r.json()["quotes"][symbols[0]]["venues"]
