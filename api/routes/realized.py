"""GET /v1/account/realized: closed tax lots (FIFO) with proceeds, cost basis and gain."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.auth import CurrentPrincipal
from api.deps import ClockDep, DbDep
from api.errors import ERROR_RESPONSES, invalid
from api.models import FIRST_DAY, LAST_DAY, Money
from infra.realized import closed_lots
from schemas.eod import gain_totals, ny_date

router = APIRouter(tags=["account"], responses=ERROR_RESPONSES)


class ClosedLotOut(BaseModel):
    symbol: str
    qty: Money
    acquired_at: datetime
    sold_at: datetime
    acquired_date: date
    sold_date: date
    proceeds: Money
    cost_basis: Money
    gain: Money
    holding_period: str  # short | long (held more than one year)
    lot_id: int
    execution_id: str  # the sale's


class GainTotalsOut(BaseModel):
    proceeds: Money
    cost_basis: Money
    gain: Money
    short_term_gain: Money
    long_term_gain: Money
    lots: int


class RealizedOut(BaseModel):
    start: date
    end: date
    lots: list[ClosedLotOut]
    totals: GainTotalsOut


@router.get("/v1/account/realized", response_model=RealizedOut, summary="Realized gains")
def get_realized(
    principal: CurrentPrincipal,
    db: DbDep,
    clock: ClockDep,
    start: Annotated[
        date | None,
        Query(
            description="First sale date, New York (default: 1 January)",
            ge=FIRST_DAY,
            le=LAST_DAY,
        ),
    ] = None,
    end: Annotated[
        date | None,
        Query(description="Last sale date (default: today)", ge=FIRST_DAY, le=LAST_DAY),
    ] = None,
) -> RealizedOut:
    """The lots the account closed by selling, first in first out, sold from `start` to
    `end` (New York dates, both included; by default this year to date): quantity,
    acquired and sold dates, proceeds, cost basis, gain, and the holding period (long
    when held more than one year). Money to 4 places; each row's gain is its proceeds
    minus its cost as shown, and the totals add the rows up. 422 `invalid_range` when
    start is after end."""
    end = end or ny_date(clock())
    start = start or date(end.year, 1, 1)
    if start > end:
        raise invalid("invalid_range", f"start {start} is after end {end}")
    lots = closed_lots(db, principal.account_id, start, end)
    return RealizedOut(
        start=start,
        end=end,
        lots=[
            ClosedLotOut(
                **{k: v for k, v in asdict(lot).items() if k not in ("acquired", "sold")},
                acquired_date=lot.acquired,
                sold_date=lot.sold,
            )
            for lot in lots
        ],
        totals=GainTotalsOut(**asdict(gain_totals(lots))),
    )
