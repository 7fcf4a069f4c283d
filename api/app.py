"""The FastAPI edge. `create_app` wires stores once; routes receive them as dependencies."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api import errors
from api.auth import authorized
from api.routes import (
    accounts,
    alerts,
    candles,
    clock,
    eod,
    health,
    keys,
    orders,
    portfolio_history,
    positions,
    quotes,
    realized,
    reconciliation,
    stream,
    watchlists,
)
from infra.candle_store import CandleStore
from infra.clickhouse import shared_clickhouse
from infra.market_view import clock_for
from infra.quote_store import QuoteStore
from infra.rate_limit import RateLimiter
from infra.settings import Settings, get_settings
from schemas.sessions import market_session

# Open to anyone: liveness (and FastAPI's /openapi.json, /docs, /redoc).
OPEN_ROUTERS = (health, stream)  # WS /v1/stream authenticates in its own protocol
# Behind a Bearer API key and its rate limit (api/auth.py), as one router dependency each,
# so no route of these modules can forget it.
PROTECTED_ROUTERS = (
    *(quotes, candles, clock, accounts, keys, watchlists, alerts),
    *(orders, positions, portfolio_history, realized),
    *(eod, reconciliation),  # operators only (api.auth.operator_only)
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Tapeflow",
        version="0.1.0",
        description="Market data, candles, accounts, orders and watchlists from a self-hosted "
        "stream pipeline. Every route but /health needs `Authorization: Bearer <key_id>.<secret>` "
        "(Authorize button above).",
    )
    app.state.settings = settings
    app.state.quotes = QuoteStore(settings.redis)
    app.state.candles = CandleStore(shared_clickhouse(settings))
    app.state.limiter = RateLimiter(settings.redis)
    # The market clock (order placement's sessions and auction cut-offs, GET /v1/clock):
    # wall UTC, or the feed's own time with TAPEFLOW_CLOCK=feed (a replay trades in its
    # session's hours; infra/market_view.py); tests set a fixed one.
    app.state.clock = clock_for(settings)
    # Loads the exchange calendar now (~1.5 s of CPU) rather than in the first order.
    market_session(app.state.clock())
    errors.install(app)
    include_routers(app)
    orders.install_fast_path(app)  # POST /v1/orders without the dependency machinery
    return app


def include_routers(app: FastAPI) -> None:
    """Every REST route, with its protection; no I/O (tests list the routes from it)."""
    for module in OPEN_ROUTERS:
        app.include_router(module.router)
    for module in PROTECTED_ROUTERS:
        app.include_router(
            module.router, dependencies=[Depends(authorized)], responses=errors.AUTH_RESPONSES
        )
