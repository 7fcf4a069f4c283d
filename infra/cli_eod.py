"""`tapeflow eod --date` and `tapeflow report gains`.

`eod` goes through the running API (POST /v1/admin/eod with an operator's token): that
process owns chDB, where the snapshots go. With no API running it runs the same route
in this process. `report gains` reads PostgreSQL directly (no chDB needed).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Annotated, Literal
from uuid import UUID

import httpx
import typer

from infra import accounts, db
from infra.settings import get_settings

report_app = typer.Typer(help="Reports from the ledger.", no_args_is_help=True)
GAINS_HEADER = [
    "symbol",
    "qty",
    "acquired",
    "sold",
    "proceeds",
    "cost_basis",
    "gain",
    "holding_period",
]


def _date(name: str, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not a date (YYYY-MM-DD): {value}", param_hint=name) from None


def eod_command(
    day: Annotated[str, typer.Option("--date", help="The New York trading day, YYYY-MM-DD")],
    token: Annotated[
        str | None,
        typer.Option(envvar="TAPEFLOW_TOKEN", help="An operator's API key, for a running API"),
    ] = None,
) -> None:
    """End of day: expire the day's open day orders, snapshot every account, close the
    day's books. Once per day: running it again reports the first run."""
    from infra.cli import _local_app

    _date("--date", day)
    settings = get_settings()
    url = f"http://{settings.api_host}:{settings.api_port}/v1/admin/eod"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.post(url, json={"date": day}, headers=headers, timeout=3600)
    except httpx.ConnectError:  # no API: this process may open chDB itself
        resp = _local_app(settings).post("/v1/admin/eod", json={"date": day})
    body = resp.json()
    if resp.status_code != 200:
        typer.echo(f"error {resp.status_code} {body.get('code')}: {body.get('message')}", err=True)
        if resp.status_code in (401, 403):
            typer.echo("pass an operator's key with --token or TAPEFLOW_TOKEN", err=True)
        raise typer.Exit(1)
    if body["ran_now"]:
        typer.echo(
            f"EOD {body['date']}: {body['expired_orders']} day orders expired, "
            f"{body['accounts']} accounts closed"
        )
    else:
        typer.echo(
            f"EOD {body['date']} already ran (finished {body['finished_at']}: "
            f"{body['expired_orders']} orders expired, {body['accounts']} accounts); "
            "nothing changed"
        )


def _account_id(email: str | None, account: str | None) -> UUID:
    pool = db.pool(get_settings().postgres)
    if (email is None) == (account is None):
        raise typer.BadParameter("give --email or --account (one of them)")
    if email is not None:
        user = accounts.find_user(pool, email)
        found = accounts.account_of_user(pool, user.id) if user else None
        if found is None:
            typer.echo(f"no account for {email}", err=True)
            raise typer.Exit(1)
        return found.id
    row = db.fetchone(
        pool,
        "SELECT id FROM accounts WHERE id::text = %s OR account_number = %s",
        (account, account),
    )
    if row is None:
        typer.echo(f"no account {account}", err=True)
        raise typer.Exit(1)
    return row[0]


@report_app.command("gains")
def report_gains(
    email: Annotated[str | None, typer.Option(help="The account's user")] = None,
    account: Annotated[str | None, typer.Option(help="Account id or account number")] = None,
    start: Annotated[
        str | None, typer.Option(help="First sale date, YYYY-MM-DD (default: 1 January)")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Last sale date (default: today)")] = None,
    fmt: Annotated[Literal["csv", "json"], typer.Option("--format")] = "csv",
) -> None:
    """Realized gains: the lots closed by sales (FIFO) with proceeds, cost basis, gain and
    holding period, and a TOTAL row; dates are New York's, both ends included."""
    from infra.realized import closed_lots
    from schemas.eod import gain_totals, ny_date

    account_id = _account_id(email, account)
    last = _date("--end", end) or ny_date(datetime.now(UTC))
    first = _date("--start", start) or date(last.year, 1, 1)
    if first > last:
        raise typer.BadParameter(f"--start {first} is after --end {last}")
    lots = closed_lots(db.pool(get_settings().postgres), account_id, first, last)
    totals = gain_totals(lots)
    if fmt == "json":
        import orjson

        body = {
            "account_id": account_id,
            "start": first,
            "end": last,
            "lots": [asdict(lot) for lot in lots],
            "totals": asdict(totals),
        }
        out = orjson.dumps(body, option=orjson.OPT_INDENT_2, default=str)
        sys.stdout.write(out.decode() + "\n")
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(GAINS_HEADER)
    for lot in lots:
        writer.writerow(
            [
                lot.symbol,
                lot.qty,
                lot.acquired,
                lot.sold,
                lot.proceeds,
                lot.cost_basis,
                lot.gain,
                lot.holding_period,
            ]
        )
    writer.writerow(["TOTAL", "", "", "", totals.proceeds, totals.cost_basis, totals.gain, ""])
