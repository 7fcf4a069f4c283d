from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import QuotesDep, SettingsDep, SymbolPath, valid_symbol
from api.errors import ERROR_RESPONSES, invalid, not_found
from api.models import QuoteOut, QuotesOut, SymbolQuoteOut, VenueStatusOut
from infra.quote_store import QuoteStore, StoredQuote
from schemas.json_feed import format_time
from schemas.marketdata import NBBO_VENUE

router = APIRouter(prefix="/v1/quotes", tags=["quotes"], responses=ERROR_RESPONSES)
MAX_SYMBOLS = 200


def quote_out(q: StoredQuote, now_ns: int, stale_ns: int) -> QuoteOut:
    return QuoteOut(
        bid_price=q.bid_price,
        bid_size=q.bid_size,
        ask_price=q.ask_price,
        ask_size=q.ask_size,
        as_of=format_time(q.event_ns),
        # Freshness is judged on when the pipeline received the quote, so a replay of an
        # old session at recorded speed is live, and goes stale when it stops.
        stale=now_ns - q.receive_ns > stale_ns,
    )


def _symbol_quote(store: QuoteStore, symbol: str, stored: dict[str, StoredQuote], stale_s: float):
    now, stale_ns = time.time_ns(), int(stale_s * 1e9)
    statuses = store.statuses(symbol)
    venues = {v: quote_out(q, now, stale_ns) for v, q in stored.items() if v != NBBO_VENUE}
    nbbo = stored.get(NBBO_VENUE)
    newest = max(stored.values(), key=lambda q: q.event_ns, default=None)
    return SymbolQuoteOut(
        symbol=symbol,
        as_of=format_time(newest.event_ns) if newest else None,
        stale=newest is None or now - newest.receive_ns > stale_ns,
        halted=any(s["state"] in ("halted", "paused") for s in statuses.values()),
        nbbo=quote_out(nbbo, now, stale_ns) if nbbo else None,
        venues=venues,
        status={
            v: VenueStatusOut(
                state=s["state"], reason=s["reason"], as_of=format_time(s["event_ns"])
            )
            for v, s in statuses.items()
        },
    )


@router.get("/{symbol}", response_model=SymbolQuoteOut, summary="Latest quote of one symbol")
def get_quote(symbol: SymbolPath, store: QuotesDep, settings: SettingsDep) -> SymbolQuoteOut:
    """NBBO and every venue's latest quote, with the symbol's trading status."""
    if not store.known([symbol])[0]:
        raise not_found("symbol_not_found", f"no market data for symbol '{symbol}'")
    return _symbol_quote(store, symbol, store.quotes(symbol), settings.stale_after_s)


@router.get("", response_model=QuotesOut, summary="Latest quotes of several symbols")
def get_quotes(
    store: QuotesDep,
    settings: SettingsDep,
    symbols: Annotated[str, Query(description="Comma-separated tickers, e.g. AAPL,MSFT")],
) -> QuotesOut:
    wanted = list(dict.fromkeys(valid_symbol(s) for s in symbols.split(",") if s.strip()))
    if not wanted:
        raise invalid("invalid_parameter", "symbols: give at least one ticker")
    if len(wanted) > MAX_SYMBOLS:
        raise invalid("too_many_symbols", f"symbols: at most {MAX_SYMBOLS} per request")
    unknown = [s for s, ok in zip(wanted, store.known(wanted), strict=True) if not ok]
    if unknown:
        raise not_found("symbol_not_found", f"no market data for: {', '.join(unknown)}")
    stored = store.many_quotes(wanted)
    return QuotesOut(
        quotes={s: _symbol_quote(store, s, stored[s], settings.stale_after_s) for s in wanted}
    )
