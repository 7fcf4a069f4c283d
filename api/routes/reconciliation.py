"""GET /v1/admin/reconciliation: the reports `tapeflow reconcile` stores (operators only).

    GET /v1/admin/reconciliation                    the newest report, with its findings
    GET /v1/admin/reconciliation?date=2026-11-24    the newest report of that day
    GET /v1/admin/reconciliation/reports            reports newest first (no findings)
    GET /v1/admin/reconciliation/reports/{id}       one report, with its findings

A caller whose user is not an operator gets 403 `forbidden`; no report: 404
`reconciliation_not_found`. How reports are made: infra/reconcile.py.
"""

from __future__ import annotations

import datetime as dt
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from api.auth import OPERATOR_RESPONSE, operator_only
from api.deps import DbDep
from api.errors import ERROR_RESPONSES, invalid, not_found
from infra import reconcile
from infra.reconcile import StoredReport

MAX_ITEMS = 10_000


RESPONSES: dict[int | str, dict[str, Any]] = ERROR_RESPONSES | OPERATOR_RESPONSE
router = APIRouter(
    prefix="/v1/admin/reconciliation",
    tags=["admin"],
    responses=RESPONSES,
    dependencies=[Depends(operator_only)],
)

ItemKind = Literal[
    "missing_in_ledger", "extra_in_ledger", "mismatch", "conflicting_reports", "ledger_anomaly"
]


class CountsOut(BaseModel):
    venue_reports: int = Field(description="Distinct executions the venues reported")
    ledger_executions: int = Field(description="Executions in the ledger")
    matched: int = Field(description="In both, alike")
    missing_in_ledger: int
    extra_in_ledger: int
    mismatched: int
    conflicting_reports: int
    ledger_anomalies: int


class ItemOut(BaseModel):
    kind: ItemKind
    detail: str = Field(description="What was found, for people")
    execution_id: str | None
    order_id: str | None
    account_id: str | None
    symbol: str | None
    fields: list[str] = Field(description="mismatch, conflicting_reports: the fields that differ")
    venue: dict[str, Any] | None = Field(
        description="The venue's report (conflicting_reports: its first and its other version)"
    )
    ledger: dict[str, Any] | None = Field(
        description="The ledger's execution (ledger_anomaly: the refused event)"
    )


class ReportSummaryOut(BaseModel):
    id: UUID
    date: dt.date = Field(description="The New York trading day reconciled")
    status: Literal["clean", "discrepancies"]
    accounts: list[UUID] | None = Field(description="The accounts it covers; null: all")
    counts: CountsOut
    item_count: int
    started_at: datetime
    created_at: datetime


class ReportOut(ReportSummaryOut):
    items: list[ItemOut] = Field(description="The findings, by kind then id (item_limit first)")


class ReportsOut(BaseModel):
    reports: list[ReportSummaryOut]


def _summary(r: StoredReport) -> dict[str, Any]:
    return {
        "id": r.id,
        "date": r.trading_day,
        "status": r.status,
        "accounts": list(r.accounts) if r.accounts is not None else None,
        "counts": r.counts,
        "item_count": r.item_count,
        "started_at": r.started_at,
        "created_at": r.created_at,
    }


def _report_out(r: StoredReport) -> ReportOut:
    items = [
        ItemOut(
            kind=i.kind,
            detail=i.detail,
            execution_id=i.execution_id,
            order_id=i.order_id,
            account_id=i.account_id,
            symbol=i.symbol,
            fields=list(i.fields),
            venue=i.venue,
            ledger=i.ledger,
        )
        for i in r.items
    ]
    return ReportOut(**_summary(r), items=items)


ItemLimit = Annotated[
    int, Query(ge=0, le=MAX_ITEMS, description="Most findings to include (item_count: all)")
]


@router.get("", response_model=ReportOut, summary="The newest reconciliation report")
def latest(
    db: DbDep,
    day: Annotated[
        date | None,
        Query(alias="date", description="YYYY-MM-DD: that day's newest report (default: any)"),
    ] = None,
    item_limit: ItemLimit = 1000,
) -> ReportOut:
    """The newest report `tapeflow reconcile` stored for `date` (without it: of any day):
    the venues' execution reports against the ledger's executions of that New York day,
    its counts and status (`clean` or `discrepancies`), and its findings."""
    found = reconcile.latest_report(db, day, item_limit)
    if found is None:
        where = f" for {day.isoformat()}" if day else ""
        raise not_found("reconciliation_not_found", f"no reconciliation report{where}")
    return _report_out(found)


@router.get("/reports", response_model=ReportsOut, summary="Reconciliation reports")
def reports(
    db: DbDep,
    day: Annotated[date | None, Query(alias="date", description="Only this day's")] = None,
    start: Annotated[date | None, Query(description="Days from (inclusive)")] = None,
    end: Annotated[date | None, Query(description="Days to (inclusive)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ReportsOut:
    """Stored reports, newest first, without their findings. A rerun of a day adds a
    report; the newest of a day is its answer."""
    if start and end and start > end:
        raise invalid("invalid_range", "start is after end")
    found = reconcile.list_reports(db, day=day, start=start, end=end, limit=limit)
    return ReportsOut(reports=[ReportSummaryOut(**_summary(r)) for r in found])


@router.get("/reports/{report_id}", response_model=ReportOut, summary="One reconciliation report")
def report(
    db: DbDep,
    report_id: Annotated[UUID, Path(description="The report's id")],
    item_limit: ItemLimit = 1000,
) -> ReportOut:
    found = reconcile.get_report(db, report_id, item_limit)
    if found is None:
        raise not_found("reconciliation_not_found", f"no reconciliation report {report_id}")
    return _report_out(found)
