"""Price alerts end to end through `tapeflow run`: alerts created over REST reach the alerts
flow through the outbox and Kafka; a replayed feed (a scripted two-day session of XALR on
nasdaq, and the recorded sample session's nasdaq file for AAPL) crosses them; each firing
lands in PostgreSQL once and reaches the owner's WS /v1/stream once. Then the pipeline is
SIGKILLed, restarted on the same recovery store, and the same feed replayed again: no
firing is stored or streamed twice.

What should fire is computed here, independently, from the replayed events: the trades
that may set the last price (sale conditions), each crossing of a level, the cool-down in
feed time, Monday's last regular trade as Tuesday's previous close.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import httpx
import pytest

from infra import db
from infra.quote_store import QuoteStore
from infra.replay import replay
from schemas.marketdata import NBBO_VENUE, Quote, Security, Trade
from tests.conftest import SAMPLE, Pipeline, new_user
from tests.e2e_support import parse_recording, until
from tests.stream_support import client

pytestmark = pytest.mark.services
D = Decimal
SYM = "XALR"
S = 1_000_000_000
TUE = datetime.fromisoformat("2026-11-24T15:00:00+00:00")  # 10:00 New York

# XALR's trades: (time, price, conditions); "@" regular, "I" odd lot, "T" extended hours.
WARMUP = [("2026-11-23T14:31:00Z", "49", "@"), ("2026-11-23T14:31:01Z", "51", "@")]
MONDAY = [
    ("2026-11-23T15:00:00Z", "99", "@"),
    ("2026-11-23T20:59:00Z", "100", "@"),  # Monday's close: the last regular trade
    ("2026-11-23T21:30:00Z", "104", "T"),  # after hours: neither a last sale nor the close
]
TUESDAY_PRICES = [
    "100.5", "101", "100", "101.2", "100.9", "102", "100",
    "101", "103", "99", "101.5", "100", "101", "100", "101",
]  # fmt: skip
TUESDAY = [
    ((TUE + timedelta(seconds=10 * i)).isoformat().replace("+00:00", "Z"), p, "@")
    for i, p in enumerate(TUESDAY_PRICES)
]
ODD_LOT = ("2026-11-24T15:00:25Z", "103.5", "I")  # would cross 103 if it counted
# XALR's nasdaq quotes (the NBBO: one venue): mids 99.5, 98.5, 97.9, 98.5, 97.0.
QUOTES = [
    (TUE + timedelta(seconds=5 + 10 * j), bid, ask)
    for j, (bid, ask) in enumerate(
        [("99.4", "99.6"), ("98.4", "98.6"), ("97.8", "98.0"), ("98.4", "98.6"), ("96.9", "97.1")]
    )
]


def t_line(when: str, price: str, cond: str, tid: str, sym: str = SYM) -> str:
    return (
        f'{{"T":"t","S":"{sym}","i":"{tid}","x":"Q","p":"{price}","s":100,'
        f'"t":"{when}","c":["{cond}"]}}'
    )


def q_line(when: datetime, bid: str, ask: str, sym: str = SYM) -> str:
    t = when.isoformat().replace("+00:00", "Z")
    return (
        f'{{"T":"q","S":"{sym}","bx":"Q","bp":"{bid}","bs":100,"ax":"Q","ap":"{ask}",'
        f'"as":100,"t":"{t}"}}'
    )


def ns_of(iso: str) -> int:
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(t.timestamp()) * S + t.microsecond * 1000


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def script_trades() -> list[tuple[str, str, str]]:
    trades = MONDAY + TUESDAY[:3] + [ODD_LOT] + TUESDAY[3:]
    return sorted(trades, key=lambda t: t[0])


def crossings(series: list[tuple[int, Decimal]], level: Decimal, up: bool, cooldown_s: int | None):
    """Times at which an alert on `level` fires over `series` (time ns, price): every
    crossing when recurring (cooldown_s), not within the cool-down of the last firing;
    only the first one when not."""
    fired: list[int] = []
    for (_, before), (t, p) in pairwise(series):
        crossed = before < level <= p if up else before > level >= p
        if not crossed:
            continue
        if cooldown_s is None:
            return [t]
        if not fired or t - fired[-1] >= cooldown_s * S:
            fired.append(t)
    return fired


def eligible(trades: list[tuple[str, str, str]]) -> list[tuple[int, Decimal]]:
    return [(ns_of(w), D(p)) for w, p, c in trades if c not in ("I", "T")]


def test_alerts_fire_once_through_the_pipeline_restarts_and_replays(
    services, pipeline: Pipeline, tmp_path: Path
) -> None:
    ns = time.time_ns()
    QuoteStore(pipeline.settings.redis).apply(
        [
            Security(SYM, "nasdaq", 100, False, ns, ns),
            Security("AAPL", "nasdaq", 100, False, ns, ns),
            Quote(SYM, NBBO_VENUE, D("50"), 100, D("50.02"), 100, ns, ns, ns),
        ]
    )
    _, account, token = new_user(services, rate_limit=100_000)
    pipeline.start()
    api = httpx.Client(
        base_url=pipeline.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    pool = db.pool(services.postgres)

    def create(**body) -> dict:
        resp = api.post("/v1/alerts", json={"symbol": SYM, **body})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def sent(*alerts: dict) -> bool:
        ids = [a["id"] for a in alerts]
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT count(*) FILTER (WHERE sent_at IS NULL), count(*) FROM outbox "
                "WHERE topic = %s AND ("
                + " OR ".join(["convert_from(payload, 'UTF8') LIKE %s"] * len(ids))
                + ")",
                (pipeline.topics.alerts, *[f"%{i}%" for i in ids]),
            ).fetchone()
        return rows is not None and rows[0] == 0 and rows[1] >= len(ids)

    def status(alert: dict) -> str:
        return api.get(f"/v1/alerts/{alert['id']}").json()["status"]

    def fires(alert: dict) -> list[dict]:
        return api.get(f"/v1/alerts/{alert['id']}/fires", params={"limit": 500}).json()

    # Level of the AAPL alert: the recorded price it crosses most often (after the warm-up
    # trades at 9 and 11 below), so the cool-down has crossings to suppress.
    aapl_trades = [
        e
        for e in parse_recording(SAMPLE / "nasdaq.jsonl", "nasdaq")[0]
        if isinstance(e, Trade) and e.symbol == "AAPL" and e.updates_last
    ]
    aapl_series = [(ns_of(WARMUP[0][0]), D(9)), (ns_of(WARMUP[1][0]), D(11))]
    aapl_series += [(t.event_ns, t.price) for t in aapl_trades]
    aapl_level = max(
        sorted({t.price for t in aapl_trades}),
        key=lambda level: len(crossings(aapl_series, level, True, 30)),
    )

    above = create(type="price_above", price="101")
    below_mid = create(type="price_below", price="98", source="mid")
    up3 = create(type="percent_change", percent="3", direction="up")
    recurring = create(type="price_above", price="101", recurring=True, cooldown_s=60)
    aapl = create(
        symbol="AAPL", type="price_above", price=str(aapl_level), recurring=True, cooldown_s=30
    )
    assert up3["reference_close"] is None, "no candles of Monday: the flow tracks the close"
    # Probes, created last on each symbol: once they fire, the flow holds every alert above
    # (one symbol's definitions are one partition, in order).
    probe = create(type="price_above", price="50")
    aapl_probe = create(symbol="AAPL", type="price_above", price="10")
    until(lambda: sent(above, below_mid, up3, recurring, aapl, probe, aapl_probe))
    warmup = [t_line(w, p, c, f"w{i}") for i, (w, p, c) in enumerate(WARMUP)]
    warmup += [
        t_line("2026-11-23T14:31:00Z", "9", "@", "wa1", "AAPL"),
        t_line("2026-11-23T14:31:01Z", "11", "@", "wa2", "AAPL"),
    ]
    raw = pipeline.topics.raw("nasdaq")
    boot = pipeline.settings.bootstrap
    replay(write(tmp_path / "warmup.jsonl", warmup), "nasdaq", boot, speed=None, topic=raw)
    until(lambda: status(probe) == "triggered" and status(aapl_probe) == "triggered")

    # ---------------------------------------------------------------- what should fire
    xalr = script_trades()
    series = eligible(WARMUP + xalr)
    mids = [(int(w.timestamp()) * S, (D(b) + D(a)) / 2) for w, b, a in QUOTES]
    tuesday = [(t, p) for t, p in series if t >= int(TUE.timestamp()) * S - 3600 * S]
    expected = {
        above["id"]: crossings(series, D(101), True, None),
        below_mid["id"]: crossings(mids, D(98), False, None),
        # Tuesday against Monday's close (100): +3 % is 103; the first Tuesday trade's
        # previous price is Monday's last sale.
        up3["id"]: crossings(
            [series[len(series) - len(tuesday) - 1], *tuesday], D(103), True, None
        ),
        recurring["id"]: crossings(series, D(101), True, 60),
        aapl["id"]: crossings(aapl_series, aapl_level, True, 30),
    }
    assert len(expected[recurring["id"]]) == 3, "the script crosses 101 six times, 3 fire"
    assert len(expected[aapl["id"]]) >= 3, "the recording crosses its level often"
    raw_crossings = crossings(aapl_series, aapl_level, True, 0)
    assert len(raw_crossings) > len(expected[aapl["id"]]), "some within the cool-down"
    assert expected[up3["id"]] == [ns_of(TUESDAY[8][0])], "not the odd lot's 103.5"
    total = sum(len(v) for v in expected.values()) + 2  # and the probes

    feed = [t_line(w, p, c, f"x{i}") for i, (w, p, c) in enumerate(xalr)]
    feed += [q_line(*q) for q in QUOTES]
    main = write(tmp_path / "xalr.jsonl", feed)
    ws_url = pipeline.url.replace("http://", "ws://") + "/v1/stream"

    def stored() -> dict[str, list[int]]:
        return {a: [f["event_ns"] for f in fires({"id": a})] for a in expected}

    def streamed(events: list[dict]) -> list[dict]:
        return [e["data"] for e in events if e["T"] == "alert"]

    with client(ws_url, token) as ws:
        ws.send({"action": "subscribe", "alerts": True, "since": 0})
        assert ws.until(lambda e: e["T"] == "subscription")["alerts"] is True
        replay(main, "nasdaq", boot, speed=None, topic=raw)
        replay(SAMPLE / "nasdaq.jsonl", "nasdaq", boot, speed=None, topic=raw)
        deadline = time.monotonic() + 120
        while stored() != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        assert stored() == expected
        ws.until(lambda e: len(streamed(ws.events)) >= total, timeout=30)
        ws.drain(0.5)
        live = streamed(ws.events)
    assert len(live) == total and len({d["fire"]["id"] for d in live}) == total
    assert [d["seq"] for d in live] == list(range(1, total + 1))
    got = {a: [d["fire"]["event_ns"] for d in live if d["alert"]["id"] == a] for a in expected}
    assert got == expected
    first = {a: [f["id"] for f in fires({"id": a})] for a in expected}
    for one_shot in (above, below_mid, up3):
        assert api.get(f"/v1/alerts/{one_shot['id']}").json()["status"] == "triggered"
    r = api.get(f"/v1/alerts/{recurring['id']}").json()
    assert (r["status"], r["fire_count"]) == ("active", 3)
    [b] = fires(below_mid)
    assert (b["price"], b["source"], b["crossed"]) == ("97.9000", "mid", "below")
    [u] = fires(up3)
    assert (u["previous_close"], u["change_percent"], u["price"]) == (
        "100.0000",
        "3.0000",
        "103.0000",
    )

    # ------------------------------------------- SIGKILL, restart, the same feed again
    pipeline.kill()
    pipeline.start()
    api = httpx.Client(
        base_url=pipeline.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    replay(main, "nasdaq", boot, speed=None, topic=raw)
    replay(SAMPLE / "nasdaq.jsonl", "nasdaq", boot, speed=None, topic=raw)
    # Sentinels after the feed on each source's partition: when they fire, the flow has
    # evaluated everything replayed before them.
    sentinels = [
        create(type="price_above", price="500"),
        create(type="price_above", price="500", source="mid"),
        create(symbol="AAPL", type="price_below", price="1"),
    ]
    until(lambda: sent(*sentinels))
    end = TUE + timedelta(hours=1)
    tail = [
        t_line(end.isoformat().replace("+00:00", "Z"), "500", "@", "s1"),
        q_line(end, "499.99", "500.01"),
        t_line(end.isoformat().replace("+00:00", "Z"), "0.5", "@", "s2", "AAPL"),
    ]
    replay(write(tmp_path / "tail.jsonl", tail), "nasdaq", boot, speed=None, topic=raw)
    until(lambda: all(status(s) == "triggered" for s in sentinels), timeout=120)

    assert {a: [f["id"] for f in fires({"id": a})] for a in expected} == first
    with pool.connection() as conn:
        logged = conn.execute(
            "SELECT count(*), count(DISTINCT payload->'fire'->>'id') FROM account_events "
            "WHERE account_id = %s AND event = 'alert'",
            (account.id,),
        ).fetchone()
    assert logged == (total + 3, total + 3)
    with client(ws_url, token) as ws:
        ws.send({"action": "subscribe", "alerts": True, "since": 0})
        ws.until(lambda e: len(streamed(ws.events)) >= total + 3, timeout=30)
        ws.drain(0.5)
        again = streamed(ws.events)
    assert [d["seq"] for d in again] == list(range(1, total + 4))
    assert len({d["fire"]["id"] for d in again}) == total + 3
