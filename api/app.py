"""The FastAPI edge. `create_app` wires stores once; routes receive them as dependencies."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.routes import candles, health, quotes
from infra.candle_store import CandleStore
from infra.clickhouse import shared_clickhouse
from infra.quote_store import QuoteStore
from infra.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Tapeflow",
        version="0.1.0",
        description="Market data, candles and (soon) orders from a self-hosted stream pipeline.",
    )
    app.state.settings = settings
    app.state.quotes = QuoteStore(settings.redis)
    app.state.candles = CandleStore(shared_clickhouse(settings))
    errors.install(app)
    for module in (health, quotes, candles):
        app.include_router(module.router)
    return app
