from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path

from api.auth import CurrentPrincipal
from api.deps import CandlesDep, DbDep, QuotesDep, SettingsDep, SymbolPath, valid_symbol
from api.errors import ERROR_RESPONSES, ApiError, ErrorBody, conflict, invalid, not_found
from api.models import (
    WatchlistAssetOut,
    WatchlistDetailOut,
    WatchlistIn,
    WatchlistOut,
    WatchlistSymbolIn,
    WatchlistUpdateIn,
)
from api.routes.quotes import quote_out
from infra.day_change import day_changes
from infra.quote_store import QuoteStore
from infra.watchlists import (
    NameTaken,
    SymbolNotListed,
    Watchlist,
    WatchlistError,
    Watchlists,
    check_symbols,
)
from schemas.marketdata import NBBO_VENUE

RESPONSES: dict[int | str, dict[str, Any]] = ERROR_RESPONSES | {
    409: {"model": ErrorBody, "description": "A watchlist of that name exists"}
}
router = APIRouter(prefix="/v1/watchlists", tags=["watchlists"], responses=RESPONSES)


def _account_watchlists(principal: CurrentPrincipal, db: DbDep) -> Watchlists:
    """The caller's watchlists: the one place watchlist queries are scoped to an account."""
    return Watchlists(db, principal.account_id)


AccountWatchlists = Annotated[Watchlists, Depends(_account_watchlists)]


def _owned(
    watchlist_id: Annotated[UUID, Path(description="The watchlist's id")],
    lists: AccountWatchlists,
) -> Watchlist:
    found = lists.get(watchlist_id)
    if found is None:
        raise _missing(watchlist_id)
    return found


OwnedWatchlist = Annotated[Watchlist, Depends(_owned)]


def _missing(watchlist_id: UUID) -> ApiError:
    return not_found("watchlist_not_found", f"no watchlist {watchlist_id}")


@contextmanager
def _rules() -> Iterator[None]:
    """The watchlist rules broken, as API errors."""
    try:
        yield
    except NameTaken as exc:
        raise conflict(exc.code, str(exc)) from None
    except SymbolNotListed as exc:
        raise not_found(exc.code, str(exc)) from None
    except WatchlistError as exc:
        raise invalid(exc.code, str(exc)) from None


def _listable(raw: list[str], quotes: QuoteStore) -> list[str]:
    """Tickers checked in order of cost: syntax, list rules, then market data in Redis."""
    symbols = [valid_symbol(s) for s in raw]
    with _rules():
        check_symbols(symbols)
    if symbols:
        unknown = [s for s, ok in zip(symbols, quotes.known(symbols), strict=True) if not ok]
        if unknown:
            raise not_found("symbol_not_found", f"no market data for: {', '.join(unknown)}")
    return symbols


def _out(w: Watchlist) -> WatchlistOut:
    return WatchlistOut(
        id=w.id,
        account_id=w.account_id,
        name=w.name,
        created_at=w.created_at,
        updated_at=w.updated_at,
        symbols=list(w.symbols),
    )


@router.get("", response_model=list[WatchlistOut], summary="The caller's watchlists")
def list_watchlists(lists: AccountWatchlists) -> list[WatchlistOut]:
    """Every watchlist of the caller's account, oldest first, with its symbols."""
    return [_out(w) for w in lists.all()]


@router.post("", response_model=WatchlistOut, status_code=201, summary="Create a watchlist")
def create_watchlist(
    body: WatchlistIn, lists: AccountWatchlists, quotes: QuotesDep
) -> WatchlistOut:
    """A named list of symbols in display order. Names are unique per account (409
    `watchlist_exists`); at most 50 watchlists per account (422 `too_many_watchlists`) and
    200 symbols per list (422 `too_many_symbols`); a symbol twice is 422
    `duplicate_symbol`; a symbol without market data is 404 `symbol_not_found`."""
    symbols = _listable(body.symbols, quotes)
    with _rules():
        return _out(lists.create(body.name, symbols))


@router.get(
    "/{watchlist_id}", response_model=WatchlistDetailOut, summary="A watchlist with live prices"
)
def get_watchlist(
    watchlist: OwnedWatchlist,
    quotes: QuotesDep,
    candles: CandlesDep,
    settings: SettingsDep,
) -> WatchlistDetailOut:
    """The watchlist and, per symbol in order, its latest NBBO (from Redis) and its day
    change: the last trade price against the previous New York trading day's close (from
    the candles). Each of these is null when unknown."""
    symbols = list(watchlist.symbols)
    stored = quotes.many_quotes(symbols) if symbols else {}
    changes = day_changes(candles, symbols)
    now, stale_ns = time.time_ns(), int(settings.stale_after_s * 1e9)
    assets = []
    for s in symbols:
        nbbo = stored[s].get(NBBO_VENUE)
        change = changes[s]
        assets.append(
            WatchlistAssetOut(
                symbol=s,
                quote=quote_out(nbbo, now, stale_ns) if nbbo else None,
                last_price=change.last_price,
                previous_close=change.previous_close,
                change=change.change,
                change_percent=change.change_percent,
            )
        )
    return WatchlistDetailOut(**_out(watchlist).model_dump(), assets=assets)


@router.put("/{watchlist_id}", response_model=WatchlistOut, summary="Rename or replace symbols")
def update_watchlist(
    watchlist: OwnedWatchlist, body: WatchlistUpdateIn, lists: AccountWatchlists, quotes: QuotesDep
) -> WatchlistOut:
    """Give `name` to rename, `symbols` to replace every symbol (in the new order), or both."""
    if body.name is None and body.symbols is None:
        raise invalid("invalid_parameter", "give name, symbols or both")
    symbols = None if body.symbols is None else _listable(body.symbols, quotes)
    with _rules():
        updated = lists.update(watchlist.id, name=body.name, symbols=symbols)
    if updated is None:
        raise _missing(watchlist.id)
    return _out(updated)


@router.delete("/{watchlist_id}", status_code=204, summary="Delete a watchlist")
def delete_watchlist(watchlist: OwnedWatchlist, lists: AccountWatchlists) -> None:
    if not lists.delete(watchlist.id):
        raise _missing(watchlist.id)


@router.post("/{watchlist_id}/symbols", response_model=WatchlistOut, summary="Append a symbol")
def add_symbol(
    watchlist: OwnedWatchlist, body: WatchlistSymbolIn, lists: AccountWatchlists, quotes: QuotesDep
) -> WatchlistOut:
    """Append at the end. 422 `invalid_symbol` for a malformed ticker, 404
    `symbol_not_found` for one without market data, 422 `duplicate_symbol` if listed."""
    [symbol] = _listable([body.symbol], quotes)
    with _rules():
        updated = lists.add_symbol(watchlist.id, symbol)
    if updated is None:
        raise _missing(watchlist.id)
    return _out(updated)


@router.delete(
    "/{watchlist_id}/symbols/{symbol}", response_model=WatchlistOut, summary="Remove a symbol"
)
def remove_symbol(
    watchlist: OwnedWatchlist, symbol: SymbolPath, lists: AccountWatchlists
) -> WatchlistOut:
    """404 `symbol_not_in_watchlist` when the list does not hold it."""
    with _rules():
        updated = lists.remove_symbol(watchlist.id, symbol)
    if updated is None:
        raise _missing(watchlist.id)
    return _out(updated)
