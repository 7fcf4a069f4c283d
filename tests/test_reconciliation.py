"""Reconciliation's pure parts: the comparison of venue reports with the ledger
(schemas/reconciliation.py) and the venue reports the execution flow writes with each fill
(flows/execution.run_desk). No services."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

import orjson
import pytest

from flows.execution import MARKET, ORDER, run_desk
from schemas.oms import decode
from schemas.reconciliation import (
    KINDS,
    Anomaly,
    Execution,
    day_bounds,
    execution_from_report,
    in_day,
    ns_to_datetime,
    reconcile,
    to_ns,
    venue_report,
)
from tests.test_execution_desk import ACCOUNT, new_msg
from tests.test_execution_fills import NOON, buy, desk_at, quote, sell

DAY = date(2026, 11, 24)
AT = datetime(2026, 11, 24, 15, 0, 2, 123456, tzinfo=UTC)


def ex(n: int, **kw) -> Execution:
    fields = {
        "exec_id": f"fill:o{n}:1",
        "order_id": f"o{n}",
        "account_id": "a1",
        "symbol": "XFIL",
        "side": "buy",
        "qty": D("4.000000"),
        "price": D("50.0000"),
        "venue": "nasdaq",
        "executed_at": AT + timedelta(seconds=n),
    }
    return Execution(**{**fields, **kw})


def anomaly(event_id: str, kind: str = "fill", reason: str = "overfill") -> Anomaly:
    return Anomaly(event_id, "o9", "a1", "XFIL", kind, reason, {"event_id": event_id})


def test_the_same_executions_on_both_sides_reconcile_clean():
    both = [ex(1), ex(2), ex(3)]
    report = reconcile(DAY, both, list(reversed(both)), [])
    assert (report.status, report.items) == ("clean", ())
    assert report.counts() == {
        "venue_reports": 3,
        "ledger_executions": 3,
        "matched": 3,
        "missing_in_ledger": 0,
        "extra_in_ledger": 0,
        "mismatched": 0,
        "conflicting_reports": 0,
        "ledger_anomalies": 0,
    }


def test_an_empty_day_is_clean():
    assert reconcile(DAY, [], [], []).status == "clean"


def test_a_repeated_report_with_the_same_contents_is_dropped():
    """A desk that restarts from a snapshot repeats its reports with the same ids."""
    report = reconcile(DAY, [ex(1), ex(2), ex(1), ex(2)], [ex(1), ex(2)], [])
    assert report.status == "clean" and report.venue_reports == 2 and report.matched == 2


def test_a_repeated_report_with_other_contents_is_a_conflict_and_the_first_is_compared():
    first, other = ex(1), ex(1, qty=D("5"))
    report = reconcile(DAY, [first, other, other], [first], [])
    assert report.status == "discrepancies"
    (item,) = report.items
    assert (item.kind, item.execution_id, item.fields) == (
        "conflicting_reports",
        "fill:o1:1",
        ("qty",),
    )
    assert item.venue == {"first": first.wire(), "again": other.wire()}
    assert report.matched == 1  # the first report agrees with the ledger


def test_missing_extra_and_different_are_each_reported_once_by_kind_then_id():
    venue = [ex(1), ex(2), ex(3, price=D("50.0100")), ex(4, side="sell"), ex(6)]
    ledger = [ex(1), ex(3), ex(4), ex(5), ex(6)]
    report = reconcile(DAY, venue, ledger, [])
    assert [(i.kind, i.execution_id, i.fields) for i in report.items] == [
        ("missing_in_ledger", "fill:o2:1", ()),
        ("extra_in_ledger", "fill:o5:1", ()),
        ("mismatch", "fill:o3:1", ("price",)),
        ("mismatch", "fill:o4:1", ("side",)),
    ]
    missing, extra, price, _ = report.items
    assert missing.venue == ex(2).wire() and missing.ledger is None
    assert extra.ledger == ex(5).wire() and extra.venue is None
    assert (price.venue["price"], price.ledger["price"]) == ("50.0100", "50.0000")
    assert "price 50.0100 at the venue, 50.0000 in the ledger" in price.detail
    assert (price.order_id, price.account_id, price.symbol) == ("o3", "a1", "XFIL")
    counts = report.counts()
    assert (counts["matched"], counts["missing_in_ledger"], counts["extra_in_ledger"]) == (2, 1, 1)
    assert counts["mismatched"] == 2 and report.status == "discrepancies"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"qty": D("4.000001")}, "qty"),
        ({"order_id": "oX"}, "order_id"),
        ({"account_id": "a2"}, "account_id"),
        ({"symbol": "XFIM"}, "symbol"),
        ({"venue": "iex"}, "venue"),
        ({"executed_at": AT + timedelta(seconds=1, milliseconds=2)}, "executed_at"),
    ],
)
def test_every_compared_field_is_a_mismatch(change, field):
    report = reconcile(DAY, [ex(1)], [dataclasses.replace(ex(1), **change)], [])
    assert [(i.kind, i.fields) for i in report.items] == [("mismatch", (field,))]


def test_decimals_compare_by_value_and_times_to_the_microsecond():
    """The ledger keeps NUMERIC and microseconds: 50.00 is 50, but a microsecond apart
    is a different time."""
    same = dataclasses.replace(ex(1), qty=D("4"), price=D("50.00"))
    assert reconcile(DAY, [ex(1)], [same], []).status == "clean"
    later = dataclasses.replace(same, executed_at=ex(1).executed_at + timedelta(microseconds=1))
    report = reconcile(DAY, [ex(1)], [later], [])
    assert [(i.kind, i.fields) for i in report.items] == [("mismatch", ("executed_at",))]


def test_anomalies_are_listed_and_explain_a_refused_fill():
    refused = ex(2)
    report = reconcile(
        DAY,
        [ex(1), refused],
        [ex(1)],
        [anomaly(refused.exec_id, reason="overfill: 10 > 5"), anomaly("canceled:o:3", "canceled")],
    )
    assert [(i.kind, i.execution_id) for i in report.items] == [
        ("missing_in_ledger", refused.exec_id),
        ("ledger_anomaly", None),  # by event id: canceled:o:3 < fill:o2:1
        ("ledger_anomaly", refused.exec_id),
    ]
    assert report.items[0].detail.endswith("(the ledger refused it: overfill: 10 > 5)")
    assert report.items[1].ledger == {
        "event_id": "canceled:o:3",
        "kind": "canceled",
        "payload": {"event_id": "canceled:o:3"},
    }
    assert report.counts()["ledger_anomalies"] == 2


def test_anomalies_alone_make_a_report_with_discrepancies():
    report = reconcile(DAY, [ex(1)], [ex(1)], [anomaly("fill:o7:1")])
    assert report.status == "discrepancies" and report.matched == 1


def test_items_are_grouped_in_the_documented_order_of_kinds():
    report = reconcile(
        DAY,
        [ex(1), ex(1, qty=D(1)), ex(2), ex(3)],
        [ex(1), ex(3, price=D(1)), ex(4)],
        [anomaly("fill:o2:1")],
    )
    assert [i.kind for i in report.items] == list(KINDS)


def test_a_venue_report_reads_back_exactly():
    fill = {
        "event_id": "fill:o1:1",
        "kind": "fill",
        "at": to_ns(AT),
        "order_id": "o1",
        "account_id": "a1",
        "symbol": "XFIL",
        "exec_id": "fill:o1:1",
        "qty": "4.000000",
        "price": "50.0000",
        "venue": "nasdaq",
        "route": ["nasdaq"],
    }
    wire = orjson.loads(orjson.dumps(venue_report(fill, "buy")))
    assert execution_from_report(wire) == ex(1, executed_at=AT)
    assert ex(1).wire()["executed_at"] == "2026-11-24T15:00:03.123456Z"


@pytest.mark.parametrize(
    "bad", [{}, {"exec_id": "x"}, {**venue_report(ex(1).wire() | {"at": 1}, "buy"), "qty": "ten"}]
)
def test_an_unreadable_report_is_refused(bad):
    with pytest.raises(ValueError, match="not an execution report"):
        execution_from_report(bad)


def test_times_convert_exactly_to_the_microsecond():
    ns = 1_795_532_402_123_456_789
    assert ns_to_datetime(ns) == datetime(2026, 11, 24, 15, 0, 2, 123456, tzinfo=UTC)
    assert to_ns(ns_to_datetime(ns)) == ns - 789


def test_a_day_is_the_new_york_calendar_day_across_daylight_saving():
    assert day_bounds(DAY) == (
        datetime(2026, 11, 24, 5, tzinfo=UTC),
        datetime(2026, 11, 25, 5, tzinfo=UTC),
    )
    start, end = day_bounds(date(2026, 3, 8))  # clocks go forward: a 23-hour day
    assert end - start == timedelta(hours=23)
    assert in_day(datetime(2026, 11, 24, 5, tzinfo=UTC), DAY)
    assert not in_day(datetime(2026, 11, 25, 5, tzinfo=UTC), DAY)
    assert not in_day(datetime(2026, 11, 24, 4, 59, 59, 999999, tzinfo=UTC), DAY)


# -- the execution flow writes the venues' reports ---------------------------------------


def _reports(out: list) -> list[tuple[str, bytes, dict]]:
    return [(t, k, decode(v)) for t, k, v, _ in out if t == "venues"]


def test_run_desk_writes_a_venue_report_per_fill_keyed_by_symbol():
    desk = desk_at(iex=("9.98", 100, "10.00", 30), nasdaq=("9.97", 100, "10.01", 100))
    resting = buy(limit_price=D("9.95"), qty=D("50"))  # open before the work, fills whole
    partial = sell(limit_price=D("9.90"), qty=D("500"))  # stays open: its side from the desk
    desk.on_order_message(new_msg(resting, 1))
    desk.on_order_message(new_msg(partial, 2))
    arriving = buy("market", qty=D("40"))  # brought and filled by this work
    work = (
        "AAPL",
        [
            (ORDER, new_msg(arriving, 3)),
            (MARKET, quote("iex", "9.99", 200, "9.94", 80, NOON + 5)),
        ],
    )
    desk, out = run_desk(desk, work, "execs", reports_topic="venues")
    answers = [decode(v) for t, _, v, _ in out if t == "execs"]
    fills = [a for a in answers if a["kind"] == "fill"]
    reports = _reports(out)
    assert len(fills) >= 4 and len(reports) == len(fills)
    sides = {str(resting.id): "buy", str(partial.id): "sell", str(arriving.id): "buy"}
    assert {str(o.id) for o in (resting, partial, arriving)} <= {f["order_id"] for f in fills}
    for fill, (topic, key, report) in zip(fills, reports, strict=True):
        assert (topic, key) == ("venues", b"AAPL")
        assert report == venue_report(fill, sides[fill["order_id"]])
        assert report["account_id"] == str(ACCOUNT)
    assert str(partial.id) in desk.orders and str(resting.id) not in desk.orders


def test_run_desk_without_a_reports_topic_writes_only_the_answers():
    desk = desk_at(iex=("9.98", 100, "10.00", 30))
    work = ("AAPL", [(ORDER, new_msg(buy("market", qty=D("10")), 1))])
    _, out = run_desk(desk, work, "execs")
    assert {t for t, _, _, _ in out} == {"execs"} and len(out) == 2
