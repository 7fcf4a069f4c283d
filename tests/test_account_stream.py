"""Account updates (issue 5 item 3) on the real services: order events applied by the
ledger (Ledger.apply through the ledger flow's sink, which publishes after the commit)
reach the owner's WS /v1/stream as trade_update events with a per-account seq, and a
client that comes back with `since` gets exactly what it missed, then live events."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal as D
from uuid import UUID

import pytest

from api.stream.config import StreamSettings
from flows.ledger import _LedgerPartition
from infra import accounts, api_keys
from infra.settings import Settings
from schemas.oms import now_ns
from schemas.orders import OrderRequest, OrderType, Side, TimeInForce, place
from tests.ledger_support import LedgerEnv, check_invariants, ledger_env, market
from tests.stream_support import Client, StreamServer, check_sequence, client

pytestmark = pytest.mark.services
STREAM_DB = 13  # as tests/test_stream.py (pub/sub ignores the database anyway)


@pytest.fixture
def env(services: Settings) -> LedgerEnv:
    return ledger_env(services)


@pytest.fixture
def server(services: Settings) -> Iterator[StreamServer]:
    settings = Settings(
        redis_db=STREAM_DB, redis_port=services.redis_port, kafka_port=services.kafka_port
    )
    srv = StreamServer(settings, StreamSettings(market_clock="never"))
    yield srv
    srv.stop()


@pytest.fixture
def sink(services: Settings, env: LedgerEnv) -> Iterator[_LedgerPartition]:
    """The ledger flow's sink: Ledger.apply, then PUBLISH of the events it wrote."""
    part = _LedgerPartition(services, env.ledger.topics)
    part.ledger = env.ledger
    yield part
    part.close()


class Account:
    def __init__(self, env: LedgerEnv, cash: str = "100000") -> None:
        self.env = env
        user, account = accounts.create_user(
            env.pool, f"s{uuid.uuid4().hex[:12]}@test.local", "Stream Test"
        )
        self.id: UUID = account.id
        env.ledger.deposit(account.id, D(cash))
        self.token = str(
            api_keys.create_key(env.pool, user.id, "t", rate_limit_per_minute=10**6)[1]
        )

    def buy(self, qty: str = "10", limit: str = "100.00", symbol: str = "ACCT") -> UUID:
        req = OrderRequest(
            symbol, Side.BUY, OrderType.LIMIT, TimeInForce.DAY, qty=D(qty), limit_price=D(limit)
        )
        order = self.env.ledger.place(self.id, req, place(req, market()))
        return order.id  # type: ignore[union-attr]

    def seqs(self) -> list[int]:
        with self.env.pool.connection() as conn:
            rows = conn.execute(
                "SELECT seq FROM account_events WHERE account_id = %s ORDER BY seq", (self.id,)
            ).fetchall()
        return [r[0] for r in rows]


def answer(kind: str, order_id: UUID, **extra) -> dict:
    return {
        "event_id": f"{kind}:{uuid.uuid4()}",
        "kind": kind,
        "at": now_ns(),
        "order_id": str(order_id),
        **extra,
    }


def fill(order_id: UUID, qty: str, price: str, venue: str = "iex") -> dict:
    e = answer("fill", order_id, qty=qty, price=price, venue=venue, route=[venue])
    e["exec_id"] = e["event_id"]
    return e


def updates(events: list[dict]) -> list[dict]:
    return [e["data"] for e in events if e["T"] == "trade_update"]


def wait_updates(ws: Client, n: int, timeout: float = 5.0) -> list[dict]:
    """Read until n trade updates in all have arrived on this client."""
    ws.until(lambda e: len(updates(ws.events)) >= n, timeout=timeout)
    return updates(ws.events)


def subscribe(ws: Client, **extra) -> dict:
    ws.send({"action": "subscribe", "trade_updates": True, **extra})
    return ws.until(lambda e: e["T"] in ("subscription", "error"))


# ---------------------------------------------------------------- the events


def test_an_order_life_streams_in_order_with_the_account_seq(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    acct = Account(env)
    with client(server.url, acct.token) as ws:
        sub = subscribe(ws)
        assert sub["trade_updates"] is True
        assert (sub["quotes"], sub["trades"]) == ([], [])
        order = acct.buy("10", "100.00")
        sink.apply(answer("acknowledged", order))
        sink.apply(fill(order, "4", "99.50"))
        sink.apply(fill(order, "6", "99.00", venue="arca"))
        got = wait_updates(ws, 3)
        assert [(u["event"], u["seq"], u["order"]["status"]) for u in got] == [
            ("new", 1, "new"),
            ("partial_fill", 2, "partially_filled"),
            ("fill", 3, "filled"),
        ]
        partial, done = got[1], got[2]
        assert partial["order"]["id"] == str(order)
        assert (partial["qty"], partial["price"], partial["venue"]) == (
            "4.000000",
            "99.5000",
            "iex",
        )
        assert (
            partial["position_qty"] == "4.000000" and partial["order"]["filled_qty"] == "4.000000"
        )
        assert (done["venue"], done["position_qty"], done["order"]["filled_avg_price"]) == (
            "arca",
            "10.000000",
            "99.2000",
        )
        assert done["execution_id"].startswith("fill:") and done["at"].endswith("Z")
        # The order as the REST API renders it: every field of GET /v1/orders/{id}.
        assert {"client_order_id", "reserved_cash", "version", "submitted_at"} <= set(done["order"])

        second = acct.buy("1", "50.00")
        sink.apply(answer("acknowledged", second))
        env.ledger.request_cancel(acct.id, second)  # the API side: not an account event
        sink.apply(answer("canceled", second))
        got = wait_updates(ws, 5)
        assert [(u["event"], u["seq"], u["order"]["status"]) for u in got[3:]] == [
            ("new", 4, "new"),
            ("canceled", 5, "canceled"),
        ]
        assert got[4]["order"]["canceled_at"] is not None
        check_sequence(ws.events)
    assert acct.seqs() == [1, 2, 3, 4, 5]
    check_invariants(env.pool, acct.id)


def test_rejected_expired_and_replaced_orders(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    acct = Account(env)
    with client(server.url, acct.token) as ws:
        subscribe(ws)
        rejected = acct.buy("1", "10.00")
        sink.apply(answer("rejected", rejected, reason="no such symbol"))
        expiring = acct.buy("1", "10.00")
        sink.apply(answer("acknowledged", expiring))
        sink.apply(answer("expired", expiring))
        old = acct.buy("2", "10.00")
        sink.apply(answer("acknowledged", old))
        new_req = OrderRequest(
            "ACCT", Side.BUY, OrderType.LIMIT, TimeInForce.DAY, qty=D(3), limit_price=D("11")
        )
        new = env.ledger.request_replace(
            acct.id, old, lambda _: (new_req, place(new_req, market()), None)
        )
        sink.apply(answer("replaced", old, replaced_by=str(new.id)))
        got = wait_updates(ws, 6)
        assert [(u["event"], u["order"]["id"], u["order"]["status"]) for u in got] == [
            ("rejected", str(rejected), "rejected"),
            ("new", str(expiring), "new"),
            ("expired", str(expiring), "expired"),
            ("new", str(old), "new"),
            ("replaced", str(old), "replaced"),
            ("new", str(new.id), "new"),
        ]
        assert got[0]["order"]["reject_reason"] == "no such symbol"
        assert got[4]["order"]["replaced_by"] == str(new.id)
        assert [u["seq"] for u in got] == [1, 2, 3, 4, 5, 6]
    check_invariants(env.pool, acct.id)


def test_a_redelivered_answer_writes_and_streams_nothing_twice(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    acct = Account(env)
    with client(server.url, acct.token) as ws:
        subscribe(ws)
        order = acct.buy("10")
        ack, part = answer("acknowledged", order), fill(order, "3", "99.00")
        for e in (ack, ack, part, part, ack):
            sink.apply(e)
        assert env.ledger.apply(part).events == ()  # a duplicate: nothing written
        # The same message delivered twice by Redis (or by two publishers) goes out once.
        with env.pool.connection() as conn:
            payload = conn.execute(
                "SELECT payload::text FROM account_events WHERE account_id = %s AND seq = 2",
                (acct.id,),
            ).fetchone()[0]
        server.redis.publish(f"account:{acct.id}", payload)
        sink.apply(fill(order, "7", "99.00"))
        got = wait_updates(ws, 3)
        ws.drain(0.3)
        assert [(u["event"], u["seq"]) for u in updates(ws.events)] == [
            ("new", 1),
            ("partial_fill", 2),
            ("fill", 3),
        ]
        assert got[1]["qty"] == "3.000000"
    assert acct.seqs() == [1, 2, 3]


# ---------------------------------------------------------------- isolation


def test_an_account_sees_only_its_own_events(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    a, b = Account(env), Account(env)
    with client(server.url, a.token) as wa, client(server.url, b.token) as wb:
        subscribe(wa)
        subscribe(wb)
        # No way to name another account: the account is the key's.
        wb.send({"action": "subscribe", "trade_updates": True, "account_id": str(a.id)})
        err = wb.until(lambda e: e["T"] == "error")
        assert err["code"] == "invalid_message"
        assert subscribe(wb, since=1)["code"] == "invalid_since"  # B has no event 1
        order = a.buy()
        sink.apply(answer("acknowledged", order))
        sink.apply(fill(order, "10", "99.00"))
        assert [u["event"] for u in wait_updates(wa, 2)] == ["new", "fill"]
        mine = b.buy()
        sink.apply(answer("acknowledged", mine))
        got = wait_updates(wb, 1)
        wb.drain(0.3)
        assert [(u["event"], u["order"]["id"]) for u in updates(wb.events)] == [("new", str(mine))]
        assert got[0]["seq"] == 1, "B's own seq, not A's"
    # A reconnecting with since=0 reads its own log only.
    with client(server.url, b.token) as wb:
        subscribe(wb, since=0)
        assert [u["order"]["id"] for u in wait_updates(wb, 1)] == [str(mine)]
        wb.drain(0.3)
        assert len(updates(wb.events)) == 1


# ---------------------------------------------------------------- since, holes, races


def test_reconnecting_with_since_gets_exactly_what_it_missed_then_live(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    acct = Account(env)
    order = acct.buy("10")
    with client(server.url, acct.token) as ws:
        subscribe(ws)
        sink.apply(answer("acknowledged", order))
        sink.apply(fill(order, "1", "99.00"))
        last = wait_updates(ws, 2)[-1]["seq"]
    assert last == 2
    # Disconnected: three more events, published to nobody.
    for _ in range(3):
        sink.apply(fill(order, "1", "99.00"))
    with client(server.url, acct.token) as ws:
        assert subscribe(ws, since=last)["trade_updates"] is True
        got = wait_updates(ws, 3)
        assert [u["seq"] for u in got] == [3, 4, 5]
        sink.apply(fill(order, "2", "99.00"))
        got = wait_updates(ws, 4)
        ws.drain(0.3)
        assert [u["seq"] for u in updates(ws.events)] == [3, 4, 5, 6]
        check_sequence(ws.events)
        # Subscribing again with since replays from there, on the same connection.
        subscribe(ws, since=4)
        wait_updates(ws, 6)
        ws.drain(0.3)
        assert [u["seq"] for u in updates(ws.events)] == [3, 4, 5, 6, 5, 6]
    # Without since: only what comes after the subscription.
    with client(server.url, acct.token) as ws:
        subscribe(ws)
        sink.apply(fill(order, "4", "99.00"))
        assert [(u["seq"], u["event"]) for u in wait_updates(ws, 1)] == [(7, "fill")]


def test_a_lost_publish_is_read_from_the_log(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    acct = Account(env)
    order = acct.buy("10")
    with client(server.url, acct.token) as ws:
        subscribe(ws)
        sink.apply(answer("acknowledged", order))
        wait_updates(ws, 1)
        env.ledger.apply(fill(order, "1", "99.00"))  # committed, never published
        env.ledger.apply(fill(order, "1", "99.00"))
        sink.apply(fill(order, "1", "99.00"))  # seq 4 shows the hole: 2 and 3 are read
        got = wait_updates(ws, 4)
        ws.drain(0.3)
        assert [u["seq"] for u in updates(ws.events)] == [1, 2, 3, 4]
        assert [u["event"] for u in got] == ["new", "partial_fill", "partial_fill", "partial_fill"]


def test_catching_up_while_events_keep_coming_has_no_duplicates_or_holes(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    acct = Account(env, cash="1000000")
    orders = [acct.buy("1", "10.00") for _ in range(60)]
    for o in orders[:30]:
        sink.apply(answer("acknowledged", o))

    def more() -> None:
        for o in orders[30:]:
            sink.apply(answer("acknowledged", o))
        for o in orders:
            sink.apply(answer("canceled", o))

    with client(server.url, acct.token) as ws:
        writer = threading.Thread(target=more)
        writer.start()
        subscribe(ws, since=0)  # the log is read while new events are published
        writer.join()
        wait_updates(ws, 120, timeout=20)
        ws.drain(0.3)
        got = updates(ws.events)
        assert [u["seq"] for u in got] == list(range(1, 121))
        assert [u["event"] for u in got].count("canceled") == 60
        check_sequence(ws.events)
    check_invariants(env.pool, acct.id)


def test_unsubscribe_stops_the_events(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    acct = Account(env)
    order = acct.buy("10")
    with client(server.url, acct.token) as ws:
        subscribe(ws)
        sink.apply(answer("acknowledged", order))
        wait_updates(ws, 1)
        ws.send({"action": "unsubscribe", "trade_updates": True})
        sub = ws.until(lambda e: e["T"] == "subscription")
        assert sub["trade_updates"] is False
        sink.apply(fill(order, "1", "99.00"))
        ws.drain(0.4)
        assert len(updates(ws.events)) == 1
        assert subscribe(ws, since=1)["trade_updates"] is True
        assert [u["seq"] for u in wait_updates(ws, 2)] == [1, 2]


# ---------------------------------------------------------------- the ledger flow's side


def test_a_failed_publish_never_undoes_the_ledger(
    services: Settings, env: LedgerEnv, server: StreamServer
) -> None:
    dead = Settings(redis_url="redis://127.0.0.1:1/0", postgres_url=services.postgres)
    part = _LedgerPartition(dead, env.ledger.topics)
    part.ledger = env.ledger
    acct = Account(env)
    order = acct.buy("10")
    part.apply(answer("acknowledged", order))  # Redis refuses: logged, skipped
    part.apply(fill(order, "10", "99.00"))
    part.close()
    assert acct.seqs() == [1, 2]
    assert env.ledger.get(acct.id, order).status == "filled"
    with client(server.url, acct.token) as ws:  # the log has what Redis never carried
        subscribe(ws, since=0)
        assert [u["event"] for u in wait_updates(ws, 2)] == ["new", "fill"]


def test_the_sink_retries_an_apply_that_deadlocked(
    services: Settings, env: LedgerEnv, sink: _LedgerPartition
) -> None:
    import psycopg

    real, calls = env.ledger.apply, []

    def flaky(event: dict):
        calls.append(event["event_id"])
        if len(calls) == 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return real(event)

    sink.ledger = type("L", (), {"apply": staticmethod(flaky)})()
    acct = Account(env)
    order = acct.buy("10")
    sink.apply(answer("acknowledged", order))
    assert len(calls) == 2 and acct.seqs() == [1]
    assert env.ledger.get(acct.id, order).status == "new"


def test_after_losing_redis_the_hub_reads_what_it_may_have_missed(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    acct = Account(env)
    order = acct.buy("10")
    with client(server.url, acct.token) as ws:
        subscribe(ws)
        sink.apply(answer("acknowledged", order))
        wait_updates(ws, 1)
        env.ledger.apply(fill(order, "2", "99.00"))  # as if published while the hub was away
        hub = server.app.state.stream_hub.result()
        [victim] = [c for c in server.redis.client_list() if c["name"] == hub.name]
        server.redis.client_kill_filter(_id=victim["id"])
        assert [u["seq"] for u in wait_updates(ws, 2)] == [1, 2]
        sink.apply(fill(order, "8", "99.00"))  # and live again
        assert [u["event"] for u in wait_updates(ws, 3)] == ["new", "partial_fill", "fill"]
        ws.drain(0.3)
        assert len(updates(ws.events)) == 3
        check_sequence(ws.events)


def test_two_connections_of_one_account_share_the_channel(
    env: LedgerEnv, server: StreamServer, sink: _LedgerPartition
) -> None:
    acct = Account(env)
    order = acct.buy("10")
    channel = f"account:{acct.id}".encode()
    with client(server.url, acct.token) as one, client(server.url, acct.token) as two:
        subscribe(one)
        subscribe(two)
        hub = server.app.state.stream_hub.result()
        assert len(hub.account_feeds[channel]) == 2
        sink.apply(answer("acknowledged", order))
        assert [u["seq"] for u in wait_updates(one, 1)] == [1]
        assert [u["seq"] for u in wait_updates(two, 1)] == [1]
        one.send({"action": "unsubscribe", "trade_updates": True})
        one.until(lambda e: e["T"] == "subscription")
        assert server.redis.pubsub_numsub(channel) == [(channel, 1)]  # still held, once
        sink.apply(fill(order, "10", "99.00"))
        assert [u["event"] for u in wait_updates(two, 2)] == ["new", "fill"]
        one.drain(0.3)
        assert len(updates(one.events)) == 1
    deadline = time.monotonic() + 5
    while server.redis.pubsub_numsub(channel) != [(channel, 0)]:  # the last one left
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert channel not in hub.account_feeds
