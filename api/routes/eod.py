"""POST /v1/admin/eod: close a trading day's books (operators only), and read a closed day.

`tapeflow eod --date` calls it on the running API, whose process owns chDB (the
snapshots go there); with no API running the command runs the same route in-process.
A day already closed answers its first run (`ran_now` false) and changes nothing.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from api.auth import OPERATOR_RESPONSE, operator_only
from api.deps import DbDep
from api.errors import ERROR_RESPONSES, ApiError, ErrorBody, not_found
from infra import eod
from infra.eod import EodError, EodReport

RESPONSES: dict[int | str, dict[str, Any]] = (
    ERROR_RESPONSES
    | OPERATOR_RESPONSE
    | {
        409: {"model": ErrorBody, "description": "The day's regular session is not over"},
    }
)
router = APIRouter(
    prefix="/v1/admin/eod",
    tags=["admin"],
    responses=RESPONSES,
    dependencies=[Depends(operator_only)],
)


class EodIn(BaseModel):
    date: date


class EodOut(BaseModel):
    date: date
    status: str
    ran_now: bool
    started_at: datetime
    finished_at: datetime | None
    market_cutoff: datetime
    ledger_cutoff: datetime
    expired_orders: int
    accounts: int
    prices: dict[str, str]


def eod_out(r: EodReport) -> EodOut:
    return EodOut(
        date=r.day,
        status=r.status,
        ran_now=r.ran_now,
        started_at=r.started_at,
        finished_at=r.finished_at,
        market_cutoff=r.market_cutoff,
        ledger_cutoff=r.ledger_cutoff,
        expired_orders=r.expired_orders,
        accounts=r.accounts,
        prices=dict(r.prices),
    )


@router.post("", response_model=EodOut, summary="Run end of day for a trading day")
def run_end_of_day(request: Request, body: EodIn) -> EodOut:
    """Expire the day's open day/opg/cls orders, snapshot every account and close the
    day's books; once per day (a second call answers the first run, `ran_now` false).
    422 `not_a_trading_day`; 409 `day_not_over` before the day's regular close by the
    market clock."""
    state = request.app.state
    try:
        report = eod.run_eod(state.settings, body.date, clock=state.clock, ch=state.candles.ch)
    except EodError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return eod_out(report)


@router.get("/{day}", response_model=EodOut, summary="A day's end-of-day run")
def get_end_of_day(day: date, db: DbDep) -> EodOut:
    """The recorded run of `day`; 404 `eod_not_found` when the day was never closed."""
    found = eod.report(db, day)
    if found is None:
        raise not_found("eod_not_found", f"end of day has not run for {day}")
    return eod_out(found)
