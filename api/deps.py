"""Shared resources injected into routes as annotated types."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Path, Request
from psycopg_pool import ConnectionPool

from api.errors import invalid
from infra import db
from infra.candle_store import CandleStore
from infra.ledger import Ledger
from infra.market_view import Clock
from infra.quote_store import QuoteStore
from infra.settings import Settings
from infra.topics import topics_of

SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9.\-]{0,10}$")


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _quotes(request: Request) -> QuoteStore:
    return request.app.state.quotes


def _candles(request: Request) -> CandleStore:
    return request.app.state.candles


def _db(request: Request) -> ConnectionPool:
    # The process's pool, opened by the first request that needs PostgreSQL.
    return db.pool(request.app.state.settings.postgres)


def _ledger(request: Request) -> Ledger:
    state = request.app.state
    ledger = getattr(state, "ledger", None)
    if ledger is None:  # opened by the first request that needs it, like the pool
        ledger = state.ledger = Ledger(db.pool(state.settings.postgres), topics_of(state.settings))
    return ledger


def _clock(request: Request) -> Clock:
    # app.state.clock: wall UTC by default (api.app.create_app); tests fix it.
    return request.app.state.clock


def valid_symbol(raw: str) -> str:
    symbol = raw.strip().upper()
    if not SYMBOL_RE.match(symbol):
        raise invalid("invalid_symbol", f"'{raw}' is not a ticker symbol (A-Z, 0-9, '.', '-')")
    return symbol


def _path_symbol(symbol: Annotated[str, Path(description="Ticker, e.g. AAPL")]) -> str:
    return valid_symbol(symbol)


SettingsDep = Annotated[Settings, Depends(_settings)]
QuotesDep = Annotated[QuoteStore, Depends(_quotes)]
CandlesDep = Annotated[CandleStore, Depends(_candles)]
SymbolPath = Annotated[str, Depends(_path_symbol)]
DbDep = Annotated[ConnectionPool, Depends(_db)]
LedgerDep = Annotated[Ledger, Depends(_ledger)]
ClockDep = Annotated[Clock, Depends(_clock)]
