"""Property-based test of the ledger against the real PostgreSQL.

A hypothesis state machine places, cancels and replaces orders on one fresh account per
example and feeds execution-side answers back through `Ledger.apply`, some of them
redelivered with the same event id. A plain Python model predicts every outcome: the
refusals (403 insufficient, 422 not cancelable / replaceable), whether an answer is
applied or recorded as an anomaly, each order's status and reservation. After every
step the model is compared with PostgreSQL and `check_invariants` runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from infra.ledger import (
    InsufficientBuyingPower,
    InsufficientQty,
    LedgerError,
    NotCancelable,
    NotReplaceable,
)
from schemas.oms import Order, now_ns
from schemas.order_states import OPEN, IllegalTransition, OrderEvent, OrderStatus, transition
from schemas.orders import (
    ALLOWED_TIF,
    MarketView,
    OrderRefused,
    OrderRequest,
    OrderType,
    Placement,
    Side,
    TimeInForce,
    full_reservation,
    place,
)
from tests.ledger_support import (
    PRE_MARKET_NOW,
    REGULAR_NOW,
    LedgerEnv,
    check_invariants,
    check_outbox,
    drop_outbox,
    ledger_env,
    market,
)

S, E = OrderStatus, OrderEvent
ZERO = Decimal(0)
SYMBOLS = ("AAA", "BBB")
QUOTES = {"AAA": ("99.99", "100.01"), "BBB": ("0.5100", "0.5200")}
ENV: LedgerEnv | None = None
_ids = itertools.count()


def view(symbol: str, now=REGULAR_NOW) -> MarketView:
    bid, ask = QUOTES[symbol]
    return market(bid, ask, now=now)


@dataclass
class M:
    """The model of one order."""

    id: UUID
    side: str
    symbol: str
    qty: Decimal | None
    notional: Decimal | None
    reserve_price: Decimal | None
    status: OrderStatus
    cash: Decimal = ZERO  # reserved
    shares: Decimal = ZERO
    replaces: UUID | None = None
    replaced_by: UUID | None = None

    def full(self) -> tuple[Decimal, Decimal]:
        return full_reservation(self.side, self.qty, self.notional, self.reserve_price)


def _price(cents: int, symbol: str) -> Decimal:
    # on the tick: cents for AAA (around $100), 1/100 cent for BBB (around $0.5)
    return Decimal(cents) / 100 if symbol == "AAA" else Decimal(cents) / 10_000


@st.composite
def requests(draw: Any) -> OrderRequest:
    symbol = draw(st.sampled_from(SYMBOLS))
    side = draw(st.sampled_from(Side))
    kind = draw(st.sampled_from(OrderType))
    tif = draw(st.sampled_from(sorted(ALLOWED_TIF[kind] - {TimeInForce.OPG, TimeInForce.CLS})))
    price = st.integers(4_000, 16_000).map(lambda c: _price(c, symbol))
    notional = None
    qty: Decimal | None = Decimal(draw(st.integers(1, 40)))
    if kind == OrderType.MARKET and tif == TimeInForce.DAY and draw(st.booleans()):
        qty, notional = None, Decimal(draw(st.integers(100, 400_000))) / 100
    elif tif == TimeInForce.DAY and kind != OrderType.TRAILING_STOP and draw(st.booleans()):
        qty = Decimal(draw(st.integers(1, 40_000_000))) / 1_000_000
    limit = draw(price) if kind in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
    stop = draw(price) if kind in (OrderType.STOP, OrderType.STOP_LIMIT) else None
    trail_price = trail_percent = None
    if kind == OrderType.TRAILING_STOP:
        if draw(st.booleans()):
            trail_price = _price(draw(st.integers(1, 500)), symbol)
        else:
            trail_percent = Decimal(draw(st.integers(1, 2000))) / 100
    extended = kind == OrderType.LIMIT and tif == TimeInForce.DAY and draw(st.booleans())
    return OrderRequest(
        symbol=symbol,
        side=side,
        type=kind,
        time_in_force=tif,
        qty=qty,
        notional=notional,
        limit_price=limit,
        stop_price=stop,
        trail_price=trail_price,
        trail_percent=trail_percent,
        extended_hours=extended,
    )


def request_of(o: Order) -> OrderRequest:
    return OrderRequest(
        symbol=o.symbol,
        side=Side(o.side),
        type=OrderType(o.type),
        time_in_force=TimeInForce(o.time_in_force),
        qty=o.qty,
        notional=o.notional,
        limit_price=o.limit_price,
        stop_price=o.stop_price,
        trail_price=o.trail_price,
        trail_percent=o.trail_percent,
        extended_hours=o.extended_hours,
    )


ANSWERS = (
    "acknowledged",
    "rejected",
    "canceled",
    "cancel_rejected",
    "replaced",
    "replace_rejected",
    "expired",
)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert ENV is not None
        self.env = ENV
        self.ledger = ENV.ledger
        self.account = ENV.new_account()
        self.cash = ZERO
        self.positions: dict[str, Decimal] = {}
        self.orders: dict[UUID, M] = {}
        self.order_ids: list[UUID] = []
        self.events: list[dict[str, Any]] = []
        self.applied: set[str] = set()
        self.now = REGULAR_NOW

    # -- model helpers --------------------------------------------------------------

    def reserved(self) -> Decimal:
        return sum((m.cash for m in self.orders.values()), ZERO)

    def reserved_qty(self, symbol: str) -> Decimal:
        return sum((m.shares for m in self.orders.values() if m.symbol == symbol), ZERO)

    def available(self, side: str, symbol: str, need: tuple[Decimal, Decimal]) -> bool:
        if side == Side.BUY:
            return need[0] <= self.cash - self.reserved()
        if symbol not in self.positions:
            return False
        return need[1] <= self.positions[symbol] - self.reserved_qty(symbol)

    def pick(self, index: int) -> M | None:
        if not self.order_ids:
            return None
        return self.orders[self.order_ids[index % len(self.order_ids)]]

    def unconfirmed_replacement(self, m: M) -> bool:
        """A replacing order whose old order still waits for the execution side."""
        return m.replaces is not None and self.orders[m.replaces].status == S.PENDING_REPLACE

    # -- rules ----------------------------------------------------------------------

    @initialize(cash=st.integers(0, 5_000_000))
    def fund(self, cash: int) -> None:
        if cash:
            self.deposit(cash)

    @rule(cents=st.integers(1, 2_000_000))
    def deposit(self, cents: int) -> None:
        amount = Decimal(cents) / 100
        balance = self.ledger.deposit(self.account, amount)
        self.cash += amount
        assert balance.cash == self.cash

    @rule(symbol=st.sampled_from(SYMBOLS), qty=st.integers(1, 100))
    def add_position(self, symbol: str, qty: int) -> None:
        self.env.set_position(self.account, symbol, qty)
        self.positions[symbol] = self.positions.get(symbol, ZERO) + qty

    @rule(pre_market=st.booleans())
    def clock(self, pre_market: bool) -> None:
        self.now = PRE_MARKET_NOW if pre_market else REGULAR_NOW

    @rule(req=requests())
    def place(self, req: OrderRequest) -> None:
        try:
            placement = place(req, view(req.symbol, self.now))
        except OrderRefused:
            return  # a 422 before the ledger is involved
        need = (placement.reserve_cash, placement.reserve_qty)
        ok = self.available(req.side, req.symbol, need)
        try:
            order = self.ledger.place(self.account, req, placement)
        except (InsufficientBuyingPower, InsufficientQty) as exc:
            assert not ok, f"refused {exc} though the model has room for {need}"
            assert exc.status == 403
            return
        assert ok, f"placed though the model has no room for {need}"
        assert isinstance(order, Order)
        assert order.status == placement.status
        m = M(
            order.id,
            req.side.value,
            req.symbol,
            req.qty,
            req.notional,
            placement.reserve_price,
            placement.status,
            *need,
        )
        assert m.full() == need
        self._add(m)

    def _add(self, m: M) -> None:
        self.orders[m.id] = m
        self.order_ids.append(m.id)

    @rule(index=st.integers(0, 10_000))
    def request_cancel(self, index: int) -> None:
        m = self.pick(index)
        if m is None:
            return
        legal = _legal(m.status, E.REQUEST_CANCEL) and not self.unconfirmed_replacement(m)
        try:
            order = self.ledger.request_cancel(self.account, m.id)
        except NotCancelable:
            assert not legal, f"{m.status} order refused a cancel"
            return
        assert legal, f"{m.status} order accepted a cancel"
        m.status = S.PENDING_CANCEL
        assert order.status == m.status

    @rule()
    def cancel_all(self) -> None:
        answers = dict(self.ledger.cancel_all(self.account))
        for m in self.orders.values():
            asked = m.status in (
                S.ACCEPTED,
                S.PENDING_NEW,
                S.NEW,
                S.PARTIALLY_FILLED,
            ) and not self.unconfirmed_replacement(m)
            if not asked:
                assert m.id not in answers or isinstance(answers[m.id], NotCancelable)
                continue
            answer = answers.get(m.id)
            assert isinstance(answer, Order), f"{m.status} order: {answer!r}"
        for m in self.orders.values():
            answer = answers.get(m.id)
            if isinstance(answer, Order):
                m.status = S.PENDING_CANCEL
                assert answer.status == m.status

    @rule(
        index=st.integers(0, 10_000),
        qty_change=st.sampled_from([None, -1, 1, 5, 100]),
        price_change=st.sampled_from([None, -300, -1, 1, 250]),
    )
    def request_replace(self, index: int, qty_change: int | None, price_change: int | None) -> None:
        m = self.pick(index)
        if m is None:
            return
        now = self.now
        built: dict[str, Any] = {}

        def build(old: Order) -> tuple[OrderRequest, Placement, str | None]:
            req = request_of(old)
            if qty_change is not None:
                if req.qty is not None:
                    req = replace(req, qty=max(Decimal(1), req.qty + qty_change))
                else:
                    assert req.notional is not None
                    req = replace(req, notional=max(Decimal(1), req.notional + qty_change))
            if price_change is not None and req.limit_price is not None:
                cents = int(req.limit_price * (100 if req.symbol == "AAA" else 10_000))
                req = replace(req, limit_price=_price(max(1, cents + price_change), req.symbol))
            built["placement"] = p = place(req, view(req.symbol, now))
            built["request"] = req
            return req, p, None

        legal = _legal(m.status, E.REQUEST_REPLACE) and not self.unconfirmed_replacement(m)
        try:
            new = self.ledger.request_replace(self.account, m.id, build)
        except NotReplaceable:
            assert not legal, f"{m.status} order refused a replace"
            return
        except OrderRefused:
            assert legal and "request" not in built
            return
        except (InsufficientBuyingPower, InsufficientQty):
            p: Placement = built["placement"]
            held = (m.cash, m.shares)
            extra = (max(ZERO, p.reserve_cash - held[0]), max(ZERO, p.reserve_qty - held[1]))
            assert legal and not self.available(m.side, m.symbol, extra)
            return
        assert legal, f"{m.status} order accepted a replace"
        p = built["placement"]
        req = built["request"]
        extra = (max(ZERO, p.reserve_cash - m.cash), max(ZERO, p.reserve_qty - m.shares))
        assert self.available(m.side, m.symbol, extra)
        assert new.replaces == m.id and new.status == p.status
        assert (new.reserved_cash, new.reserved_qty) == extra
        m.status = S.PENDING_REPLACE
        m.replaced_by = new.id
        self._add(
            M(
                new.id,
                m.side,
                m.symbol,
                req.qty,
                req.notional,
                p.reserve_price,
                p.status,
                *extra,
                replaces=m.id,
            )
        )

    @rule(index=st.integers(0, 10_000), kind=st.sampled_from(ANSWERS))
    def answer(self, index: int, kind: str) -> None:
        m = self.pick(index)
        if m is None:
            return
        if kind in ("replaced", "replace_rejected"):
            pending = [o for o in self.orders.values() if o.status == S.PENDING_REPLACE]
            if pending:
                m = pending[index % len(pending)]
        event: dict[str, Any] = {
            "event_id": f"x:{uuid4().hex}:{next(_ids)}",
            "kind": kind,
            "at": now_ns(),
            "order_id": str(m.id),
            "account_id": str(self.account),
            "symbol": m.symbol,
        }
        if kind in ("replaced", "replace_rejected"):
            event["replaced_by"] = str(m.replaced_by or uuid4())
        if kind in ("rejected", "replace_rejected", "canceled"):
            event["reason"] = "test"
        self.send(event)

    @rule(index=st.integers(0, 10_000))
    def redeliver(self, index: int) -> None:
        if not self.events:
            return
        self.send(self.events[index % len(self.events)])

    def send(self, event: dict[str, Any]) -> None:
        before = self.snapshot()
        expected = "duplicate" if event["event_id"] in self.applied else self.predict(event)
        result = self.ledger.apply(dict(event))
        assert result.outcome == expected, (event["kind"], result, expected)
        if result.outcome == "duplicate":
            assert self.snapshot() == before, "a redelivered answer changed the ledger"
        elif result.outcome == "applied":
            self.applied.add(event["event_id"])
        if event not in self.events:
            self.events.append(event)

    def predict(self, event: dict[str, Any]) -> str:
        """Apply the answer to the model; 'applied' or 'anomaly' (the model unchanged)."""
        kind = event["kind"]
        m = self.orders[UUID(event["order_id"])]
        try:
            if kind == "acknowledged":
                m.status = transition(m.status, E.ACKNOWLEDGE)
            elif kind in ("rejected", "canceled"):
                event_ = E.REJECT if kind == "rejected" else E.CANCEL
                m.status = transition(m.status, event_)
                m.cash = m.shares = ZERO
            elif kind == "expired":
                status = transition(m.status, E.EXPIRE)
                new = self.orders.get(m.replaced_by) if m.replaced_by else None
                if m.status == S.PENDING_REPLACE and new is not None and new.status in OPEN:
                    # the replacement can no longer take effect: it goes with it
                    new.status = transition(
                        new.status, E.REJECT if _legal(new.status, E.REJECT) else E.EXPIRE
                    )
                    new.cash = new.shares = ZERO
                m.status = status
                m.cash = m.shares = ZERO
            elif kind == "cancel_rejected":
                m.status = transition(m.status, E.CANCEL_REJECT)
            elif kind == "replaced":
                new = self.orders.get(UUID(event["replaced_by"]))
                if new is None or new.replaces != m.id:
                    return "anomaly"
                old_status = transition(m.status, E.REPLACE)
                new_status = transition(new.status, E.ACKNOWLEDGE)
                full = new.full()
                if full[0] > m.cash + new.cash or full[1] > m.shares + new.shares:
                    return "anomaly"
                m.status, new.status = old_status, new_status
                m.cash = m.shares = ZERO
                new.cash, new.shares = full
            elif kind == "replace_rejected":
                new = self.orders.get(UUID(event["replaced_by"]))
                if new is None or new.replaces != m.id:
                    return "anomaly"
                old_status = transition(m.status, E.REPLACE_REJECT)
                new_status = transition(new.status, E.REJECT)
                m.status, new.status = old_status, new_status
                new.cash = new.shares = ZERO
            else:
                raise AssertionError(kind)
        except IllegalTransition:
            return "anomaly"
        return "applied"

    def snapshot(self) -> tuple:
        with self.env.pool.connection() as conn:
            acc = conn.execute(
                "SELECT cash, reserved_cash, updated_at FROM accounts WHERE id = %s",
                (self.account,),
            ).fetchone()
            orders = conn.execute(
                "SELECT * FROM orders WHERE account_id = %s ORDER BY id", (self.account,)
            ).fetchall()
            positions = conn.execute(
                "SELECT * FROM positions WHERE account_id = %s ORDER BY symbol", (self.account,)
            ).fetchall()
        return acc, orders, positions

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def ledger_invariants_hold(self) -> None:
        seen = check_invariants(self.env.pool, self.account)
        assert seen["cash"] == self.cash
        assert seen["reserved_cash"] == self.reserved(), "model and ledger reserve differently"
        assert set(seen["orders"]) == set(self.orders)
        for oid, m in self.orders.items():
            o = seen["orders"][oid]
            assert o.status == m.status, f"{oid}: ledger {o.status}, model {m.status}"
            assert (o.reserved_cash, o.reserved_qty) == (m.cash, m.shares), oid
            assert o.replaces == m.replaces
            if m.replaced_by is not None:
                assert o.replaced_by == m.replaced_by
        for symbol, qty in self.positions.items():
            assert seen["positions"][symbol] == (qty, self.reserved_qty(symbol))

    def teardown(self) -> None:
        if self.orders:
            check_outbox(self.env.pool, self.ledger.topics, self.account)


def _legal(status: OrderStatus, event: OrderEvent) -> bool:
    try:
        transition(status, event)
    except IllegalTransition:
        return False
    return True


@pytest.fixture
def env(services) -> Iterator[LedgerEnv]:
    global ENV
    ENV = ledger_env(services)
    yield ENV
    drop_outbox(ENV.pool, ENV.ledger.topics)
    ENV = None


LedgerMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_ledger_state_machine(env: LedgerEnv) -> None:
    LedgerMachine.TestCase().runTest()


def test_ledger_errors_are_ledger_errors() -> None:
    for exc in (InsufficientBuyingPower, InsufficientQty, NotCancelable, NotReplaceable):
        assert issubclass(exc, LedgerError)
    assert (InsufficientBuyingPower.status, InsufficientQty.status) == (403, 403)
    assert (NotCancelable.status, NotReplaceable.status) == (422, 422)
