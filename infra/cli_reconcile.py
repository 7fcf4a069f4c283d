"""`tapeflow reconcile`: the venues' execution reports against the ledger (infra/reconcile.py).

Prints a summary and the findings; exits 1 when the report has discrepancies, so a cron
job can alert on it, and 2 when the records could not be read (Kafka or PostgreSQL down,
no venues.executions topic).
"""

from __future__ import annotations

import sys
from datetime import date, datetime
from typing import Annotated
from uuid import UUID
from zoneinfo import ZoneInfo

import orjson
import typer

from infra.settings import get_settings
from schemas.sessions import NEW_YORK

LABELS = (
    ("venue_reports", "venue reports"),
    ("ledger_executions", "ledger executions"),
    ("matched", "matched"),
    ("missing_in_ledger", "missing in ledger"),
    ("extra_in_ledger", "extra in ledger"),
    ("mismatched", "mismatched"),
    ("conflicting_reports", "conflicting venue reports"),
    ("ledger_anomalies", "ledger anomalies"),
)


def _day(value: str | None) -> date:
    if value is None:
        return datetime.now(ZoneInfo(NEW_YORK)).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not a date (YYYY-MM-DD): {value}") from None


def reconcile_command(
    day: Annotated[
        str | None,
        typer.Option("--date", help="New York trading day, YYYY-MM-DD [default: today]"),
    ] = None,
    account: Annotated[
        list[UUID] | None,
        typer.Option(help="Only this account (repeatable) [default: every account]"),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="text or json")] = "text",
    show: Annotated[int, typer.Option(min=0, help="Most findings to print (text)")] = 50,
) -> None:
    """Compare the venues' execution reports of a day with the ledger's executions, list
    what is missing, extra or different and the ledger's anomalies, and store the report
    (GET /v1/admin/reconciliation). Exits 1 when there are discrepancies."""
    from psycopg import OperationalError
    from psycopg_pool import PoolTimeout

    from infra.reconcile import ReconcileError, reconcile

    if fmt not in ("text", "json"):
        raise typer.BadParameter("--format is text or json")
    trading_day = _day(day)
    try:
        report = reconcile(get_settings(), trading_day, accounts=account or None)
    except (ReconcileError, OperationalError, PoolTimeout) as exc:
        typer.echo(f"reconcile: {exc}", err=True)  # not a finding: the records are unreadable
        raise typer.Exit(2) from None
    if fmt == "json":
        body = {
            "id": str(report.id),
            "date": trading_day.isoformat(),
            "status": report.status,
            "accounts": [str(a) for a in report.accounts] if report.accounts else None,
            "counts": report.counts,
            "items": [
                {
                    "kind": i.kind,
                    "execution_id": i.execution_id,
                    "order_id": i.order_id,
                    "account_id": i.account_id,
                    "symbol": i.symbol,
                    "fields": list(i.fields),
                    "detail": i.detail,
                    "venue": i.venue,
                    "ledger": i.ledger,
                }
                for i in report.items
            ],
        }
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        scope = f"{len(report.accounts)} account(s)" if report.accounts else "every account"
        typer.echo(
            f"reconciliation of {trading_day.isoformat()} ({scope}): {report.status}"
            f"  [report {report.id}]"
        )
        typer.echo("  " + ", ".join(f"{label} {report.counts[k]}" for k, label in LABELS))
        for item in report.items[:show]:
            typer.echo(f"  {item.kind:<20} {item.detail}")
        if len(report.items) > show:
            typer.echo(f"  ... {len(report.items) - show} more (GET /v1/admin/reconciliation)")
    raise typer.Exit(1 if report.status == "discrepancies" else 0)
