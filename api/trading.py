"""python -m api.trading: the REST routes that need only PostgreSQL and Redis.

Orders, the account, API keys and quotes, without ClickHouse: embedded chDB allows one
process per data directory, so the full API (`tapeflow run`) is a single process, while
this app runs in as many processes as the machine has cores (`--workers`, SO_REUSEPORT
through uvicorn's supervisor) and behind a load balancer on any number of machines.
Candles and watchlists (day change reads candles) stay on the full API.

    python -m api.trading --port 8002 --workers 2
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import Depends, FastAPI

from api import errors
from api.auth import authorized
from api.routes import accounts, health, keys, orders, positions, quotes
from infra.market_view import clock_for
from infra.quote_store import QuoteStore
from infra.rate_limit import RateLimiter
from infra.settings import Settings, get_settings
from schemas.sessions import market_session

PROTECTED_ROUTERS = (quotes, accounts, keys, orders, positions)


def create_trading_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Tapeflow trading API",
        version="0.1.0",
        description="Orders, the account, API keys and quotes (no ClickHouse).",
    )
    app.state.settings = settings
    app.state.quotes = QuoteStore(settings.redis)
    app.state.limiter = RateLimiter(settings.redis)
    app.state.clock = clock_for(settings)
    # Loads the exchange calendar now (~1.5 s of CPU) rather than in the first order.
    market_session(app.state.clock())
    errors.install(app)
    orders.install_fast_path(app)  # POST /v1/orders without the dependency machinery
    app.include_router(health.router)
    for module in PROTECTED_ROUTERS:
        app.include_router(
            module.router, dependencies=[Depends(authorized)], responses=errors.AUTH_RESPONSES
        )
    return app


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    p = argparse.ArgumentParser(prog="python -m api.trading", description=__doc__)
    p.add_argument("--host", default=settings.api_host)
    p.add_argument("--port", type=int, default=settings.api_port + 2)
    p.add_argument("--workers", type=int, default=1, help="processes (SO_REUSEPORT)")
    args = p.parse_args(argv)
    uvicorn.run(
        "api.trading:create_trading_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
