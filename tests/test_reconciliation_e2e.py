"""Reconciliation end to end through `tapeflow run`: resting orders fill against a
replayed feed, the venues' reports (venues.executions) and the ledger agree; then
discrepancies are injected around a second replay and each is reported with its kind,
by infra.reconcile, by `tapeflow reconcile` (exit status) and at
GET /v1/admin/reconciliation (operators only).

Injected: a fill produced straight to oms.executions that no venue reported (extra), a
ledger execution whose price is altered in PostgreSQL (mismatch), a venue report of a fill
the ledger refuses (missing, with its anomaly), a venue report the ledger never heard of
(missing), and a venue's repeat of a report with another quantity (conflicting).

The day is 2026-10-14, which no other test reconciles, so the day's newest stored report
is this test's; reconcile is scoped to this test's account (the ledger is shared).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from infra import accounts, api_keys, db
from infra.ledger import Ledger
from infra.quote_store import QuoteStore
from infra.reconcile import reconcile, venue_reports
from infra.replay import replay
from schemas.marketdata import NBBO_VENUE, Quote, Security
from schemas.oms import encode
from schemas.reconciliation import to_ns
from tests.conftest import ROOT, Pipeline, new_user
from tests.e2e_support import until

pytestmark = pytest.mark.services
SYMBOL = "XRCN"
DAY = date(2026, 10, 14)  # a Wednesday; 10:00 New York is 14:00 UTC


def _at(second: int) -> int:
    return to_ns(datetime(2026, 10, 14, 14, 0, second, tzinfo=UTC))


def _quote(second: int, bid: str, bid_size: int, ask: str, ask_size: int) -> str:
    return (
        f'{{"T":"q","S":"{SYMBOL}","bx":"Q","bp":"{bid}","bs":{bid_size},"ax":"Q",'
        f'"ap":"{ask}","as":{ask_size},"t":"2026-10-14T14:00:{second:02d}Z"}}'
    )


def _feed(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "reconcile", "--date", DAY.isoformat(), *args],
        cwd=ROOT,
        env={**os.environ, **pipeline.env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_clean_replay_reconciles_and_injected_discrepancies_are_each_reported(
    services, pipeline: Pipeline, tmp_path
):
    pipeline.env["TAPEFLOW_CLOCK_START"] = "2026-10-14T14:00:00Z"
    ns = time.time_ns()
    QuoteStore(pipeline.settings.redis).apply(
        [
            Security(SYMBOL, "nasdaq", 100, False, ns, ns),
            Quote(SYMBOL, NBBO_VENUE, Decimal("50.10"), 100, Decimal("50.20"), 100, ns, ns, ns),
        ]
    )
    _, account, token = new_user(services, rate_limit=10_000)
    pool = db.pool(services.postgres)
    Ledger(pool, pipeline.topics).deposit(account.id, Decimal("10000"))
    op_user, _ = accounts.create_user(
        pool, f"op{uuid.uuid4().hex[:10]}@test.local", "Operator", is_operator=True
    )
    _, op_token = api_keys.create_key(pool, op_user.id, "ops", rate_limit_per_minute=10_000)
    pipeline.start()
    api = httpx.Client(
        base_url=pipeline.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    settings, scope = pipeline.settings, [account.id]
    nasdaq = pipeline.topics.raw("nasdaq")

    def place(side: str, qty: str, limit: str) -> str:
        body = {
            "symbol": SYMBOL,
            "side": side,
            "type": "limit",
            "time_in_force": "day",
            "qty": qty,
            "limit_price": limit,
        }
        answer = api.post("/v1/orders", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    def order(order_id: str) -> dict:
        return api.get(f"/v1/orders/{order_id}").json()

    def reports_read() -> int:
        return len(venue_reports(settings, DAY, {str(account.id)}))

    # -- a clean replay: three fills, reported by the venue and applied by the ledger ----
    a, b = place("buy", "10", "50.00"), place("buy", "5", "49.50")
    until(lambda: order(a)["status"] == "new" and order(b)["status"] == "new")
    lines = [
        _quote(1, "50.10", 100, "50.20", 100),
        _quote(2, "49.90", 100, "50.00", 4),  # a: 4
        _quote(3, "49.90", 100, "49.95", 20),  # a: the other 6
        _quote(4, "49.30", 100, "49.40", 3),  # b: 3 of 5
    ]
    replay(_feed(tmp_path / "am.jsonl", lines), "nasdaq", settings.bootstrap, None, nasdaq)
    until(lambda: order(a)["status"] == "filled" and order(b)["filled_qty"] == "3.000000")
    until(lambda: reports_read() == 3)

    clean = reconcile(settings, DAY, accounts=scope)
    assert (clean.status, clean.items) == ("clean", ())
    assert clean.counts == {
        "venue_reports": 3,
        "ledger_executions": 3,
        "matched": 3,
        "missing_in_ledger": 0,
        "extra_in_ledger": 0,
        "mismatched": 0,
        "conflicting_reports": 0,
        "ledger_anomalies": 0,
    }
    run = _cli(pipeline, "--account", str(account.id))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"reconciliation of {DAY.isoformat()} (1 account(s)): clean" in run.stdout
    clean_cli = run.stdout.split("[report ", 1)[1].split("]", 1)[0]

    # -- discrepancies injected around a second replay -----------------------------------
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    ids = {"account_id": str(account.id), "symbol": SYMBOL}

    def fill(exec_id: str, order_id: str, qty: str, price: str, second: int) -> dict:
        return {
            "event_id": exec_id,
            "kind": "fill",
            "at": _at(second),
            "order_id": order_id,
            **ids,
            "exec_id": exec_id,
            "qty": qty,
            "price": price,
            "venue": "nasdaq",
            "route": ["nasdaq"],
        }

    def to_ledger(event: dict) -> None:
        producer.produce(pipeline.topics.executions, encode(event), str(account.id).encode())

    def to_venue(exec_id: str, order_id: str, qty: str, price: str, second: int) -> None:
        report = {
            "exec_id": exec_id,
            "order_id": order_id,
            **ids,
            "side": "buy",
            "qty": qty,
            "price": price,
            "venue": "nasdaq",
            "at": _at(second),
        }
        producer.produce(pipeline.topics.venue_reports, orjson.dumps(report), SYMBOL.encode())

    extra, refused, lost = f"fill:{b}:extra", f"fill:{a}:3", f"fill:{b}:9"
    to_ledger(fill(extra, b, "1.000000", "49.4000", 5))  # no venue reported it
    to_venue(refused, a, "1.000000", "49.9500", 6)  # a is filled: the ledger refuses it
    to_ledger(fill(refused, a, "1.000000", "49.9500", 6))
    to_venue(lost, b, "1.000000", "49.4000", 7)  # never reaches the ledger
    to_venue(f"fill:{a}:1", a, "5.000000", "50.0000", 2)  # a repeat, 5 where it was 4
    to_venue(f"fill:{b}:1", b, "3.000000", "49.4000", 4)  # an exact repeat: not a finding
    producer.flush(30)
    with pool.connection() as conn:
        altered = conn.execute(
            "UPDATE executions SET price = 49.9600 WHERE id = %s", (f"fill:{a}:2",)
        ).rowcount
    assert altered == 1

    c = place("sell", "2", "50.50")  # and the replay goes on: a clean sell fill
    until(lambda: order(c)["status"] == "new")
    pm = [_quote(10, "50.60", 10, "50.70", 10)]
    replay(_feed(tmp_path / "pm.jsonl", pm), "nasdaq", settings.bootstrap, None, nasdaq)
    until(lambda: order(c)["status"] == "filled" and order(b)["filled_qty"] == "4.000000")
    with pool.connection() as conn:
        until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM ledger_anomalies WHERE event_id = %s", (refused,)
                ).fetchone()[0]
                == 1
            )
        )
    until(lambda: reports_read() == 8)  # 3 + c's + 4 injected (repeats included)

    found = reconcile(settings, DAY, accounts=scope)
    assert found.status == "discrepancies"
    assert [(i.kind, i.execution_id, i.fields) for i in found.items] == [
        *sorted([("missing_in_ledger", refused, ()), ("missing_in_ledger", lost, ())]),
        ("extra_in_ledger", extra, ()),
        ("mismatch", f"fill:{a}:2", ("price",)),
        ("conflicting_reports", f"fill:{a}:1", ("qty",)),
        ("ledger_anomaly", refused, ()),
    ]
    by_id = {(i.kind, i.execution_id): i for i in found.items}
    assert "the ledger refused it" in by_id[("missing_in_ledger", refused)].detail
    assert "the ledger refused it" not in by_id[("missing_in_ledger", lost)].detail
    mismatch = by_id[("mismatch", f"fill:{a}:2")]
    assert (mismatch.venue["price"], mismatch.ledger["price"]) == ("49.9500", "49.9600")
    assert by_id[("extra_in_ledger", extra)].ledger["qty"] == "1.000000"
    assert found.counts == {
        "venue_reports": 6,  # a:1, a:2, b:1, c:1 and the two injected
        "ledger_executions": 5,  # a:1, a:2, b:1, c:1 and the extra
        "matched": 3,  # a:1 (its first report), b:1, c:1
        "missing_in_ledger": 2,
        "extra_in_ledger": 1,
        "mismatched": 1,
        "conflicting_reports": 1,
        "ledger_anomalies": 1,
    }

    # -- the CLI says so in its exit status; the API serves the stored report -----------
    run = _cli(pipeline, "--account", str(account.id), "--format", "json")
    assert run.returncode == 1, run.stdout + run.stderr
    body = orjson.loads(run.stdout)
    assert (body["status"], body["counts"]) == ("discrepancies", found.counts)

    operator = {"Authorization": f"Bearer {op_token}"}
    latest = httpx.get(
        f"{pipeline.url}/v1/admin/reconciliation",
        params={"date": DAY.isoformat()},
        headers=operator,
        timeout=30,
    )
    assert latest.status_code == 200, latest.text
    served = latest.json()
    assert (served["id"], served["date"], served["status"]) == (
        body["id"],
        "2026-10-14",
        "discrepancies",
    )
    assert served["accounts"] == [str(account.id)] and served["item_count"] == 6
    assert [(i["kind"], i["execution_id"]) for i in served["items"]] == [
        (i.kind, i.execution_id) for i in found.items
    ]
    listed = httpx.get(
        f"{pipeline.url}/v1/admin/reconciliation/reports",
        params={"date": DAY.isoformat(), "limit": 500},
        headers=operator,
        timeout=30,
    ).json()["reports"]
    ours = [body["id"], str(found.id), clean_cli, str(clean.id)]  # newest first
    assert [r["id"] for r in listed if r["id"] in ours] == ours
    assert "items" not in listed[0] and listed[0]["date"] == "2026-10-14"
    one = httpx.get(
        f"{pipeline.url}/v1/admin/reconciliation/reports/{clean.id}", headers=operator, timeout=30
    ).json()
    assert (one["status"], one["items"], one["counts"]["matched"]) == ("clean", [], 3)

    for path in ("", "/reports", f"/reports/{clean.id}"):
        denied = api.get(f"/v1/admin/reconciliation{path}")
        assert (denied.status_code, denied.json()["code"]) == (403, "forbidden")
    missing = httpx.get(
        f"{pipeline.url}/v1/admin/reconciliation/reports/{uuid.uuid4()}",
        headers=operator,
        timeout=30,
    )
    assert (missing.status_code, missing.json()["code"]) == (404, "reconciliation_not_found")
    for path, params, code in (
        ("", {"date": "2026-10-32"}, "invalid_parameter"),
        ("/reports", {"start": "2026-10-15", "end": "2026-10-14"}, "invalid_range"),
    ):
        bad = httpx.get(
            f"{pipeline.url}/v1/admin/reconciliation{path}",
            params=params,
            headers=operator,
            timeout=30,
        )
        assert (bad.status_code, bad.json()["code"]) == (422, code)
    none = httpx.get(
        f"{pipeline.url}/v1/admin/reconciliation",
        params={"date": "1990-01-02"},
        headers=operator,
        timeout=30,
    )
    assert (none.status_code, none.json()["code"]) == (404, "reconciliation_not_found")
