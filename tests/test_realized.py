"""Realized gains from real fills (a private PostgreSQL database): GET
/v1/account/realized and `tapeflow report gains --format csv` list the FIFO lot closures
with proceeds, cost basis, gain and holding period, and totals that add up."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infra.clickhouse import release_shared_clickhouse
from tests.eod_support import Book, drop_private, private_settings

NY = ZoneInfo("America/New_York")


def ny(y: int, m: int, d: int, hh: int = 11) -> datetime:
    return datetime(y, m, d, hh, 0, tzinfo=NY).astimezone(UTC)


@pytest.fixture(scope="module")
def sales(services, tmp_path_factory):
    release_shared_clickhouse()
    settings = private_settings(services, tmp_path_factory.mktemp("realized-home"))
    book = Book(settings)
    account, token = book.user("10000")
    book.trade_at(account, "LOT", "buy", "3", "10.0000", ny(2025, 3, 2))  # lot 1
    book.trade_at(account, "LOT", "buy", "5", "12.0000", ny(2026, 1, 5))  # lot 2
    # FIFO: all of lot 1 (held > a year: long), 2 of lot 2 (short)
    book.trade_at(account, "LOT", "sell", "5", "15.0000", ny(2026, 3, 3))
    book.trade_at(account, "LOT", "sell", "1", "11.0000", ny(2026, 11, 24))  # lot 2: a loss
    app = create_app(settings)
    app.state.clock = lambda: ny(2026, 11, 25)
    with TestClient(app) as client:
        yield settings, client, {"Authorization": f"Bearer {token}"}, account
    release_shared_clickhouse()
    drop_private(services, settings)


EXPECTED = [  # symbol, qty, acquired, sold, proceeds, cost, gain, term
    ("LOT", "3.000000", "2025-03-02", "2026-03-03", "45.0000", "30.0000", "15.0000", "long"),
    ("LOT", "2.000000", "2026-01-05", "2026-03-03", "30.0000", "24.0000", "6.0000", "short"),
    ("LOT", "1.000000", "2026-01-05", "2026-11-24", "11.0000", "12.0000", "-1.0000", "short"),
]


def test_realized_lists_the_closed_lots_fifo(sales):
    _, client, auth, _ = sales
    got = client.get("/v1/account/realized?start=2026-01-01&end=2026-11-24", headers=auth)
    assert got.status_code == 200, got.text
    body = got.json()
    rows = [
        (
            r["symbol"],
            r["qty"],
            r["acquired_date"],
            r["sold_date"],
            r["proceeds"],
            r["cost_basis"],
            r["gain"],
            r["holding_period"],
        )
        for r in body["lots"]
    ]
    assert rows == EXPECTED
    assert body["totals"] == {
        "proceeds": "86.0000",
        "cost_basis": "66.0000",
        "gain": "20.0000",
        "short_term_gain": "5.0000",
        "long_term_gain": "15.0000",
        "lots": 3,
    }
    march = client.get("/v1/account/realized?start=2026-03-03&end=2026-03-03", headers=auth)
    assert len(march.json()["lots"]) == 2
    default = client.get("/v1/account/realized", headers=auth).json()  # this year to date
    assert (default["start"], default["end"]) == ("2026-01-01", "2026-11-25")
    assert len(default["lots"]) == 3


def test_realized_validation(sales):
    _, client, auth, _ = sales
    bad = client.get("/v1/account/realized?start=2026-05-01&end=2026-04-01", headers=auth)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_range"
    bad = client.get("/v1/account/realized?start=May", headers=auth)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_parameter"


def test_report_gains_csv(sales):
    settings, _, _, account = sales
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "report",
            "gains",
            "--account",
            str(account),
            "--start",
            "2026-01-01",
            "--end",
            "2026-12-31",
            "--format",
            "csv",
        ],
        env={**os.environ, "TAPEFLOW_POSTGRES_URL": settings.postgres},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    rows = list(csv.reader(io.StringIO(run.stdout)))
    assert rows[0] == [
        "symbol",
        "qty",
        "acquired",
        "sold",
        "proceeds",
        "cost_basis",
        "gain",
        "holding_period",
    ]
    assert [tuple(r) for r in rows[1:-1]] == EXPECTED
    assert rows[-1] == ["TOTAL", "", "", "", "86.0000", "66.0000", "20.0000", ""]
    assert sum(D(r[6]) for r in rows[1:-1]) == D(rows[-1][6])
    assert date.fromisoformat(rows[1][2]) < date(2025, 3, 3)
