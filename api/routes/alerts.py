"""Price alerts: create, list, read, change, cancel, and their firings.

The terms' rules are schemas.alerts.check_terms (422 with a code per rule); storage and
the outbox message each change sends to the alerts flow are infra.alerts. Every query
goes through `AccountAlerts` for the caller's account, made once in a dependency, so
another account's alert answers 404 `alert_not_found` like a missing one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

from api import body as bodies
from api.auth import CurrentPrincipal
from api.deps import CandlesDep, ClockDep, DbDep, QuotesDep, SettingsDep, valid_symbol
from api.errors import ERROR_RESPONSES, ApiError, invalid
from api.models import ExactDecimal
from infra.alerts import MAX_LIST, AccountAlerts, AlertNotFound
from infra.candle_store import NEW_YORK
from infra.topics import topics_of
from schemas.alerts import MAX_NOTE, AlertRefused, AlertTerms
from schemas.sessions import previous_session

log = logging.getLogger("tapeflow.api")
router = APIRouter(prefix="/v1/alerts", tags=["alerts"], responses=ERROR_RESPONSES)

Note = Annotated[str, StringConstraints(max_length=MAX_NOTE)]


class AlertIn(BaseModel):
    """A new alert. Decimals as JSON strings or numbers, read exactly (never via float)."""

    model_config = ConfigDict(extra="forbid")

    symbol: Annotated[str, StringConstraints(min_length=1, max_length=12)]
    type: str = Field(description="price_above, price_below or percent_change")
    price: ExactDecimal | None = Field(default=None, description="The level (price alerts)")
    percent: ExactDecimal | None = Field(
        default=None, description="Move from the previous close, in percent (percent_change)"
    )
    direction: str | None = Field(default=None, description="up, down or either (default)")
    source: str = Field(default="trade", description="trade (last sale) or mid (NBBO midpoint)")
    recurring: StrictBool = False
    cooldown_s: StrictInt | None = Field(
        default=None, description="Recurring alerts: seconds of feed time between firings (300)"
    )
    note: Note | None = None


class AlertPatchIn(BaseModel):
    """The terms to change (symbol and type are fixed); the others stay."""

    model_config = ConfigDict(extra="forbid")

    price: ExactDecimal | None = None
    percent: ExactDecimal | None = None
    direction: str | None = None
    source: str | None = None
    recurring: StrictBool | None = None
    cooldown_s: StrictInt | None = None
    note: Note | None = None


class AlertOut(BaseModel):
    """An alert. Decimals are strings; times RFC 3339 UTC."""

    id: UUID
    symbol: str
    type: str
    price: str | None
    percent: str | None
    direction: str | None
    source: str
    recurring: bool
    cooldown_s: int | None
    note: str | None
    status: str = Field(description="active, triggered (a one-shot alert that fired), canceled")
    version: int = Field(description="Rises with every change")
    reference_close: str | None = Field(
        description="Percent alerts: the previous close known when created"
    )
    reference_day: str | None
    fire_count: int
    last_fired_at: str | None = Field(description="Feed time of the latest firing")
    created_at: str
    updated_at: str
    triggered_at: str | None
    canceled_at: str | None


class AlertFireOut(BaseModel):
    """One firing: the market event that crossed the alert's level."""

    id: UUID
    alert_id: UUID
    alert_version: int
    symbol: str
    fired_at: str = Field(description="Feed time of the crossing event")
    event_ns: int
    crossed: Literal["above", "below"]
    price: str = Field(description="The watched price (trade or NBBO mid) that crossed")
    level: str
    previous_close: str | None
    change_percent: str | None
    source: str
    venue: str | None
    trade_id: str | None
    seq: int = Field(description="The account event that streamed it")
    recorded_at: str


def _account_alerts(principal: CurrentPrincipal, db: DbDep, settings: SettingsDep) -> AccountAlerts:
    """The caller's alerts: the one place alert queries are scoped to an account."""
    return AccountAlerts(db, principal.account_id, topics_of(settings).alerts)


Alerts = Annotated[AccountAlerts, Depends(_account_alerts)]


def _alert_id(alert_id: Annotated[str, Path(description="The alert's id")]) -> UUID:
    """A malformed id names no alert: 404 like an unknown or foreign one."""
    try:
        return UUID(alert_id)
    except ValueError:
        raise _missing(alert_id) from None


AlertId = Annotated[UUID, Depends(_alert_id)]


def _missing(alert_id: object) -> ApiError:
    return ApiError(404, "alert_not_found", f"no alert {alert_id}")


@contextmanager
def _rules(alert_id: object = None) -> Iterator[None]:
    try:
        yield
    except AlertRefused as exc:
        raise invalid(exc.code, exc.message) from None
    except AlertNotFound:
        raise _missing(alert_id) from None


def _reference(candles: Any, symbol: str, today: date) -> tuple[Decimal | None, date]:
    """The previous trading day's close from the candles, for a percent alert's flow to
    use until it has seen that day's close itself (None when the candles lack it)."""
    from infra.day_change import previous_closes

    day = previous_session(today)
    try:
        return previous_closes(candles, [symbol], today).get(symbol), day
    except Exception:  # the flow tracks closes itself; the seed only helps it start
        log.exception("previous close of %s unavailable", symbol)
        return None, day


@router.post("", response_model=AlertOut, status_code=201, openapi_extra=bodies.body_doc(AlertIn))
def create_alert(
    alerts: Alerts,
    quotes: QuotesDep,
    candles: CandlesDep,
    clock: ClockDep,
    raw: Annotated[bytes, Depends(bodies.raw_body)],
) -> dict[str, Any]:
    """A price alert on a symbol with market data (422 `unknown_symbol` otherwise), at most
    200 active per account (422 `too_many_alerts`); each breached rule is a 422 with its
    code (README "Price alerts")."""
    body = bodies.parse(raw, AlertIn)
    symbol = valid_symbol(body.symbol)
    if not quotes.known([symbol])[0]:
        raise invalid("unknown_symbol", f"no market data for symbol '{symbol}'")
    terms = AlertTerms(
        type=body.type,
        price=body.price,
        percent=body.percent,
        direction=body.direction,
        source=body.source,
        recurring=body.recurring,
        cooldown_s=body.cooldown_s,
        note=body.note,
    )
    ref_close, ref_day = None, None
    with _rules():
        if terms.type == "percent_change":
            ref_close, ref_day = _reference(candles, symbol, clock().astimezone(NEW_YORK).date())
        return alerts.create(symbol, terms, ref_close, ref_day)


@router.get("", response_model=list[AlertOut], summary="The caller's alerts")
def list_alerts(
    alerts: Alerts,
    status: Annotated[
        Literal["active", "triggered", "canceled", "all"], Query(description="Default all")
    ] = "all",
    symbols: Annotated[str | None, Query(description="Comma-separated tickers")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> list[dict[str, Any]]:
    """Newest first, with each alert's status, fire count and last firing."""
    wanted = None
    if symbols is not None:
        wanted = [valid_symbol(s) for s in symbols.split(",") if s.strip()]
    return alerts.list(None if status == "all" else status, wanted, limit)


@router.get("/{alert_id}", response_model=AlertOut, summary="One alert")
def get_alert(alerts: Alerts, alert_id: AlertId) -> dict[str, Any]:
    with _rules(alert_id):
        return alerts.get(alert_id)


@router.get("/{alert_id}/fires", response_model=list[AlertFireOut], summary="An alert's firings")
def list_fires(
    alerts: Alerts,
    alert_id: AlertId,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> list[dict[str, Any]]:
    """Oldest first: each crossing that fired, with the price, the level and the event."""
    with _rules(alert_id):
        return alerts.fires(alert_id, limit)


@router.patch(
    "/{alert_id}",
    response_model=AlertOut,
    summary="Change an active alert",
    openapi_extra=bodies.body_doc(AlertPatchIn),
)
def update_alert(
    alerts: Alerts, alert_id: AlertId, raw: Annotated[bytes, Depends(bodies.raw_body)]
) -> dict[str, Any]:
    """Replace the given terms; 422 `alert_not_active` for a triggered or canceled alert.
    Turning `recurring` off drops the cool-down."""
    body = bodies.parse(raw, AlertPatchIn)
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    if not changes:
        raise invalid("invalid_parameter", "give at least one term to change")
    with _rules(alert_id):
        return alerts.update(alert_id, changes)


@router.delete("/{alert_id}", status_code=204, summary="Cancel an alert")
def cancel_alert(alerts: Alerts, alert_id: AlertId) -> Response:
    """The alert turns `canceled` (and stays listed); again: 204. A triggered one-shot
    alert has nothing left to cancel: 422 `alert_not_cancelable`."""
    with _rules(alert_id):
        alerts.cancel(alert_id)
    return Response(status_code=204)
