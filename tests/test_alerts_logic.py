"""Price alerts' pure rules (schemas/alerts.py): terms and their codes, crossings, arming,
the cool-down in feed time, percent moves from the previous close the evaluator tracks
(or the API seeded), and firing ids that depend only on the alert and the event."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.alerts import (
    AlertDef,
    AlertRefused,
    AlertTerms,
    SymbolAlerts,
    check_terms,
    cooled,
    crossing,
    fire_id,
    in_regular_session,
    midpoint,
    ny_day,
    patched,
)
from schemas.marketdata import Quote

D = Decimal
S = 1_000_000_000


def ns(iso: str) -> int:
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(t.timestamp()) * S + t.microsecond * 1000


MON = ns("2026-11-23T15:00:00Z")  # 10:00 New York, Monday, regular session
TUE = ns("2026-11-24T15:00:00Z")  # 10:00 New York, Tuesday


def alert(
    aid: str = "a1",
    version: int = 1,
    status: str = "active",
    ref: tuple[str, date] | None = None,
    **terms,
) -> AlertDef:
    t = check_terms(AlertTerms(**{"type": "price_above", **terms}))
    return AlertDef(
        aid,
        "acct",
        "XYZ",
        version,
        status,
        t,
        D(ref[0]) if ref else None,
        ref[1] if ref else None,
    )


def trades(s: SymbolAlerts, prices: list[str], start: int = TUE, step_s: int = 1) -> list:
    fired = []
    for i, p in enumerate(prices):
        fired += s.on_trade(D(p), start + i * step_s * S, "iex", f"t{start + i}")
    return fired


# ------------------------------------------------------------------------------ terms


@pytest.mark.parametrize(
    ("terms", "code"),
    [
        (AlertTerms("price_sideways", price=D(1)), "invalid_type"),
        (AlertTerms("price_above"), "missing_price"),
        (AlertTerms("price_above", price=D(0)), "invalid_price"),
        (AlertTerms("price_above", price=D("-1")), "invalid_price"),
        (AlertTerms("price_above", price=D("1.00001")), "invalid_price"),
        (AlertTerms("price_above", price=D("1000000.01")), "invalid_price"),
        (AlertTerms("price_below", price=D(1), percent=D(1)), "unexpected_percent"),
        (AlertTerms("price_below", price=D(1), direction="up"), "unexpected_direction"),
        (AlertTerms("percent_change"), "missing_percent"),
        (AlertTerms("percent_change", percent=D(1), price=D(1)), "unexpected_price"),
        (AlertTerms("percent_change", percent=D(0)), "invalid_percent"),
        (AlertTerms("percent_change", percent=D("0.00001")), "invalid_percent"),
        (AlertTerms("percent_change", percent=D(1001)), "invalid_percent"),
        (AlertTerms("percent_change", percent=D(100), direction="down"), "invalid_percent"),
        (AlertTerms("percent_change", percent=D(1), direction="sideways"), "invalid_direction"),
        (AlertTerms("price_above", price=D(1), source="last"), "invalid_source"),
        (AlertTerms("price_above", price=D(1), cooldown_s=60), "unexpected_cooldown"),
        (AlertTerms("price_above", price=D(1), recurring=True, cooldown_s=0), "invalid_cooldown"),
        (
            AlertTerms("price_above", price=D(1), recurring=True, cooldown_s=31 * 86400),
            "invalid_cooldown",
        ),
        (AlertTerms("price_above", price=D(1), note="x" * 201), "invalid_note"),
    ],
)
def test_terms_are_refused_with_a_code(terms: AlertTerms, code: str) -> None:
    with pytest.raises(AlertRefused) as refused:
        check_terms(terms)
    assert refused.value.code == code


def test_terms_are_normalized() -> None:
    t = check_terms(AlertTerms("price_above", price=D("189.5")))
    assert (str(t.price), t.cooldown_s, t.source) == ("189.5000", None, "trade")
    t = check_terms(AlertTerms("percent_change", percent=D("2.5"), recurring=True))
    assert (str(t.percent), t.direction, t.cooldown_s) == ("2.5000", "either", 300)
    assert check_terms(AlertTerms("percent_change", percent=D(99), direction="down")).percent


def test_a_patch_keeps_what_it_does_not_name() -> None:
    t = check_terms(AlertTerms("price_above", price=D(10), recurring=True, cooldown_s=60))
    assert patched(t, {"price": D(11)}).price == D("11.0000")
    assert patched(t, {"price": D(11)}).cooldown_s == 60
    once = patched(t, {"recurring": False})
    assert (once.recurring, once.cooldown_s) == (False, None)
    assert patched(once, {"recurring": True}).cooldown_s == 300
    with pytest.raises(AlertRefused) as refused:
        patched(t, {"percent": D(1)})
    assert refused.value.code == "unexpected_percent"
    with pytest.raises(AlertRefused) as refused:
        patched(t, {"type": "price_below"})
    assert refused.value.code == "invalid_parameter"


def test_definition_round_trips_through_json() -> None:
    a = alert(type="percent_change", percent=D("3"), ref=("100.25", date(2026, 11, 23)))
    assert AlertDef.from_json(a.to_json()) == a
    b = alert(price=D("5.5"), recurring=True, cooldown_s=10, source="mid")
    assert AlertDef.from_json(b.to_json()) == b


# ------------------------------------------------------------------------------ rules


def test_crossing_and_cooldown_rules() -> None:
    assert crossing(D(99), D(100), D(100), up=True)  # reaching the level counts
    assert not crossing(D(100), D(101), D(100), up=True)  # already at it: no crossing
    assert not crossing(None, D(101), D(100), up=True)  # nothing to cross from
    assert crossing(D(101), D(100), D(100), up=False)
    assert not crossing(D(99), D(98), D(100), up=False)
    assert cooled(None, 5, 60)
    assert not cooled(0, 59 * S, 60) and cooled(0, 60 * S, 60)
    assert not cooled(100 * S, 10 * S, 60), "a clock that went back waits"


def test_sessions_and_midpoint() -> None:
    assert ny_day(ns("2026-11-24T04:59:59Z")) == date(2026, 11, 23)
    assert ny_day(ns("2026-11-24T05:00:00Z")) == date(2026, 11, 24)
    assert in_regular_session(ns("2026-11-24T14:30:00Z")) == date(2026, 11, 24)
    assert in_regular_session(ns("2026-11-24T14:29:59Z")) is None
    assert in_regular_session(ns("2026-11-24T21:00:00Z")) is None  # 16:00: closed
    assert in_regular_session(ns("2026-11-27T18:00:00Z")) is None  # 13:00 on a half day
    assert midpoint(D("10.00"), D("10.01")) == D("10.0050")
    assert midpoint(D("10.0001"), D("10.0002")) == D("10.0002")  # half-even
    assert midpoint(D(0), D(10)) is None


# ------------------------------------------------------------------------------ evaluation


def test_price_above_fires_on_the_crossing_only_once() -> None:
    s = SymbolAlerts("XYZ")
    s.define(alert(price=D(100)))
    assert trades(s, ["99", "99.5", "99.99"]) == []
    fired = trades(s, ["100"], start=TUE + 10 * S)
    assert [(f.price, f.level, f.crossed, f.one_shot) for f in fired] == [
        (D(100), D(100), "above", True)
    ]
    assert trades(s, ["99", "101", "98", "102"], start=TUE + 20 * S) == [], "one-shot: done"
    assert s.alerts == {}


def test_a_price_already_beyond_the_level_has_to_come_back_first() -> None:
    s = SymbolAlerts("XYZ")
    trades(s, ["105"])  # the last price when the alert arrives
    s.define(alert(price=D(100)))
    assert trades(s, ["106", "104"], start=TUE + S) == []
    assert trades(s, ["99"], start=TUE + 3 * S) == []
    fired = trades(s, ["100.5"], start=TUE + 4 * S)
    assert [f.price for f in fired] == [D("100.5")]


def test_price_below_and_the_last_price_before_the_alert_arms_it() -> None:
    s = SymbolAlerts("XYZ")
    trades(s, ["50"])
    s.define(alert(type="price_below", price=D(45)))
    fired = trades(s, ["44"], start=TUE + S)  # 50 (seen before) -> 44 crosses 45
    assert [(f.crossed, f.price) for f in fired] == [("below", D(44))]


def test_recurring_fires_on_later_crossings_after_the_cooldown() -> None:
    s = SymbolAlerts("XYZ")
    s.define(alert(price=D(100), recurring=True, cooldown_s=60))
    path = ["99", "101", "99", "101", "99"]  # at 0..4 s: the 2nd crossing is within 60 s
    fired = trades(s, path)
    assert [f.event_ns for f in fired] == [TUE + 1 * S]
    # 70 s later: below then above again: fires; a crossing during the cool-down does not
    # carry over: only a new one after it fires.
    assert [f.event_ns for f in trades(s, ["101"], start=TUE + 70 * S)] == [TUE + 70 * S]
    assert trades(s, ["99", "101"], start=TUE + 80 * S) == []
    later = trades(s, ["99", "101"], start=TUE + 200 * S)
    assert [f.event_ns for f in later] == [TUE + 201 * S]
    assert "a1" in s.alerts


def test_ineligible_prints_and_the_other_source_do_not_count() -> None:
    s = SymbolAlerts("XYZ")
    s.define(alert(price=D(100)))
    s.define(alert("m1", price=D(100), source="mid"))
    trades(s, ["99"])
    assert s.on_trade(D(150), TUE + S, "iex", "odd", updates_last=False) == []
    assert s.last["trade"] == D(99), "an odd lot is not a last sale"
    assert s.on_nbbo(D("99.00"), D("99.02"), TUE + 2 * S) == []
    fired = s.on_nbbo(D("100.00"), D("100.02"), TUE + 3 * S, seq=7)
    assert [(f.alert_id, f.source, f.price) for f in fired] == [("m1", "mid", D("100.0100"))]
    assert [f.alert_id for f in trades(s, ["100"], start=TUE + 4 * S)] == ["a1"]


def test_the_mid_comes_from_the_evaluators_own_book_of_venue_quotes() -> None:
    s = SymbolAlerts("XYZ")
    s.define(alert(type="price_below", price=D(98), source="mid"))

    def q(venue: str, bid: str, ask: str, at: int) -> Quote:
        return Quote("XYZ", venue, D(bid), 100, D(ask), 100, TUE + at * S, 0)

    assert s.on_quote(q("iex", "99.00", "99.20", 1)) == []
    assert s.on_quote(q("NBBO", "90.00", "90.20", 2)) == [], "md.quotes' own NBBO is skipped"
    assert s.on_quote(q("nasdaq", "97.00", "97.10", 3)) == []  # NBBO 99.00 x 97.10: 98.05
    assert s.on_quote(q("iex", "99.00", "99.20", 1)) == [], "an older quote moves nothing"
    fired = s.on_quote(q("iex", "97.00", "97.30", 4))  # NBBO 97.00 x 97.10
    assert [(f.price, f.source, f.crossed) for f in fired] == [(D("97.0500"), "mid", "below")]


def test_percent_change_from_the_close_the_evaluator_tracked() -> None:
    s = SymbolAlerts("XYZ")
    # Monday's regular trades; the last one (at 15:59:59) is the close; after-hours prints
    # (not in the regular session) never set it.
    trades(s, ["98", "100"], start=ns("2026-11-23T20:59:58Z"))
    s.on_trade(D(120), ns("2026-11-23T21:30:00Z"), "iex", "late", updates_last=True)
    s.define(alert(type="percent_change", percent=D(5), direction="either"))
    assert s.previous_close(date(2026, 11, 24)) == D(100)
    assert trades(s, ["101", "104.99"]) == []  # Tuesday: from 120 (after hours) down, not -5 %
    fired = trades(s, ["105"], start=TUE + 10 * S)
    assert [(f.crossed, f.level, f.previous_close, f.change_percent) for f in fired] == [
        ("above", D(105), D(100), D("5.0000"))
    ]


def test_percent_change_down_uses_the_seed_until_it_knows_better() -> None:
    s = SymbolAlerts("XYZ")
    seeded = alert(
        type="percent_change",
        percent=D("2.5"),
        direction="down",
        recurring=True,
        cooldown_s=1,
        ref=("200", date(2026, 11, 23)),
    )
    s.define(seeded)
    trades(s, ["199"])
    fired = trades(s, ["195"], start=TUE + S)  # 200 × 0.975 = 195
    assert [(f.crossed, f.level, f.change_percent) for f in fired] == [
        ("below", D("195.0"), D("-2.5000"))
    ]
    # No seed for Wednesday: its previous close is Tuesday's, which the evaluator tracked.
    wed = ns("2026-11-25T15:00:00Z")
    assert s.previous_close(date(2026, 11, 25), seeded) == D(195)
    assert trades(s, ["194", "190.13"], start=wed) == []
    assert [f.level for f in trades(s, ["190.12"], start=wed + 5 * S)] == [D("190.125")]


def test_a_percent_alert_without_a_previous_close_waits() -> None:
    s = SymbolAlerts("XYZ")
    s.define(alert(type="percent_change", percent=D(1)))
    assert trades(s, ["100", "150", "10"]) == []


def test_definitions_apply_by_version_and_cancel_removes() -> None:
    s = SymbolAlerts("XYZ")
    s.define(alert(price=D(100), version=2))
    s.define(alert(price=D(50), version=1))  # older: ignored
    assert s.alerts["a1"].alert.terms.price == D(100)
    s.define(alert(price=D(100), version=3, status="canceled"))
    assert s.alerts == {}
    trades(s, ["99", "101"])
    assert s.alerts == {}


def test_firing_ids_depend_on_the_alert_and_the_event_only() -> None:
    def run() -> list[str]:
        s = SymbolAlerts("XYZ")
        s.define(alert(price=D(100), recurring=True, cooldown_s=1))
        return [f.id for f in trades(s, ["99", "101", "99", "101", "99", "101"], step_s=2)]

    first = run()
    assert len(first) == 3 and first == run()
    assert fire_id("a1", 1, "t|iex|1|5") != fire_id("a1", 2, "t|iex|1|5")
    assert fire_id("a1", 1, "t|iex|1|5") != fire_id("a2", 1, "t|iex|1|5")


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=9_500, max_value=10_500), min_size=2, max_size=80),
    st.integers(min_value=1, max_value=20),
)
def test_recurring_firings_match_an_independent_count(cents: list[int], cooldown: int) -> None:
    level = D(100)
    s = SymbolAlerts("XYZ")
    s.define(alert(price=level, recurring=True, cooldown_s=cooldown))
    prices = [D(c) / 100 for c in cents]
    fired = trades(s, [str(p) for p in prices])
    expected, last = [], None
    for i in range(1, len(prices)):
        if prices[i - 1] < level <= prices[i] and (last is None or i - last >= cooldown):
            expected.append(i)
            last = i
    assert [(f.event_ns - TUE) // S for f in fired] == expected
    assert datetime.fromtimestamp(TUE // S, UTC).date() == date(2026, 11, 24)
