"""The JSON-lines vendor feed: parsing, every malformed path, times, round trips."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.json_feed import (
    encode_event,
    format_time,
    iter_lines,
    line_event_time,
    line_symbol,
    parse_line,
    parse_time,
)
from schemas.marketdata import Malformed, Quote, Security, Status, SystemEvent, Trade, TradeBreak
from schemas.sale_conditions import KNOWN, eligibility

T0 = "2026-11-24T14:30:00.123456789Z"
T0_NS = 1_795_530_600_123_456_789
RECV = 42

QUOTE = {
    "T": "q",
    "S": "AAPL",
    "bx": "Q",
    "bp": "189.10",
    "bs": 300,
    "ax": "Q",
    "ap": "189.12",
    "as": 200,
    "t": T0,
}
TRADE = {"T": "t", "S": "AAPL", "i": "52983525", "x": "Q", "p": "189.11", "s": 100, "t": T0}
TRADE["c"] = ["@"]
STATUS = {"T": "s", "S": "AAPL", "sc": "H", "sm": "Trading halt", "t": T0}
BREAK = {"T": "x", "S": "AAPL", "i": "52983525", "x": "Q", "p": "189.11", "s": 100, "t": T0}


def line(obj: Any) -> bytes:
    return orjson.dumps(obj)


def one(obj: Any, venue: str = "nasdaq") -> Any:
    [result] = parse_line(line(obj), venue, RECV)
    return result


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def without(base: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != key}


# ---------------------------------------------------------------- the examples


def test_quote_example() -> None:
    assert one(QUOTE) == Quote(
        symbol="AAPL",
        venue="nasdaq",
        bid_price=Decimal("189.10"),
        bid_size=300,
        ask_price=Decimal("189.12"),
        ask_size=200,
        event_ns=T0_NS,
        receive_ns=RECV,
    )


def test_trade_example() -> None:
    assert one(TRADE) == Trade(
        symbol="AAPL",
        venue="nasdaq",
        trade_id="52983525",
        price=Decimal("189.11"),
        size=100,
        conditions=("@",),
        event_ns=T0_NS,
        receive_ns=RECV,
        updates_last=True,
        updates_volume=True,
    )


def test_status_example() -> None:
    assert one(STATUS) == Status("AAPL", "nasdaq", "halted", "Trading halt", T0_NS, RECV)


@pytest.mark.parametrize(
    ("code", "state"),
    [("H", "halted"), ("P", "paused"), ("T", "trading"), ("Q", "quoting")],
)
def test_status_codes(code: str, state: str) -> None:
    assert one(with_(STATUS, sc=code)).state == state


def test_break_example() -> None:
    assert one(BREAK) == TradeBreak(
        "AAPL", "nasdaq", "52983525", Decimal("189.11"), 100, T0_NS, RECV
    )


def test_venue_is_the_feed_not_the_exchange_code() -> None:
    assert one(with_(QUOTE, bx="V", ax="N"), venue="feedA").venue == "feedA"
    assert one(without(without(QUOTE, "bx"), "ax")).venue == "nasdaq"


def test_prices_are_quantized_to_four_places() -> None:
    quote = one(with_(QUOTE, bp="189.1", ap="189.1200"))
    assert str(quote.bid_price) == "189.1000"
    assert str(quote.ask_price) == "189.1200"


def test_numeric_prices_are_exact() -> None:
    # 189.1 is not representable as a float; it must not become 189.0999999...
    assert one(with_(TRADE, p=189.1)).price == Decimal("189.1")
    assert one(with_(TRADE, p=189)).price == Decimal(189)
    assert one(with_(TRADE, p=0.0001)).price == Decimal("0.0001")
    assert one(with_(QUOTE, bp=0.1, ap=0.3)).ask_price == Decimal("0.3")


def test_quote_may_have_no_bid_or_offer() -> None:
    quote = one(with_(QUOTE, bp="0", bs=0, ap=0, **{"as": 0}))
    assert (quote.bid_price, quote.bid_size, quote.ask_price, quote.ask_size) == (0, 0, 0, 0)


def test_trade_id_stays_a_string() -> None:
    assert one(with_(TRADE, i="000123")).trade_id == "000123"
    assert one(with_(TRADE, i=123)).trade_id == "123"


def test_conditions_drive_eligibility() -> None:
    odd = one(with_(TRADE, c=["@", "I"]))
    assert (odd.conditions, odd.updates_last, odd.updates_volume) == (("@", "I"), False, True)
    close = one(with_(TRADE, c=["M"]))
    assert (close.updates_last, close.updates_volume) == (False, False)
    bare = one(without(TRADE, "c"))
    assert (bare.conditions, bare.updates_last, bare.updates_volume) == ((), True, True)


def test_status_message_is_optional_and_unknown_keys_ignored() -> None:
    assert one(without(STATUS, "sm")).reason == ""
    assert one(with_(QUOTE, z=1, extra={"a": [1]})).symbol == "AAPL"


def test_array_line_yields_one_result_per_element() -> None:
    results = parse_line(line([QUOTE, {"T": "Z"}, TRADE, 7, STATUS]), "nasdaq", RECV)
    assert [type(r).__name__ for r in results] == [
        "Quote",
        "Malformed",
        "Trade",
        "Malformed",
        "Status",
    ]
    bad_type, not_obj = results[1], results[3]
    assert isinstance(bad_type, Malformed) and isinstance(not_obj, Malformed)
    assert bad_type.reason == "json: unknown message type 'Z'"
    assert bad_type.raw == b'{"T":"Z"}'
    assert bad_type.detail == {"field": "T", "index": 1}
    assert not_obj.reason == "json: not an object"
    assert not_obj.detail == {"index": 3}
    assert parse_line(b"[]", "nasdaq", RECV) == []


def test_whitespace_and_crlf_tolerated() -> None:
    assert one(QUOTE) == parse_line(b" " + line(QUOTE) + b"\r\n", "nasdaq", RECV)[0]


# ---------------------------------------------------------------- malformed


def reason_of(obj: Any) -> str:
    result = one(obj)
    assert isinstance(result, Malformed), result
    assert result.venue == "nasdaq"
    return result.reason


@pytest.mark.parametrize("raw", [b"", b"{", b'{"T":"q"', b"nope", b'{"T":"q","bp":NaN}', b"\xff"])
def test_invalid_json(raw: bytes) -> None:
    [result] = parse_line(raw, "nasdaq", RECV)
    assert isinstance(result, Malformed)
    assert result.reason == "json: invalid JSON"
    assert result.raw == raw
    assert "error" in result.detail


@pytest.mark.parametrize("value", [5, "q", None, True])
def test_not_an_object(value: Any) -> None:
    assert reason_of(value) == "json: not an object"


REQUIRED = {
    "q": (QUOTE, ["T", "S", "bp", "bs", "ap", "as", "t"]),
    "t": (TRADE, ["T", "S", "i", "p", "s", "t"]),
    "x": (BREAK, ["T", "S", "i", "p", "s", "t"]),
    "s": (STATUS, ["T", "S", "sc", "t"]),
}


@pytest.mark.parametrize(
    ("base", "key"),
    [(base, key) for base, keys in REQUIRED.values() for key in keys],
    ids=[f"{kind}-{key}" for kind, (_, keys) in REQUIRED.items() for key in keys],
)
def test_missing_field(base: dict[str, Any], key: str) -> None:
    result = one(without(base, key))
    assert isinstance(result, Malformed)
    assert result.reason == f"json: missing field '{key}'"
    assert result.detail == {"field": key}


@pytest.mark.parametrize("kind", ["Z", "b", "trade", "Q", "", 1, None])
def test_unknown_message_type(kind: Any) -> None:
    assert reason_of(with_(QUOTE, T=kind)) == f"json: unknown message type '{kind}'"


@pytest.mark.parametrize("symbol", ["", "aapl", " AAPL", "AA PL", "A" * 17, 5, None, "ÄPPL"])
def test_invalid_symbol(symbol: Any) -> None:
    assert reason_of(with_(QUOTE, S=symbol)) == "json: invalid symbol"


@pytest.mark.parametrize(
    "price",
    [
        "abc",
        "1e2",
        " 1.5",
        "1.5 ",
        "1_000",
        "1.",
        ".5",
        "+1.5",
        "NaN",
        "Infinity",
        "-",
        "",
        None,
        True,
        [1],
        {"v": 1},
    ],
)
def test_invalid_price(price: Any) -> None:
    assert reason_of(with_(QUOTE, bp=price)) == "json: invalid price"


@pytest.mark.parametrize("price", ["-1", "-0.01", -1.5, -3, "-0", -0.0])
def test_negative_price(price: Any) -> None:
    assert reason_of(with_(TRADE, p=price)) == "json: negative price"
    assert reason_of(with_(QUOTE, ap=price)) == "json: negative price"


@pytest.mark.parametrize(
    "price", ["189.12345", "0.00001", 1e-05, 189.12345, "100000000", 1e20, "999999999999"]
)
def test_price_out_of_range(price: Any) -> None:
    result = one(with_(TRADE, p=price))
    assert isinstance(result, Malformed)
    assert result.reason == "json: price out of range"
    assert result.detail == {"field": "p"}


def test_trailing_zeros_beyond_four_places_are_fine() -> None:
    assert one(with_(TRADE, p="189.110000")).price == Decimal("189.11")


@pytest.mark.parametrize("base", [TRADE, BREAK])
def test_zero_trade_price_is_out_of_range(base: dict[str, Any]) -> None:
    assert reason_of(with_(base, p="0")) == "json: price out of range"


@pytest.mark.parametrize("size", [1.0, 100.5, "100", True, None, -1, 2**32, [100]])
def test_invalid_quote_size(size: Any) -> None:
    assert reason_of(with_(QUOTE, bs=size)) == "json: invalid size"


@pytest.mark.parametrize("base", [TRADE, BREAK])
def test_trade_size_must_be_positive(base: dict[str, Any]) -> None:
    assert reason_of(with_(base, s=0)) == "json: invalid size"
    assert one(with_(base, s=2**32 - 1)).size == 2**32 - 1


@pytest.mark.parametrize(
    "when", ["2026-11-24", "2026-11-24T14:30:00", "2026-02-30T14:30:00Z", 1795530600, None, ""]
)
def test_invalid_time(when: Any) -> None:
    assert reason_of(with_(QUOTE, t=when)) == "json: invalid time"


@pytest.mark.parametrize("trade_id", ["", True, 1.5, None, ["1"], "x" * 65])
def test_invalid_trade_id(trade_id: Any) -> None:
    assert reason_of(with_(TRADE, i=trade_id)) == "json: invalid trade id"


@pytest.mark.parametrize("conditions", ["@", [1], ["@", None], {"c": "@"}])
def test_invalid_conditions(conditions: Any) -> None:
    assert reason_of(with_(TRADE, c=conditions)) == "json: invalid conditions"


def test_unknown_sale_condition() -> None:
    assert reason_of(with_(TRADE, c=["@", "%"])) == "json: unknown sale condition '%'"


@pytest.mark.parametrize("code", ["X", "h", "", 1, None])
def test_unknown_status_code(code: Any) -> None:
    assert reason_of(with_(STATUS, sc=code)) == f"json: unknown status code '{code}'"


def test_invalid_status_message() -> None:
    assert reason_of(with_(STATUS, sm=5)) == "json: invalid status message"


# ---------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-11-24T14:30:00Z", 1_795_530_600_000_000_000),
        ("2026-11-24T14:30:00.1Z", 1_795_530_600_100_000_000),
        ("2026-11-24T14:30:00.12Z", 1_795_530_600_120_000_000),
        ("2026-11-24T14:30:00.123Z", 1_795_530_600_123_000_000),
        ("2026-11-24T14:30:00.1234Z", 1_795_530_600_123_400_000),
        ("2026-11-24T14:30:00.12345Z", 1_795_530_600_123_450_000),
        ("2026-11-24T14:30:00.123456Z", 1_795_530_600_123_456_000),
        ("2026-11-24T14:30:00.1234567Z", 1_795_530_600_123_456_700),
        ("2026-11-24T14:30:00.12345678Z", 1_795_530_600_123_456_780),
        ("2026-11-24T14:30:00.123456789Z", 1_795_530_600_123_456_789),
        ("2026-11-24T14:30:00.000000001Z", 1_795_530_600_000_000_001),
        ("2026-11-24T09:30:00-05:00", 1_795_530_600_000_000_000),
        ("2026-11-24T20:00:00+05:30", 1_795_530_600_000_000_000),
        ("2026-11-24T14:30:00+00:00", 1_795_530_600_000_000_000),
        ("2026-11-24T14:30:00-00:00", 1_795_530_600_000_000_000),
        ("2026-11-24t14:30:00z", 1_795_530_600_000_000_000),
        ("2026-11-25T00:30:00.5+10:00", 1_795_530_600_500_000_000),
        ("2028-02-29T00:00:00Z", 1_835_395_200_000_000_000),
        ("2000-02-29T00:00:00Z", 951_782_400_000_000_000),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("9999-12-31T23:59:59.999999999Z", 253_402_300_799_999_999_999),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T14:30:60Z",  # no leap seconds
        "2026-11-24T24:00:00Z",
        "2026-11-24T14:60:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-11-00T00:00:00Z",
        "2026-11-31T00:00:00Z",
        "2026-02-29T00:00:00Z",  # not a leap year
        "2100-02-29T00:00:00Z",  # centuries are not leap years...
        "2026-11-24T14:30:00.Z",  # a dot needs a digit
        "2026-11-24T14:30:00.1234567890Z",  # at most 9 digits
        "2026-11-24T14:30:00",  # a zone is mandatory
        "2026-11-24T14:30:00+05",
        "2026-11-24T14:30:00+0500",
        "2026-11-24T14:30:00+24:00",
        "2026-11-24T14:30:00+05:60",
        "2026-11-24T14:30:00ZZ",
        "2026-11-24 14:30:00Z",
        "2026/11/24T14:30:00Z",
        "2026-11-24T14:3:00Z",
        "2026-11-24T14:30:0_Z",
        "2026-11-24T14:30:00.1_2Z",
        "２026-11-24T14:30:00Z",  # full-width digit
        "2026-11-24T14:30:00.１Z",
        "+2026-11-24T14:30:00Z",
        "",
        "2026-11-24T14:30:00 Z",
    ],
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_format_time() -> None:
    assert format_time(T0_NS) == T0
    assert format_time(0) == "1970-01-01T00:00:00.000000000Z"
    assert format_time(-1) == "1969-12-31T23:59:59.999999999Z"
    with pytest.raises(ValueError):
        format_time(253_402_300_800 * 10**9)


@given(st.integers(min_value=-62_135_596_800 * 10**9, max_value=253_402_300_799_999_999_999))
def test_format_parse_round_trip(ns: int) -> None:
    text = format_time(ns)
    assert parse_time(text) == ns
    assert len(text) == 30


@given(
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)),
    st.integers(min_value=0, max_value=999),
    st.integers(min_value=0, max_value=9),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_parse_time_agrees_with_datetime(
    when: dt.datetime, nanos: int, digits: int, offset_min: int
) -> None:
    fraction_ns = when.microsecond * 1000 + nanos
    # Print the fraction with `digits` digits, truncating what does not fit.
    kept = fraction_ns // 10 ** (9 - digits) * 10 ** (9 - digits)
    fraction = f".{fraction_ns:09d}"[: digits + 1] if digits else ""
    sign = "-" if offset_min < 0 else "+"
    zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    text = when.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone
    tz = dt.timezone(dt.timedelta(minutes=offset_min))
    aware = when.replace(microsecond=0, tzinfo=tz)
    seconds = (aware - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(seconds=1)
    assert parse_time(text) == seconds * 10**9 + kept


# ---------------------------------------------------------------- encode / round trip

symbols = st.from_regex(r"[A-Z][A-Z0-9.]{0,7}", fullmatch=True)
venues = st.sampled_from(["nasdaq", "iex", "feedX"])
times = st.integers(min_value=0, max_value=253_402_300_799_999_999_999)
sizes = st.integers(min_value=0, max_value=2**32 - 1)
positive_sizes = st.integers(min_value=1, max_value=2**32 - 1)
quote_prices = st.integers(min_value=0, max_value=10**12 - 1).map(lambda n: Decimal(n).scaleb(-4))
trade_prices = st.integers(min_value=1, max_value=10**12 - 1).map(lambda n: Decimal(n).scaleb(-4))
trade_ids = st.one_of(
    st.integers(min_value=0, max_value=2**63).map(str),
    st.text("abc-_0123", min_size=1, max_size=20),
)
conditions = st.lists(st.sampled_from(sorted(KNOWN)), max_size=4).map(tuple)


@st.composite
def trades(draw: st.DrawFn) -> Trade:
    codes = draw(conditions)
    last, volume = eligibility(codes)
    return Trade(
        draw(symbols), draw(venues), draw(trade_ids), draw(trade_prices), draw(positive_sizes),
        codes, draw(times), draw(times), last, volume,
    )  # fmt: skip


events = st.one_of(
    st.builds(Quote, symbols, venues, quote_prices, sizes, quote_prices, sizes, times, times),
    trades(),
    st.builds(TradeBreak, symbols, venues, trade_ids, trade_prices, positive_sizes, times, times),
    st.builds(
        Status,
        symbols,
        venues,
        st.sampled_from(["halted", "paused", "trading", "quoting"]),
        st.text(max_size=40),
        times,
        times,
    ),
)


@settings(max_examples=300)
@given(events)
def test_encode_parse_round_trip(event: Any) -> None:
    raw = encode_event(event)
    assert b"\n" not in raw
    assert parse_line(raw, event.venue, event.receive_ns) == [event]
    assert line_event_time(raw) == event.event_ns
    assert line_symbol(raw) == event.symbol


@given(st.lists(events, min_size=1, max_size=5))
def test_array_round_trip(batch: list[Any]) -> None:
    raw = b"[" + b",".join(encode_event(e) for e in batch) + b"]"
    parsed = parse_line(raw, "v", 0)
    assert parsed == [replace(e, venue="v", receive_ns=0) for e in batch]
    assert line_event_time(raw) == batch[0].event_ns


def test_encoded_line_shape() -> None:
    quote = one(QUOTE)
    assert orjson.loads(encode_event(quote)) == {
        "T": "q",
        "S": "AAPL",
        "bx": "Q",
        "bp": "189.1000",
        "bs": 300,
        "ax": "Q",
        "ap": "189.1200",
        "as": 200,
        "t": T0,
    }
    trade = one(with_(TRADE, p="100"))
    assert orjson.loads(encode_event(trade))["p"] == "100.0000"  # never "1E+2"


@pytest.mark.parametrize(
    "event",
    [Security("AAPL", "iex", 100, False, 0, 0), SystemEvent("iex", "O", 0, 0)],
)
def test_encode_rejects_kinds_the_feed_lacks(event: Any) -> None:
    with pytest.raises(TypeError):
        encode_event(event)


# ---------------------------------------------------------------- recordings helpers


def test_iter_lines_skips_blank_lines() -> None:
    data = b"a\n\n  \r\nb\r\nc"
    assert list(iter_lines(data)) == [b"a", b"b", b"c"]
    assert list(iter_lines(b"")) == []


def test_line_event_time() -> None:
    assert line_event_time(line(QUOTE)) == T0_NS
    assert line_event_time(line([STATUS, with_(QUOTE, t="2026-11-24T14:31:00Z")])) == T0_NS
    spaced = orjson.dumps(QUOTE, option=orjson.OPT_INDENT_2).replace(b"\n", b"")
    assert line_event_time(spaced) == T0_NS  # '"t": "…"' takes the decoding path
    assert line_event_time(line(with_(QUOTE, t="garbage"))) is None
    assert line_event_time(line(without(QUOTE, "t"))) is None
    assert line_event_time(b'{"T":"q","t":"2026-11-2') is None
    assert line_event_time(b"[]") is None
    assert line_event_time(b"not json") is None


def test_line_symbol() -> None:
    assert line_symbol(line(QUOTE)) == "AAPL"
    assert line_symbol(line([QUOTE, TRADE])) == "AAPL"
    assert line_symbol(line([QUOTE, with_(TRADE, S="MSFT")])) is None
    assert line_symbol(line(without(QUOTE, "S"))) is None
    assert line_symbol(b"{") is None
