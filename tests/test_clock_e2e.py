"""Through `tapeflow run` in feed-clock mode (TAPEFLOW_CLOCK=feed): the sample session
(2026-11-24 09:30-10:00 New York, one symbol halted for a few minutes) is replayed in two
halves cut in the middle of the halt. After each half, checked after the fact:

- GET /v1/clock reads the newest event time of what was replayed (computed here from the
  recording files), and an older event never moves it back;
- GET /v1/quotes/{symbol} shows the halt at both venues, then the resumption;
- WS /v1/stream `statuses` delivered the halt and the resumption of both venues in order;
- order placement goes by the same clock: a feed time on Thanksgiving holds a new order.

Redis pub/sub ignores the database, so stream events are matched on their exact event
times: another pipeline replaying the same sample at the same moment cannot confuse them.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from infra import db
from infra.ledger import Ledger
from infra.recording import RecordingWriter, read_recording
from infra.replay import replay
from schemas import json_feed
from schemas.json_feed import format_time
from schemas.marketdata import Status
from tests.conftest import SAMPLE, Pipeline, new_user
from tests.e2e_support import eventually, parse_recording
from tests.stream_support import client

pytestmark = pytest.mark.services
RECORDINGS = {"iex": SAMPLE / "iex.tops", "nasdaq": SAMPLE / "nasdaq.jsonl"}
MINUTE_NS = 60_000_000_000
THANKSGIVING_NOON_NS = 1_795_712_400_000_000_000  # 2026-11-26T17:00:00Z, 12:00 New York


def as_clock(ns: int) -> str:
    """How GET /v1/clock writes an event time: to the microsecond, nine digits."""
    return format_time(ns // 1_000 * 1_000)


def halt_of(paths: dict[str, Path]) -> tuple[str, dict[str, Status], dict[str, Status]]:
    """The halted symbol, and per venue its halt and its resumption, from the recordings."""
    halts: dict[str, Status] = {}
    resumes: dict[str, Status] = {}
    for venue, path in paths.items():
        events, _ = parse_recording(path, venue)
        statuses = [e for e in events if isinstance(e, Status)]
        halt = next(s for s in statuses if s.state == "halted")
        halts[venue] = halt
        resumes[venue] = next(
            s
            for s in statuses
            if s.symbol == halt.symbol and s.state == "trading" and s.event_ns > halt.event_ns
        )
    (symbol,) = {s.symbol for s in halts.values()}
    return symbol, halts, resumes


def split_at(paths: dict[str, Path], cut_ns: int, out: Path) -> tuple[dict, dict]:
    first, second = {}, {}
    for venue, path in paths.items():
        a, b = out / f"1-{path.name}", out / f"2-{path.name}"
        with RecordingWriter(a) as one, RecordingWriter(b) as two:
            for rec in read_recording(path):
                (one if rec.event_ns < cut_ns else two).write(rec.payload)
        first[venue], second[venue] = a, b
    return first, second


def newest_ns(paths: dict[str, Path]) -> int:
    return max(e.event_ns for v, p in paths.items() for e in parse_recording(p, v)[0])


def replay_all(p: Pipeline, paths: dict[str, Path]) -> None:
    for venue, path in paths.items():
        replay(path, venue, p.settings.bootstrap, None, p.topics.raw(venue))


def one_status(p: Pipeline, path: Path, symbol: str, event_ns: int) -> None:
    """A single nasdaq status message for `symbol`, replayed."""
    with RecordingWriter(path) as w:
        w.write(json_feed.encode_event(Status(symbol, "nasdaq", "trading", "", event_ns, 0)))
    replay(path, "nasdaq", p.settings.bootstrap, None, p.topics.raw("nasdaq"))


def statuses(events: list[dict], symbol: str, venue: str, wanted: set[int]) -> list[tuple]:
    return [
        (e["state"], e["reason"], e["event_ns"])
        for e in events
        if e["T"] == "s" and e["symbol"] == symbol and e["venue"] == venue
        if e["event_ns"] in wanted
    ]


def test_a_replay_drives_the_clock_and_shows_its_halt(services, pipeline: Pipeline, tmp_path):
    symbol, halts, resumes = halt_of(RECORDINGS)
    halted_until = min(s.event_ns for s in resumes.values())
    halted_from = max(s.event_ns for s in halts.values())
    assert halted_until - halted_from > MINUTE_NS, "the sample's halt lasts minutes"
    first, second = split_at(RECORDINGS, (halted_from + halted_until) // 2, tmp_path)
    end_of_first, end_of_all = newest_ns(first), newest_ns(RECORDINGS)

    _, account, token = new_user(services, rate_limit=10_000)
    Ledger(db.pool(services.postgres), pipeline.topics).deposit(account.id, Decimal("1000"))
    pipeline.env["TAPEFLOW_CLOCK"] = "feed"
    pipeline.start()
    api = httpx.Client(base_url=pipeline.url, headers=pipeline.headers, timeout=30)
    assert api.get("/v1/clock").json()["source"] == "wall", "no feed time yet"

    def clock() -> dict:
        return api.get("/v1/clock").json()

    def quote() -> dict:
        r = api.get(f"/v1/quotes/{symbol}")
        return r.json() if r.status_code == 200 else {}

    def venue_states(body: dict) -> dict:
        return {v: s["state"] for v, s in body.get("status", {}).items()}

    wanted = {s.event_ns for s in (*halts.values(), *resumes.values())}
    ws_url = pipeline.url.replace("http://", "ws://") + "/v1/stream"
    with client(ws_url, pipeline.headers["Authorization"].removeprefix("Bearer ")) as ws:
        assert ws.subscribe(statuses=[symbol])["statuses"] == [symbol]

        # First half: up to the middle of the halt.
        replay_all(pipeline, first)
        now = eventually(clock, lambda b: b["timestamp"] == as_clock(end_of_first))
        assert now["timestamp"] == as_clock(end_of_first), now
        assert (now["source"], now["session"], now["is_open"]) == ("feed", "regular", True)
        assert now["trading_day"]["date"] == "2026-11-24"
        during = eventually(
            quote, lambda b: venue_states(b) == {"iex": "halted", "nasdaq": "halted"}
        )
        assert during["halted"] is True, during
        for venue, halt in halts.items():
            assert during["status"][venue] == {
                "state": "halted",
                "reason": halt.reason,
                "as_of": format_time(halt.event_ns),
            }
        ws.until(lambda e: all(statuses(ws.events, symbol, v, wanted) for v in halts), 60)

        # Second half: the resumption and the rest of the session.
        replay_all(pipeline, second)
        now = eventually(clock, lambda b: b["timestamp"] == as_clock(end_of_all))
        assert now["timestamp"] == as_clock(end_of_all), now
        after = eventually(quote, lambda b: b.get("halted") is False)
        assert after["halted"] is False, after
        for venue, resume in resumes.items():
            assert after["status"][venue]["state"] == "trading"
            assert after["status"][venue]["as_of"] == format_time(resume.event_ns)
        ws.until(lambda e: all(len(statuses(ws.events, symbol, v, wanted)) >= 2 for v in halts), 60)
        ws.drain(0.3)
    for venue in halts:
        got = list(dict.fromkeys(statuses(ws.events, symbol, venue, wanted)))  # once each
        assert got == [
            ("halted", halts[venue].reason, halts[venue].event_ns),
            ("trading", resumes[venue].reason, resumes[venue].event_ns),
        ], venue

    # An older event (09:00 New York) is processed but never moves the clock back.
    one_status(pipeline, tmp_path / "old.jsonl", "ZCLKOLD", end_of_all - 90 * MINUTE_NS)
    eventually(lambda: api.get("/v1/quotes/ZCLKOLD").status_code, lambda c: c == 200)
    assert clock()["timestamp"] == as_clock(end_of_all)

    # A feed time on Thanksgiving: closed, and a new order is held for the next open.
    one_status(pipeline, tmp_path / "new.jsonl", "ZCLKNEW", THANKSGIVING_NOON_NS)
    now = eventually(clock, lambda b: b["timestamp"] == as_clock(THANKSGIVING_NOON_NS))
    assert (now["session"], now["is_open"]) == ("closed", False), now
    assert now["next_open"] == "2026-11-27T14:30:00.000000000Z"
    assert now["next_close"] == "2026-11-27T18:00:00.000000000Z"  # the half day
    order = httpx.post(
        f"{pipeline.url}/v1/orders",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "symbol": "AAPL",
            "side": "buy",
            "type": "limit",
            "qty": "1",
            "limit_price": "1.00",
            "time_in_force": "day",
        },
        timeout=30,
    )
    assert order.status_code == 200, order.text
    assert order.json()["status"] == "accepted", "held: the feed's market is closed"
