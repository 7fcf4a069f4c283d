"""Orders: place, list, read, cancel and replace (shaped like Alpaca's orders API).

Placement rules are schemas.orders.place (its docstring lists them); reservations and
every change to an order are one PostgreSQL transaction in infra.ledger.Ledger. An
answer is sent only after its transaction committed.

Idempotency-Key (POST /v1/orders): the key, scoped to the account, names one request:
SHA-256 of the method, the path and the canonical body (keys sorted, decimals
normalized, symbol upper-cased). A retry with the same key and body gets the stored
answer byte for byte with its status; the same key with another body answers 422
`idempotency_key_reused`. Only answers that created an order are remembered: a refused
request (422, 403) is evaluated again when retried, since nothing happened.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter
from starlette.types import ASGIApp, Receive, Scope, Send

from api import body as bodies
from api.auth import CurrentPrincipal, authorized, bearer
from api.deps import ClockDep, LedgerDep, QuotesDep, valid_symbol
from api.errors import (
    ERROR_RESPONSES,
    ApiError,
    ErrorBody,
    api_error_response,
    invalid,
    validation_response,
)
from api.models import CancelResultOut, OrderIn, OrderOut, ReplaceIn
from infra import db
from infra.aio_redis import LoopRedis
from infra.ledger import Ledger, LedgerError, OrderNotFound, Replay, request_hash
from infra.market_view import symbol_view, symbol_view_async
from infra.order_batch import NewOrder, OrderBatcher
from infra.topics import topics_of
from schemas.oms import Order
from schemas.orders import (
    OrderRefused,
    OrderRequest,
    OrderType,
    Placement,
    Side,
    TimeInForce,
    place,
)

RESPONSES: dict[int | str, dict[str, Any]] = ERROR_RESPONSES | {
    403: {
        "model": ErrorBody,
        "description": "Not enough buying power (`insufficient_buying_power`) or shares "
        "(`insufficient_qty`)",
    },
}
router = APIRouter(prefix="/v1/orders", tags=["orders"], responses=RESPONSES)
PLACE_PATH = router.prefix

MAX_LIST = 500
MAX_SYMBOLS = 200
MAX_IDEMPOTENCY_KEY = 255
JSON = "application/json"
_ORDERS = TypeAdapter(list[OrderOut])
_RESULTS = TypeAdapter(list[CancelResultOut])


# ------------------------------------------------------------------ account scoping


@dataclass(frozen=True, slots=True)
class AccountOrders:
    """The caller's orders: the one place order operations are scoped to an account."""

    ledger: Ledger
    account_id: UUID
    # The request's response headers so far (X-RateLimit-*, set by api.auth): FastAPI
    # adds them only to answers it renders itself, and these routes send their own bytes.
    headers: Response

    def get(self, order_id: UUID) -> Order:
        return self.ledger.get(self.account_id, order_id)

    def answer(
        self, content: bytes, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        out = Response(content, status_code=status, media_type=JSON, headers=headers)
        for name, value in self.headers.headers.items():
            if name.lower() not in ("content-length", "content-type"):
                out.headers[name] = value
        return out


def _account_orders(
    principal: CurrentPrincipal, ledger: LedgerDep, response: Response
) -> AccountOrders:
    return AccountOrders(ledger, principal.account_id, response)


Orders = Annotated[AccountOrders, Depends(_account_orders)]


def _order_id(order_id: Annotated[str, Path(description="The order's id")]) -> UUID:
    """A malformed id names no order: 404 like an unknown or foreign one."""
    try:
        return UUID(order_id)
    except ValueError:
        raise ApiError(404, "order_not_found", f"no order {order_id}") from None


OrderId = Annotated[UUID, Depends(_order_id)]


@contextmanager
def _rules() -> Iterator[None]:
    """Placement rules and ledger refusals as API errors."""
    try:
        yield
    except OrderRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    except LedgerError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    except InvalidOperation:
        raise invalid("invalid_parameter", "a number is out of range") from None


# ------------------------------------------------------------------------ rendering


def _utc(t: datetime | None) -> datetime | None:
    return t.astimezone(UTC) if t is not None else None


def order_out(o: Order) -> OrderOut:
    values = {name: getattr(o, name) for name in OrderOut.model_fields}
    for name, value in values.items():
        if isinstance(value, datetime):
            values[name] = _utc(value)
    values["status"] = str(o.status)
    return OrderOut(**values)


def render(o: Order) -> bytes:
    return order_out(o).model_dump_json().encode()


# -------------------------------------------------------------------------- placing


def _canonical(body: OrderIn) -> bytes:
    """The body as the idempotency hash sees it: equal requests, equal bytes."""

    def canon(v: Any) -> Any:
        return format(v.normalize(), "f") if isinstance(v, Decimal) else v

    return orjson.dumps(
        {k: canon(v) for k, v in body.model_dump().items()}, option=orjson.OPT_SORT_KEYS
    )


def _request(body: OrderIn) -> OrderRequest:
    return OrderRequest(
        symbol=body.symbol,
        side=Side(body.side),
        type=OrderType(body.type),
        time_in_force=TimeInForce(body.time_in_force),
        qty=body.qty,
        notional=body.notional,
        limit_price=body.limit_price,
        stop_price=body.stop_price,
        trail_price=body.trail_price,
        trail_percent=body.trail_percent,
        extended_hours=body.extended_hours,
    )


def _batcher(request: Request) -> OrderBatcher:
    state = request.app.state
    batcher = getattr(state, "order_batcher", None)
    if batcher is None:  # made by the first order; it connects when its first batch runs
        ledger = Ledger(db.pool(state.settings.postgres), topics_of(state.settings))
        batcher = state.order_batcher = OrderBatcher(state.settings.postgres, ledger)
    return batcher


def _aio_redis(request: Request) -> LoopRedis:
    state = request.app.state
    client = getattr(state, "aio_redis", None)
    if client is None:
        client = state.aio_redis = LoopRedis(state.settings.redis)
    return client


def _answer(response: Response, content: bytes, status: int = 200) -> Response:
    """AccountOrders.answer without the AccountOrders: the X-RateLimit-* headers too."""
    out = Response(content, status_code=status, media_type=JSON)
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "content-type"):
            out.headers[name] = value
    return out


@router.post(
    "",
    response_model=OrderOut,
    summary="Place an order",
    openapi_extra=bodies.body_doc(OrderIn),
)
async def place_order(
    http: Request,
    response: Response,
    principal: CurrentPrincipal,
    raw: Annotated[bytes, Depends(bodies.raw_body)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Makes retries safe: the same key and body get the first answer again",
        ),
    ] = None,
) -> Response:
    """Validates the order (422 with a code per rule: README "Orders"), reserves its
    worst-case cost or its shares (403 `insufficient_buying_power` / `insufficient_qty`),
    and answers 200 with the order once it is committed: `pending_new` (sent to the
    execution side) or `accepted` (held until the regular session opens)."""
    # Async, with every dependency async: no thread-pool hop on the way. Redis through
    # infra/aio_redis.py; the order joins the process's next group commit (infra/order_batch).
    body = bodies.parse(raw, OrderIn)
    body = body.model_copy(update={"symbol": valid_symbol(body.symbol)})
    batcher = _batcher(http)
    account_id = principal.account_id
    idempotency = None
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise invalid("invalid_idempotency_key", "Idempotency-Key is 1 to 255 characters")
        digest = request_hash("POST", router.prefix, _canonical(body))
        idempotency = (idempotency_key, digest)
        with _rules():
            stored = await run_in_threadpool(batcher.ledger.replay, account_id, *idempotency)
        if stored is not None:
            return _answer(response, stored.body, stored.status_code)
    view = await symbol_view_async(_aio_redis(http), body.symbol, http.app.state.clock())
    if not view.known:
        raise invalid("unknown_symbol", f"no market data for symbol '{body.symbol}'")
    rendered: list[bytes] = []

    def render_once(o: Order) -> bytes:
        rendered.append(render(o))
        return rendered[-1]

    with _rules():
        request = _request(body)
        placement = place(request, view.market)
        result = await batcher.place(
            NewOrder(
                account_id,
                request,
                placement,
                body.client_order_id,
                idempotency,
                render_once if idempotency is not None else None,
            )
        )
    if isinstance(result, Replay):  # a concurrent request with the same key came first
        return _answer(response, result.body, result.status_code)
    return _answer(response, rendered[-1] if rendered else render(result))


# -------------------------------------------------------------------------- reading


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise invalid("invalid_time", f"{name}: give a UTC offset, e.g. 2026-11-24T14:30:00Z")
    return value


def _cursor_of(o: Order) -> str:
    text = f"{o.created_at.astimezone(UTC).isoformat()}|{o.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, _, order_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at, UUID(order_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("invalid_cursor", "cursor: pass the X-Next-Cursor header's value") from None


@router.get(
    "",
    response_model=list[OrderOut],
    summary="The caller's orders",
    responses={
        200: {
            "headers": {
                "X-Next-Cursor": {
                    "description": "Pass as cursor for the next page; absent on the last page",
                    "schema": {"type": "string"},
                }
            }
        }
    },
)
def list_orders(
    orders: Orders,
    status: Annotated[
        Literal["open", "closed", "all"], Query(description="open: not yet terminal")
    ] = "open",
    symbols: Annotated[str | None, Query(description="Comma-separated tickers")] = None,
    after: Annotated[
        datetime | None, Query(description="Created after this (RFC 3339 with offset)")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="Created before this (RFC 3339 with offset)")
    ] = None,
    direction: Annotated[Literal["asc", "desc"], Query(description="By created_at")] = "desc",
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
    cursor: Annotated[str | None, Query(description="From X-Next-Cursor")] = None,
) -> Response:
    """A bare JSON array of orders by creation time (then id). When more may follow, the
    `X-Next-Cursor` header holds the cursor for the next page with the same filters."""
    wanted = None
    if symbols:
        wanted = list(dict.fromkeys(valid_symbol(s) for s in symbols.split(",") if s.strip()))
        if len(wanted) > MAX_SYMBOLS:
            raise invalid("too_many_symbols", f"symbols: at most {MAX_SYMBOLS} per request")
    rows = orders.ledger.list(
        orders.account_id,
        status=status,
        symbols=wanted,
        after=_aware("after", after),
        until=_aware("until", until),
        direction=direction,
        limit=limit + 1,  # one more tells whether another page exists
        cursor=_parse_cursor(cursor) if cursor else None,
    )
    page = rows[:limit]
    headers = {"X-Next-Cursor": _cursor_of(page[-1])} if len(rows) > limit else None
    return orders.answer(_ORDERS.dump_json([order_out(o) for o in page]), headers=headers)


@router.get(
    ":by_client_order_id", response_model=OrderOut, summary="An order by its client_order_id"
)
def get_by_client_order_id(
    orders: Orders, client_order_id: Annotated[str, Query(min_length=1, max_length=128)]
) -> Response:
    with _rules():
        return orders.answer(
            render(orders.ledger.by_client_order_id(orders.account_id, client_order_id))
        )


@router.get("/{order_id}", response_model=OrderOut, summary="One order")
def get_order(orders: Orders, order_id: OrderId) -> Response:
    with _rules():
        return orders.answer(render(orders.get(order_id)))


# ------------------------------------------------------------------ cancel, replace


@router.delete(
    "/{order_id}",
    response_model=OrderOut,
    summary="Request a cancel",
)
def cancel_order(orders: Orders, order_id: OrderId) -> Response:
    """200 with the order, now `pending_cancel`: it becomes `canceled` (and its reservation
    is released) when the execution side confirms. 422 `order_not_cancelable` for an order
    that is terminal or already pending a cancel or replace."""
    with _rules():
        return orders.answer(render(orders.ledger.request_cancel(orders.account_id, order_id)))


@router.delete(
    "",
    response_model=list[CancelResultOut],
    status_code=207,
    summary="Request a cancel of every open order",
)
def cancel_all(orders: Orders) -> Response:
    """207 with one entry per open order: its id, the HTTP status of its cancel request
    and the order (now `pending_cancel`) or the error. Orders already pending a cancel or
    replace are left out."""
    results = []
    for order_id, outcome in orders.ledger.cancel_all(orders.account_id):
        if isinstance(outcome, LedgerError):
            results.append(
                CancelResultOut(
                    id=order_id,
                    status=outcome.status,
                    body=ErrorBody(code=outcome.code, message=outcome.message),
                )
            )
        else:
            results.append(CancelResultOut(id=order_id, status=200, body=order_out(outcome)))
    return orders.answer(_RESULTS.dump_json(results), 207)


def _replacement(old: Order, change: ReplaceIn) -> OrderRequest:
    """The old order's terms with the changes; `trail` sets whichever trail it uses."""
    trail_price, trail_percent = old.trail_price, old.trail_percent
    if change.trail is not None:
        if old.trail_percent is not None:
            trail_percent = change.trail
        elif old.trail_price is not None:
            trail_price = change.trail
        else:
            raise OrderRefused("unexpected_price", f"{old.type} orders take no trail")

    def pick(new: Any, was: Any) -> Any:
        return was if new is None else new

    return OrderRequest(
        symbol=old.symbol,
        side=Side(old.side),
        type=OrderType(old.type),
        time_in_force=TimeInForce(pick(change.time_in_force, old.time_in_force)),
        qty=pick(change.qty, old.qty),
        notional=old.notional,
        limit_price=pick(change.limit_price, old.limit_price),
        stop_price=pick(change.stop_price, old.stop_price),
        trail_price=trail_price,
        trail_percent=trail_percent,
        extended_hours=old.extended_hours,
    )


@router.patch(
    "/{order_id}",
    response_model=OrderOut,
    summary="Replace an order",
    openapi_extra=bodies.body_doc(ReplaceIn),
)
def replace_order(
    orders: Orders,
    order_id: OrderId,
    quotes: QuotesDep,
    clock: ClockDep,
    raw: Annotated[bytes, Depends(bodies.raw_body)],
) -> Response:
    """Change qty, limit_price, stop_price, trail or time_in_force: a new order with the
    old one's other terms, validated like a new order, answered with 200. The old order
    becomes `pending_replace` (`replaced_by` the new one) until the execution side
    confirms; the new one (`replaces` the old) reserves only what the old one does not
    already hold."""
    change = bodies.parse(raw, ReplaceIn)
    terms = change.model_dump(exclude={"client_order_id"}, exclude_none=True)
    if not terms:
        raise invalid(
            "invalid_parameter",
            "give at least one of qty, limit_price, stop_price, trail, time_in_force",
        )
    with _rules():
        current = orders.get(order_id)
    market = symbol_view(quotes.redis, current.symbol, clock()).market

    def build(old: Order) -> tuple[OrderRequest, Placement, str | None]:
        if old.symbol != current.symbol:  # never: an order's symbol does not change
            raise OrderNotFound(f"no order {order_id}")
        request = _replacement(old, change)
        return request, place(request, market), change.client_order_id

    with _rules():
        return orders.answer(
            render(orders.ledger.request_replace(orders.account_id, order_id, build))
        )


# ------------------------------------------------------------------ the fast path


class PlaceOrderFastPath:
    """ASGI middleware serving POST /v1/orders without FastAPI's routing and dependency
    machinery, which cost more CPU than everything else the route does.

    It calls the same functions FastAPI would (the bearer scheme, `authorized`,
    `place_order`) and renders errors with the app's own handlers (api/errors.py), so
    the answers are the same; every other request, and this one when `authorized` is
    overridden (the CLI's local app), goes through FastAPI as before.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != PLACE_PATH
            or scope["app"].dependency_overrides
        ):
            await self.app(scope, receive, send)
            return
        http = Request(scope, receive)
        carrier = Response()  # collects X-RateLimit-* like FastAPI's sub-response
        try:
            principal = await authorized(http, carrier, await bearer(http))
            raw = await http.body()
            answer = await place_order(
                http, carrier, principal, raw, http.headers.get("idempotency-key")
            )
        except ApiError as exc:
            answer = api_error_response(exc)
        except RequestValidationError as exc:
            answer = validation_response(exc)
        await answer(scope, receive, send)


def install_fast_path(app: FastAPI) -> None:
    app.add_middleware(PlaceOrderFastPath)
