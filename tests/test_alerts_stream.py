"""Alert firings on WS /v1/stream (the `alerts` subscription), on the real services: the
alerts flow's sink (flows/alerts.py `_FiringPartition`: record in PostgreSQL, then
PUBLISH) logs each firing as an account event, in the same numbering as order events;
`alerts` gets only firings, `trade_updates` only order events, `since` replays each kind
from the log without repeating the other."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal as D

import pytest

from api.stream.config import StreamSettings
from api.stream.protocol import Change, ProtocolError, parse_action
from flows.alerts import _FiringPartition
from flows.ledger import _LedgerPartition
from infra.alerts import AccountAlerts
from infra.settings import Settings
from schemas.alerts import AlertTerms, Firing, fire_id
from tests.ledger_support import LedgerEnv, ledger_env
from tests.stream_support import StreamServer, check_sequence, client
from tests.test_account_stream import Account, answer

pytestmark = pytest.mark.services
T0 = 1_795_618_800_000_000_000  # 2026-11-24T15:00:00Z


@pytest.fixture
def env(services: Settings) -> LedgerEnv:
    return ledger_env(services)


@pytest.fixture
def server(services: Settings) -> Iterator[StreamServer]:
    settings = Settings(redis_db=13, redis_port=services.redis_port, kafka_port=services.kafka_port)
    srv = StreamServer(settings, StreamSettings(market_clock="never"))
    yield srv
    srv.stop()


@pytest.fixture
def sinks(
    services: Settings, env: LedgerEnv
) -> Iterator[tuple[_LedgerPartition, _FiringPartition]]:
    ledger = _LedgerPartition(services, env.ledger.topics)
    ledger.ledger = env.ledger
    alerts = _FiringPartition(services)
    yield ledger, alerts
    ledger.close()
    alerts.close()


def fire(sink: _FiringPartition, alert: dict, account_id, n: int) -> Firing:
    f = Firing(
        id=fire_id(alert["id"], alert["version"], f"t|iex|{n}|{T0 + n}"),
        alert_id=alert["id"],
        account_id=str(account_id),
        version=alert["version"],
        symbol=alert["symbol"],
        event_ns=T0 + n * 1_000_000_000,
        crossed="above",
        price=D("101"),
        level=D(alert["price"]),
        source="trade",
        venue="iex",
        trade_id=str(n),
        one_shot=False,
        cooldown_s=1,
    )
    sink.write_batch([[f]])
    return f


def kinds(events: list[dict]) -> list[tuple[str, int]]:
    return [(e["T"], e["data"]["seq"]) for e in events if e["T"] in ("alert", "trade_update")]


def test_protocol_accepts_alerts_with_since() -> None:
    assert parse_action('{"action":"subscribe","alerts":true,"since":4}') == Change(
        True, {}, since=4, alerts=True
    )
    assert parse_action('{"action":"unsubscribe","alerts":true}') == Change(False, {}, alerts=True)
    for bad in (
        '{"action":"subscribe","alerts":1}',
        '{"action":"unsubscribe","alerts":true,"since":1}',
    ):
        with pytest.raises(ProtocolError) as refused:
            parse_action(bad)
        assert refused.value.code == "invalid_message"


def test_alerts_and_order_events_share_the_log_but_not_the_subscription(
    services: Settings, env: LedgerEnv, server: StreamServer, sinks
) -> None:
    ledger, alerts_sink = sinks
    acct = Account(env)
    store = AccountAlerts(env.pool, acct.id, f"t{uuid.uuid4().hex[:6]}.alerts.definitions")
    alert = store.create(
        "ACCT", AlertTerms("price_above", price=D(100), recurring=True, cooldown_s=1)
    )
    with client(server.url, acct.token) as ws, client(server.url, acct.token) as both:
        ws.send({"action": "subscribe", "alerts": True})
        sub = ws.until(lambda e: e["T"] == "subscription")
        assert (sub["alerts"], sub["trade_updates"]) == (True, False)
        both.send({"action": "subscribe", "alerts": True, "trade_updates": True})
        both.until(lambda e: e["T"] == "subscription")
        order = acct.buy()
        ledger.apply(answer("acknowledged", order))  # seq 1: an order event
        first = fire(alerts_sink, alert, acct.id, 1)  # seq 2
        ledger.apply(answer("canceled", order))  # seq 3
        fire(alerts_sink, alert, acct.id, 3)  # seq 4
        ws.until(lambda e: len(kinds(ws.events)) >= 2)
        both.until(lambda e: len(kinds(both.events)) >= 4)
        ws.drain(0.3)
        assert kinds(ws.events) == [("alert", 2), ("alert", 4)]
        assert kinds(both.events) == [
            ("trade_update", 1),
            ("alert", 2),
            ("trade_update", 3),
            ("alert", 4),
        ]
        data = next(e["data"] for e in ws.events if e["T"] == "alert")
        assert data["event"] == "alert" and data["fire"]["id"] == first.id
        assert data["alert"]["id"] == alert["id"] and data["alert"]["fire_count"] == 1
        assert (data["fire"]["price"], data["fire"]["level"]) == ("101.0000", "100.0000")
        # Unsubscribing alerts keeps trade_updates; an alert then goes nowhere on `both`.
        both.send({"action": "unsubscribe", "alerts": True})
        sub = both.until(lambda e: e["T"] == "subscription" and e["alerts"] is False)
        assert sub["trade_updates"] is True
        fire(alerts_sink, alert, acct.id, 5)  # seq 5
        ledger.apply(answer("acknowledged", acct.buy()))  # seq 6
        both.until(lambda e: ("trade_update", 6) in kinds(both.events))
        both.drain(0.3)
        assert kinds(both.events)[4:] == [("trade_update", 6)]
        check_sequence(both.events)
        check_sequence(ws.events)

    # Back with since: each kind from the log, once; subscribing the other kind with its own
    # since does not repeat what was sent.
    with client(server.url, acct.token) as ws:
        ws.send({"action": "subscribe", "trade_updates": True, "since": 2})
        ws.until(lambda e: ("trade_update", 6) in kinds(ws.events))
        ws.send({"action": "subscribe", "alerts": True, "since": 0})
        ws.until(lambda e: ("alert", 5) in kinds(ws.events))
        ws.drain(0.3)
        got = kinds(ws.events)
        assert [k for k in got if k[0] == "trade_update"] == [
            ("trade_update", 3),
            ("trade_update", 6),
        ]
        assert [k for k in got if k[0] == "alert"] == [("alert", 2), ("alert", 4), ("alert", 5)]
        ws.send({"action": "subscribe", "alerts": True, "since": 99})
        assert ws.until(lambda e: e["T"] == "error")["code"] == "invalid_since"
