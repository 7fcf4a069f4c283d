"""Tests for schemas.iex_tops: IEX TOPS 1.6 over IEX-TP.

The byte vectors marked "spec" are the Example sections of IEX's public
specifications, byte for byte:

* TOPS Specification 1.66 (Oct 19, 2021; same examples as 1.64): System Event,
  Security Directory, Trading Status, Retail Liquidity Indicator, Operational
  Halt Status, Short Sale Price Test Status, Quote Update, Trade Report, Official
  Price, Trade Break and Auction Information examples.
* IEX Transport Specification (IEX-TP v1), "Example Messages": the multicast
  publication segment (a DEEP v1.0 segment, protocol id 0x8004) and the Gap
  Fill Test Response (a TOPS v1.5 heartbeat, protocol id 0x8002).
* DEEP Specification 1.08: the Security Event example (TOPS 1.6 documents no
  Security Event message; the parser recognises and skips it anyway).

The spec's comments give the 2016 timestamps in New York time (e.g. 15:30:32
for 19:30:32 UTC) but the 2017 ones as UTC wall clock (e.g. 17:00:00 is
17:00:00 UTC); the expected values below are the integers the bytes encode.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.iex_tops import (
    HEADER_SIZE,
    TOPS_PROTOCOL_ID,
    SegmentWriter,
    encode_event,
    encode_segment,
    iter_segments,
    parse_segment,
    segment_message_count,
    segment_send_time,
)
from schemas.marketdata import (
    Event,
    Malformed,
    OfficialPrice,
    Quote,
    Security,
    Status,
    SystemEvent,
    Trade,
    TradeBreak,
)
from schemas.sale_conditions import eligibility

VENUE = "IEX"
RECV = 1_700_000_000_123_456_789


def h(text: str) -> bytes:
    return bytes.fromhex(text)


ZIEXT = "5a 49 45 58 54 20 20 20"
TS_2016_QUOTE = "ac 63 c0 20 96 86 6d 14"  # 2016-08-23 19:30:32.572715948 UTC
NS_2016_QUOTE = 1_471_980_632_572_715_948
P_99_05 = "24 1d 0f 00 00 00 00 00"

# --------------------------------------------------------------------------- spec vectors

SPEC_SYSTEM_EVENT = h("53 45 00 a0 99 97 e9 3d b6 14")
SPEC_SECURITY_DIRECTORY = h(f"44 80 00 20 89 7b 5a 1f b6 14 {ZIEXT} 64 00 00 00 {P_99_05} 01")
SPEC_TRADING_STATUS = h(f"48 48 {TS_2016_QUOTE} {ZIEXT} 54 31 20 20")
SPEC_RETAIL_LIQUIDITY = h(f"49 41 {TS_2016_QUOTE} {ZIEXT}")
SPEC_OPERATIONAL_HALT = h(f"4f 4f {TS_2016_QUOTE} {ZIEXT}")
SPEC_SHORT_SALE_TEST = h(f"50 01 {TS_2016_QUOTE} {ZIEXT} 41")
SPEC_SECURITY_EVENT = h(f"45 4f 00 f0 30 2a 5b 25 b6 14 {ZIEXT}")  # from DEEP 1.08
SPEC_QUOTE_UPDATE = h(
    f"51 00 {TS_2016_QUOTE} {ZIEXT} e4 25 00 00 {P_99_05} ec 1d 0f 00 00 00 00 00 e8 03 00 00"
)
SPEC_TRADE_REPORT = h(
    f"54 00 c3 df f7 05 a2 86 6d 14 {ZIEXT} 64 00 00 00 {P_99_05} 96 8f 06 00 00 00 00 00"
)
SPEC_OFFICIAL_PRICE = h(f"58 51 00 f0 30 2a 5b 25 b6 14 {ZIEXT} {P_99_05}")
SPEC_TRADE_BREAK = h(
    f"42 00 b2 8f a5 a0 ab 86 6d 14 {ZIEXT} 64 00 00 00 {P_99_05} 96 8f 06 00 00 00 00 00"
)
SPEC_AUCTION_INFORMATION = h(
    f"41 43 dd c7 f0 9a 1a 3a b6 14 {ZIEXT} a0 86 01 00 {P_99_05} 18 1f 0f 00 00 00 00 00"
    " 10 27 00 00 42 00 80 e6 f4 58 0c 21 0f 00 00 00 00 00 c0 1c 0f 00 00 00 00 00"
    " a4 99 0d 00 00 00 00 00 dc 9f 10 00 00 00 00 00"
)

# IEX-TP spec, "Multicast Publication": header + a Trade Report + a DEEP Price Level Update.
SPEC_TP_HEADER_DEEP = h(
    "01 00 04 80 01 00 00 00 00 00 87 42 48 00 02 00"
    " 8c a6 21 00 00 00 00 00 ca c3 00 00 00 00 00 00 ec 45 c2 20 96 86 6d 14"
)
SPEC_TP_TRADE = h(f"54 00 {TS_2016_QUOTE} {ZIEXT} 64 00 00 00 {P_99_05} 96 8f 06 00 00 00 00 00")
SPEC_TP_PRICE_LEVEL_UPDATE = h(f"38 01 {TS_2016_QUOTE} {ZIEXT} e4 25 00 00 {P_99_05}")
SPEC_TP_SEGMENT_DEEP = (
    SPEC_TP_HEADER_DEEP + h("26 00") + SPEC_TP_TRADE + h("1e 00") + SPEC_TP_PRICE_LEVEL_UPDATE
)
# IEX-TP spec, "Gap Fill Test Response" (TOPS v1.5 protocol id 0x8002).
SPEC_TP_GAP_FILL_TEST_RESPONSE = h(
    "01 00 02 80 01 00 00 00 00 00 87 42 00 00 00 00"
    " 8c a6 21 00 00 00 00 00 ca c3 00 00 00 00 00 00 ec 45 c2 20 96 86 6d 14"
)
SPEC_SESSION_ID = 0x42870000
SPEC_SEND_TIME = 1_471_980_632_572_839_404
SPEC_STREAM_OFFSET = 2_205_324
SPEC_FIRST_SEQ = 50_122


def as_tops(segment: bytes) -> bytes:
    """The same segment with the message protocol id set to TOPS 1.6."""
    return segment[:2] + struct.pack("<H", TOPS_PROTOCOL_ID) + segment[4:]


def one(message: bytes) -> list[Event | Malformed]:
    """Parse a single message framed in a fresh segment."""
    segment = encode_segment([message], send_time_ns=0, first_seq=1, stream_offset=0)
    return parse_segment(segment, VENUE, RECV)


def single(message: bytes) -> Event | Malformed:
    items = one(message)
    assert len(items) == 1, items
    return items[0]


def malformed(message: bytes) -> Malformed:
    item = single(message)
    assert isinstance(item, Malformed), item
    assert item.raw == message
    assert item.venue == VENUE
    return item


# --------------------------------------------------------------------------- spec examples decode


def test_spec_system_event() -> None:
    assert single(SPEC_SYSTEM_EVENT) == SystemEvent(
        venue=VENUE, code="E", event_ns=1_492_448_400_000_000_000, receive_ns=RECV
    )


def test_spec_security_directory() -> None:
    assert single(SPEC_SECURITY_DIRECTORY) == Security(
        symbol="ZIEXT",
        venue=VENUE,
        round_lot=100,
        test=True,
        event_ns=1_492_414_800_000_000_000,
        receive_ns=RECV,
        adjusted_poc_price=Decimal("99.05"),
    )


def test_spec_trading_status() -> None:
    assert single(SPEC_TRADING_STATUS) == Status(
        symbol="ZIEXT",
        venue=VENUE,
        state="halted",
        reason="T1",
        event_ns=NS_2016_QUOTE,
        receive_ns=RECV,
    )


def test_spec_quote_update() -> None:
    quote = single(SPEC_QUOTE_UPDATE)
    assert quote == Quote(
        symbol="ZIEXT",
        venue=VENUE,
        bid_price=Decimal("99.05"),
        bid_size=9_700,
        ask_price=Decimal("99.07"),
        ask_size=1_000,
        event_ns=NS_2016_QUOTE,
        receive_ns=RECV,
    )
    assert isinstance(quote, Quote)
    assert str(quote.bid_price) == "99.0500"  # always 4 places
    assert str(quote.ask_price) == "99.0700"


def test_spec_trade_report() -> None:
    trade = single(SPEC_TRADE_REPORT)
    assert trade == Trade(
        symbol="ZIEXT",
        venue=VENUE,
        trade_id="429974",
        price=Decimal("99.05"),
        size=100,
        conditions=("@",),
        event_ns=1_471_980_683_662_974_915,
        receive_ns=RECV,
        updates_last=True,
        updates_volume=True,
    )
    assert isinstance(trade, Trade)
    assert str(trade.price) == "99.0500"


def test_spec_official_price() -> None:
    assert single(SPEC_OFFICIAL_PRICE) == OfficialPrice(
        symbol="ZIEXT",
        venue=VENUE,
        price_type="open",
        price=Decimal("99.05"),
        event_ns=1_492_421_400_000_000_000,
        receive_ns=RECV,
    )


def test_spec_trade_break() -> None:
    assert single(SPEC_TRADE_BREAK) == TradeBreak(
        symbol="ZIEXT",
        venue=VENUE,
        trade_id="429974",
        price=Decimal("99.05"),
        size=100,
        event_ns=1_471_980_724_912_754_610,
        receive_ns=RECV,
    )


@pytest.mark.parametrize(
    "message",
    [
        SPEC_RETAIL_LIQUIDITY,
        SPEC_OPERATIONAL_HALT,
        SPEC_SHORT_SALE_TEST,
        SPEC_SECURITY_EVENT,
        SPEC_AUCTION_INFORMATION,
    ],
    ids=["retail-liquidity", "operational-halt", "short-sale-test", "security-event", "auction"],
)
def test_spec_recognised_messages_are_skipped(message: bytes) -> None:
    assert one(message) == []


def test_spec_message_lengths() -> None:
    # "Total Message Data length is N bytes" for each message type.
    assert [len(m) for m in (SPEC_SYSTEM_EVENT, SPEC_SECURITY_DIRECTORY, SPEC_TRADING_STATUS)] == [
        10,
        31,
        22,
    ]
    assert len(SPEC_RETAIL_LIQUIDITY) == len(SPEC_OPERATIONAL_HALT) == 18
    assert len(SPEC_SECURITY_EVENT) == 18
    assert len(SPEC_SHORT_SALE_TEST) == 19
    assert len(SPEC_QUOTE_UPDATE) == 42
    assert len(SPEC_TRADE_REPORT) == len(SPEC_TRADE_BREAK) == 38
    assert len(SPEC_OFFICIAL_PRICE) == 26
    assert len(SPEC_AUCTION_INFORMATION) == 80
    assert len(SPEC_TP_HEADER_DEEP) == HEADER_SIZE == 40


def test_spec_auction_example_fields() -> None:
    # Cross-check the transcription of the auction example against its comments.
    fields = struct.unpack("<BBq8sIqqIBBIqqqq", SPEC_AUCTION_INFORMATION)
    assert fields[1] == ord("C") and fields[3] == b"ZIEXT   "
    assert fields[4:8] == (100_000, 990_500, 991_000, 10_000)
    assert fields[8:11] == (ord("B"), 0, 1_492_444_800)  # 2017-04-17 16:00:00 UTC
    assert fields[11:] == (991_500, 990_400, 891_300, 1_089_500)


# ------------------------------------------------------------------------- encode gives spec bytes


@pytest.mark.parametrize(
    "message",
    [
        SPEC_SYSTEM_EVENT,
        SPEC_TRADING_STATUS,
        SPEC_QUOTE_UPDATE,
        SPEC_TRADE_REPORT,
        SPEC_OFFICIAL_PRICE,
        SPEC_TRADE_BREAK,
        SPEC_TP_TRADE,
    ],
)
def test_encode_reproduces_spec_bytes(message: bytes) -> None:
    event = single(message)
    assert not isinstance(event, Malformed)
    assert encode_event(event) == message


def test_encode_security_directory_drops_luld_tier() -> None:
    # Security carries no LULD tier (nor the W/E flags), so it is sent as 0.
    event = single(SPEC_SECURITY_DIRECTORY)
    assert not isinstance(event, Malformed)
    assert encode_event(event) == SPEC_SECURITY_DIRECTORY[:-1] + b"\x00"


# --------------------------------------------------------------------------- IEX-TP examples


def test_spec_tp_header_fields() -> None:
    assert len(SPEC_TP_SEGMENT_DEEP) == 40 + 72
    assert segment_send_time(SPEC_TP_SEGMENT_DEEP) == SPEC_SEND_TIME
    assert segment_message_count(SPEC_TP_SEGMENT_DEEP) == 2
    assert segment_message_count(SPEC_TP_GAP_FILL_TEST_RESPONSE) == 0


def test_spec_tp_deep_segment_is_rejected_whole() -> None:
    [item] = parse_segment(SPEC_TP_SEGMENT_DEEP, VENUE, RECV)
    assert isinstance(item, Malformed)
    assert item.reason == "iex_tp: message protocol id 0x8004 is not TOPS 1.6 (0x8003)"
    assert item.raw == SPEC_TP_SEGMENT_DEEP
    assert item.detail["session_id"] == SPEC_SESSION_ID
    assert item.detail["first_seq"] == SPEC_FIRST_SEQ


def test_spec_tp_segment_as_tops_keeps_good_message() -> None:
    trade, bad = parse_segment(as_tops(SPEC_TP_SEGMENT_DEEP), VENUE, RECV)
    assert trade == Trade(
        symbol="ZIEXT",
        venue=VENUE,
        trade_id="429974",
        price=Decimal("99.05"),
        size=100,
        conditions=("@",),
        event_ns=NS_2016_QUOTE,
        receive_ns=RECV,
    )
    # The DEEP Price Level Update (type '8') is not a TOPS message.
    assert isinstance(bad, Malformed)
    assert bad.reason == "tops: unknown message type '8' (0x38)"
    assert bad.raw == SPEC_TP_PRICE_LEVEL_UPDATE
    assert bad.detail == {"session_id": SPEC_SESSION_ID, "seq": SPEC_FIRST_SEQ + 1, "index": 1}


def test_encode_segment_reproduces_spec_segment() -> None:
    segment = encode_segment(
        [SPEC_TP_TRADE, SPEC_TP_PRICE_LEVEL_UPDATE],
        send_time_ns=SPEC_SEND_TIME,
        first_seq=SPEC_FIRST_SEQ,
        stream_offset=SPEC_STREAM_OFFSET,
        session_id=SPEC_SESSION_ID,
        channel_id=1,
    )
    assert segment == as_tops(SPEC_TP_SEGMENT_DEEP)


def test_spec_gap_fill_test_response() -> None:
    [item] = parse_segment(SPEC_TP_GAP_FILL_TEST_RESPONSE, VENUE, RECV)
    assert isinstance(item, Malformed)
    assert "0x8002" in item.reason
    heartbeat = as_tops(SPEC_TP_GAP_FILL_TEST_RESPONSE)
    assert parse_segment(heartbeat, VENUE, RECV) == []
    assert (
        encode_segment(
            [],
            send_time_ns=SPEC_SEND_TIME,
            first_seq=SPEC_FIRST_SEQ,
            stream_offset=SPEC_STREAM_OFFSET,
            session_id=SPEC_SESSION_ID,
        )
        == heartbeat
    )


# ------------------------------------------------------------------------- segment-level Malformed


def _segment(messages: list[bytes]) -> bytes:
    return encode_segment(
        messages, send_time_ns=5, first_seq=7, stream_offset=11, session_id=3, channel_id=1
    )


def _whole(segment: bytes) -> Malformed:
    items = parse_segment(segment, VENUE, RECV)
    assert len(items) == 1
    [item] = items
    assert isinstance(item, Malformed)
    assert item.raw == bytes(segment)
    assert item.venue == VENUE
    assert item.reason.startswith("iex_tp: ")
    return item


def test_segment_too_short() -> None:
    good = _segment([SPEC_QUOTE_UPDATE])
    assert _whole(good[:39]).reason == (
        "iex_tp: segment of 39 bytes is shorter than the 40-byte header"
    )
    assert _whole(b"").reason == "iex_tp: segment of 0 bytes is shorter than the 40-byte header"


def test_segment_wrong_version() -> None:
    good = _segment([SPEC_QUOTE_UPDATE])
    assert _whole(b"\x02" + good[1:]).reason == "iex_tp: unsupported version 2"


def test_segment_wrong_protocol() -> None:
    good = _segment([SPEC_QUOTE_UPDATE])
    bad = good[:2] + struct.pack("<H", 0x8004) + good[4:]
    assert _whole(bad).reason == "iex_tp: message protocol id 0x8004 is not TOPS 1.6 (0x8003)"


def test_segment_payload_length_mismatch() -> None:
    good = _segment([SPEC_TRADE_REPORT, SPEC_TRADE_BREAK, SPEC_SYSTEM_EVENT, SPEC_OFFICIAL_PRICE])
    payload = len(good) - HEADER_SIZE
    assert payload == 120
    truncated = good[:-22]
    item = _whole(truncated)
    assert item.reason == "iex_tp: payload length 120 does not match 98 bytes"
    assert item.detail["first_seq"] == 7 and item.detail["session_id"] == 3
    assert _whole(good + b"\x00").reason == "iex_tp: payload length 120 does not match 121 bytes"


def test_segment_message_count_mismatch() -> None:
    good = _segment([SPEC_QUOTE_UPDATE, SPEC_TRADE_REPORT])
    bad = good[:14] + struct.pack("<H", 3) + good[16:]
    assert _whole(bad).reason == "iex_tp: message count 3 does not match 2 message blocks"
    bad = good[:14] + struct.pack("<H", 1) + good[16:]
    assert _whole(bad).reason == "iex_tp: message count 1 does not match 2 message blocks"


def test_segment_block_overruns_payload() -> None:
    good = _segment([SPEC_QUOTE_UPDATE, SPEC_TRADE_REPORT])
    second = HEADER_SIZE + 2 + len(SPEC_QUOTE_UPDATE)
    bad = good[:second] + struct.pack("<H", 40) + good[second + 2 :]
    assert _whole(bad).reason == (
        "iex_tp: message block 2 of 40 bytes overruns the payload by 2 bytes"
    )


def test_segment_truncated_length_field() -> None:
    good = _segment([SPEC_SYSTEM_EVENT])
    bad = good + b"\x01"
    bad = bad[:12] + struct.pack("<H", len(bad) - HEADER_SIZE) + bad[14:]
    assert _whole(bad).reason == "iex_tp: message block 2 has a truncated length field"


def test_heartbeat_segment_is_empty() -> None:
    assert parse_segment(_segment([]), VENUE, RECV) == []


def test_parse_accepts_bytearray_and_memoryview() -> None:
    good = _segment([SPEC_QUOTE_UPDATE, b"\x5a"])
    expected = parse_segment(good, VENUE, RECV)
    assert parse_segment(bytearray(good), VENUE, RECV) == expected
    assert parse_segment(memoryview(good), VENUE, RECV) == expected
    assert isinstance(expected[1], Malformed) and type(expected[1].raw) is bytes


# ------------------------------------------------------------------------- message-level Malformed


def _patch(message: bytes, offset: int, value: bytes) -> bytes:
    return message[:offset] + value + message[offset + len(value) :]


def test_unknown_message_type() -> None:
    assert malformed(b"Z" + SPEC_QUOTE_UPDATE[1:]).reason == "tops: unknown message type 'Z' (0x5a)"
    assert malformed(b"\x00\x01").reason == "tops: unknown message type 0x00"


def test_empty_message() -> None:
    assert malformed(b"").reason == "tops: empty message"


@pytest.mark.parametrize(
    ("message", "name"),
    [
        (SPEC_SYSTEM_EVENT, "System Event (S) message is {n} bytes, expected 10"),
        (SPEC_SECURITY_DIRECTORY, "Security Directory (D) message is {n} bytes, expected 31"),
        (SPEC_TRADING_STATUS, "Trading Status (H) message is {n} bytes, expected 22"),
        (SPEC_QUOTE_UPDATE, "Quote Update (Q) message is {n} bytes, expected 42"),
        (SPEC_TRADE_REPORT, "Trade Report (T) message is {n} bytes, expected 38"),
        (SPEC_OFFICIAL_PRICE, "Official Price (X) message is {n} bytes, expected 26"),
        (SPEC_TRADE_BREAK, "Trade Break (B) message is {n} bytes, expected 38"),
        (SPEC_OPERATIONAL_HALT, "Operational Halt Status (O) message is {n} bytes, expected 18"),
        (
            SPEC_SHORT_SALE_TEST,
            "Short Sale Price Test Status (P) message is {n} bytes, expected 19",
        ),
        (SPEC_SECURITY_EVENT, "Security Event (E) message is {n} bytes, expected 18"),
        (SPEC_AUCTION_INFORMATION, "Auction Information (A) message is {n} bytes, expected 80"),
        (SPEC_RETAIL_LIQUIDITY, "Retail Liquidity Indicator (I) message is {n} bytes, expected 18"),
    ],
)
def test_wrong_length_for_type(message: bytes, name: str) -> None:
    short, long = message[:-1], message + b"\x00"
    assert malformed(short).reason == "tops: " + name.format(n=len(short))
    assert malformed(long).reason == "tops: " + name.format(n=len(long))
    assert malformed(message[:1]).reason == "tops: " + name.format(n=1)


@pytest.mark.parametrize(
    "symbol",
    [
        b"        ",  # blank
        b" ZIEXT  ",  # not left justified
        b"ZI EXT  ",  # embedded space
        b"ZIEXT\x00\x00\x00",  # NUL padded
        b"ZI\x07EXT  ",  # control character
        b"ZI\xc9XT   ",  # not ASCII
        b"ZIEXT\x7f  ",  # DEL
    ],
)
@pytest.mark.parametrize(
    "message",
    [
        SPEC_SECURITY_DIRECTORY,
        SPEC_TRADING_STATUS,
        SPEC_QUOTE_UPDATE,
        SPEC_TRADE_REPORT,
        SPEC_OFFICIAL_PRICE,
        SPEC_TRADE_BREAK,
    ],
)
def test_bad_symbol_bytes(message: bytes, symbol: bytes) -> None:
    reason = malformed(_patch(message, 10, symbol)).reason
    if symbol.strip(b" "):
        assert reason == f"tops: bad symbol bytes {symbol!r}"
    else:
        assert reason == "tops: blank symbol"


def test_symbols_with_nasdaq_punctuation_are_fine() -> None:
    for raw, text in [(b"BRK.B   ", "BRK.B"), (b"AAC+    ", "AAC+"), (b"ABCDEFGH", "ABCDEFGH")]:
        event = single(_patch(SPEC_QUOTE_UPDATE, 10, raw))
        assert isinstance(event, Quote) and event.symbol == text


def test_negative_quote_prices() -> None:
    minus_one = struct.pack("<q", -1)
    assert (
        malformed(_patch(SPEC_QUOTE_UPDATE, 22, minus_one)).reason == "tops: negative bid price -1"
    )
    assert (
        malformed(_patch(SPEC_QUOTE_UPDATE, 30, minus_one)).reason == "tops: negative ask price -1"
    )


def test_zero_quote_is_kept() -> None:
    # "Prior to the start of trading, IEX publishes a zero quote."
    zero = _patch(SPEC_QUOTE_UPDATE, 18, bytes(24))
    quote = single(zero)
    assert isinstance(quote, Quote)
    assert (quote.bid_price, quote.bid_size, quote.ask_price, quote.ask_size) == (0, 0, 0, 0)
    assert quote.bid_price == Decimal(0) and str(quote.bid_price) == "0.0000"
    assert encode_event(quote) == zero


@pytest.mark.parametrize("message", [SPEC_TRADE_REPORT, SPEC_TRADE_BREAK])
def test_bad_trade_fields(message: bytes) -> None:
    assert malformed(_patch(message, 18, bytes(4))).reason == "tops: zero trade size"
    price = struct.pack("<q", -990500)
    assert malformed(_patch(message, 22, price)).reason == "tops: negative trade price -990500"
    assert malformed(_patch(message, 22, bytes(8))).reason == "tops: zero trade price"
    trade_id = struct.pack("<q", -5)
    assert malformed(_patch(message, 30, trade_id)).reason == "tops: negative trade id -5"


def test_unknown_trading_status() -> None:
    item = malformed(_patch(SPEC_TRADING_STATUS, 1, b"X"))
    assert item.reason == "tops: unknown trading status 'X' (0x58)"


@pytest.mark.parametrize(
    ("status", "state"), [(b"H", "halted"), (b"P", "paused"), (b"O", "quoting"), (b"T", "trading")]
)
def test_trading_states(status: bytes, state: str) -> None:
    reason = b"    " if status in (b"P", b"T") else b"IPO1"
    event = single(_patch(_patch(SPEC_TRADING_STATUS, 1, status), 18, reason))
    assert isinstance(event, Status)
    assert event.state == state
    assert event.reason == reason.decode().strip()


def test_trading_status_reasons() -> None:
    for raw, text in [(b"NA  ", "NA"), (b"MCB3", "MCB3"), (b"    ", ""), (b"NA\x00\x00", "NA")]:
        event = single(_patch(SPEC_TRADING_STATUS, 18, raw))
        assert isinstance(event, Status) and event.reason == text
    item = malformed(_patch(SPEC_TRADING_STATUS, 18, b"T\x011 "))
    assert item.reason == "tops: bad reason bytes b'T\\x011 '"
    assert malformed(_patch(SPEC_TRADING_STATUS, 18, b"\xff   ")).reason.startswith(
        "tops: bad reason bytes"
    )


def test_unknown_system_event() -> None:
    assert malformed(_patch(SPEC_SYSTEM_EVENT, 1, b"Z")).reason == (
        "tops: unknown system event 'Z' (0x5a)"
    )
    for code in "OSRMEC":
        event = single(_patch(SPEC_SYSTEM_EVENT, 1, code.encode()))
        assert isinstance(event, SystemEvent) and event.code == code and event.symbol == ""


def test_official_price_types() -> None:
    close = single(_patch(SPEC_OFFICIAL_PRICE, 1, b"M"))
    assert isinstance(close, OfficialPrice) and close.price_type == "close"
    item = malformed(_patch(SPEC_OFFICIAL_PRICE, 1, b"O"))
    assert item.reason == "tops: unknown official price type 'O' (0x4f)"
    item = malformed(_patch(SPEC_OFFICIAL_PRICE, 18, struct.pack("<q", -1)))
    assert item.reason == "tops: negative official price -1"


def test_security_directory_fields() -> None:
    assert malformed(_patch(SPEC_SECURITY_DIRECTORY, 18, bytes(4))).reason == (
        "tops: round lot size 0"
    )
    item = malformed(_patch(SPEC_SECURITY_DIRECTORY, 22, struct.pack("<q", -3)))
    assert item.reason == "tops: negative adjusted POC price -3"
    # Only the test flag (0x80) is carried; when issued (0x40) and ETP (0x20) are not.
    for flags, test in [(0x00, False), (0x80, True), (0x60, False), (0xE0, True)]:
        event = single(_patch(SPEC_SECURITY_DIRECTORY, 1, bytes([flags])))
        assert isinstance(event, Security) and event.test is test


# --------------------------------------------------------------------------- sale conditions


@pytest.mark.parametrize(
    ("flags", "conditions", "updates_last"),
    [
        (0x00, ("@",), True),
        (0x80, ("F",), True),
        (0x40, ("T",), False),
        (0x20, ("I",), False),
        (0x10, ("8",), True),
        (0x08, ("X",), True),
        (0x90, ("F", "8"), True),
        (0x60, ("T", "I"), False),
        (0xF8, ("F", "T", "I", "8", "X"), False),
        (0x07, ("@",), True),  # bits 0-2 are undefined in TOPS 1.6 and ignored
        (0x87, ("F",), True),
    ],
)
def test_sale_condition_flags(flags: int, conditions: tuple[str, ...], updates_last: bool) -> None:
    trade = single(_patch(SPEC_TRADE_REPORT, 1, bytes([flags])))
    assert isinstance(trade, Trade)
    assert trade.conditions == conditions
    assert (trade.updates_last, trade.updates_volume) == (updates_last, True)
    assert (trade.updates_last, trade.updates_volume) == eligibility(conditions)
    assert encode_event(trade)[1] == flags & 0xF8


def test_trade_break_ignores_flags() -> None:
    event = single(_patch(SPEC_TRADE_BREAK, 1, b"\xf8"))
    assert isinstance(event, TradeBreak)
    assert encode_event(event) == SPEC_TRADE_BREAK


def test_encode_condition_letters() -> None:
    trade = single(SPEC_TRADE_REPORT)
    assert isinstance(trade, Trade)
    assert encode_event(replace(trade, conditions=()))[1] == 0
    assert encode_event(replace(trade, conditions=("X", "F", "@")))[1] == 0x88
    with pytest.raises(ValueError, match="sale condition 'Z'"):
        encode_event(replace(trade, conditions=("Z",)))


# --------------------------------------------------------------------- a bad message in the middle


def test_bad_message_in_the_middle_keeps_the_others() -> None:
    bad = _patch(SPEC_TRADE_REPORT, 18, bytes(4))  # zero size
    segment = _segment(
        [SPEC_SYSTEM_EVENT, SPEC_QUOTE_UPDATE, bad, SPEC_OPERATIONAL_HALT, SPEC_TRADE_BREAK]
    )
    items = parse_segment(segment, VENUE, RECV)
    assert [type(item) for item in items] == [SystemEvent, Quote, Malformed, TradeBreak]
    assert items[0] == single(SPEC_SYSTEM_EVENT)
    assert items[1] == single(SPEC_QUOTE_UPDATE)
    assert items[3] == single(SPEC_TRADE_BREAK)
    broken = items[2]
    assert isinstance(broken, Malformed)
    assert broken.reason == "tops: zero trade size"
    assert broken.raw == bad
    assert broken.detail == {"session_id": 3, "seq": 9, "index": 2}


def test_every_message_bad_still_one_item_each() -> None:
    segment = _segment([b"", b"Z", SPEC_QUOTE_UPDATE[:-1]])
    items = parse_segment(segment, VENUE, RECV)
    assert [item.reason for item in items if isinstance(item, Malformed)] == [
        "tops: empty message",
        "tops: unknown message type 'Z' (0x5a)",
        "tops: Quote Update (Q) message is 41 bytes, expected 42",
    ]


# --------------------------------------------------------------------------- encode errors

SPEC_TRADE_EVENT = Trade(
    symbol="ZIEXT",
    venue=VENUE,
    trade_id="429974",
    price=Decimal("99.05"),
    size=100,
    conditions=("@",),
    event_ns=NS_2016_QUOTE,
    receive_ns=RECV,
)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"trade_id": "abc"}, "not a non-negative integer"),
        ({"trade_id": "T-1"}, "not a non-negative integer"),
        ({"trade_id": "-1"}, "not a non-negative integer"),
        ({"trade_id": ""}, "not a non-negative integer"),
        ({"trade_id": "12.0"}, "not a non-negative integer"),
        ({"trade_id": "007"}, "canonical"),
        ({"trade_id": "٣"}, "not a non-negative integer"),  # a non-ASCII digit
        ({"trade_id": str(1 << 63)}, "8-byte Long"),
        ({"price": Decimal("99.00001")}, "more than 4 decimal places"),
        ({"price": Decimal("-1")}, "negative"),
        ({"price": Decimal("0")}, "positive"),
        ({"price": Decimal("NaN")}, "not finite"),
        ({"price": Decimal("Infinity")}, "not finite"),
        ({"price": Decimal("1E+40")}, "8-byte price"),
        ({"price": 99.05}, "must be a Decimal"),
        ({"size": 0}, "size 0 is outside"),
        ({"size": 1 << 32}, "outside"),
        ({"symbol": "TOOLONGSYM"}, "1 to 8 characters"),
        ({"symbol": ""}, "1 to 8 characters"),
        ({"symbol": "ZI EXT"}, "printable ASCII"),
        ({"symbol": "ZIÉXT"}, "printable ASCII"),
        ({"conditions": ("F", "Q")}, "sale condition 'Q'"),
        ({"event_ns": 1 << 63}, "event_ns"),
    ],
)
def test_encode_trade_errors(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_event(replace(SPEC_TRADE_EVENT, **changes))


def test_encode_other_errors() -> None:
    status = Status("ZIEXT", VENUE, "halted", "T1", 0, 0)
    with pytest.raises(ValueError, match="longer than 4"):
        encode_event(replace(status, reason="LONGER"))
    with pytest.raises(ValueError, match="printable ASCII"):
        encode_event(replace(status, reason="T\n"))
    with pytest.raises(ValueError, match="no TOPS trading status"):
        encode_event(replace(status, state="closed"))  # type: ignore[arg-type]
    system = SystemEvent(VENUE, "O", 0, 0)
    with pytest.raises(ValueError, match="not one of"):
        encode_event(replace(system, code="X"))
    with pytest.raises(ValueError, match="carries no symbol"):
        encode_event(replace(system, symbol="ZIEXT"))
    security = Security("ZIEXT", VENUE, 100, False, 0, 0, Decimal("1.5"))
    with pytest.raises(ValueError, match="round_lot 0"):
        encode_event(replace(security, round_lot=0))
    with pytest.raises(ValueError, match="negative"):
        encode_event(replace(security, adjusted_poc_price=Decimal("-0.0001")))
    official = OfficialPrice("ZIEXT", VENUE, "close", Decimal("1"), 0, 0)
    with pytest.raises(ValueError, match="'open' or 'close'"):
        encode_event(replace(official, price_type="mid"))  # type: ignore[arg-type]
    quote = Quote("ZIEXT", VENUE, Decimal(0), 0, Decimal(0), 0, 0, 0)
    with pytest.raises(ValueError, match="bid_size"):
        encode_event(replace(quote, bid_size=-1))
    with pytest.raises(ValueError, match="ask_price"):
        encode_event(replace(quote, ask_price=Decimal("0.00005")))
    with pytest.raises(ValueError, match="cannot encode Malformed"):
        encode_event(Malformed("x", b""))  # type: ignore[arg-type]
    breaks = TradeBreak("ZIEXT", VENUE, "x1", Decimal(1), 1, 0, 0)
    with pytest.raises(ValueError, match="trade_id"):
        encode_event(breaks)


def test_encode_price_forms() -> None:
    # Trailing zeros beyond 4 places are fine; an int is an exact price too.
    for price in (Decimal("99.050000"), Decimal("99.05"), Decimal("9.905E+1")):
        assert encode_event(replace(SPEC_TRADE_EVENT, price=price)) == SPEC_TP_TRADE
    assert encode_event(replace(SPEC_TRADE_EVENT, price=99))[22:30] == struct.pack("<q", 990000)


def test_encode_segment_limits() -> None:
    with pytest.raises(ValueError, match="longer than 65535"):
        encode_segment([bytes(65536)], send_time_ns=0, first_seq=1, stream_offset=0)
    with pytest.raises(ValueError, match="exceeds 65535"):
        encode_segment([bytes(40000)] * 2, send_time_ns=0, first_seq=1, stream_offset=0)
    with pytest.raises(ValueError, match="session id"):
        encode_segment([], send_time_ns=0, first_seq=1, stream_offset=0, session_id=-1)
    with pytest.raises(ValueError, match="send time"):
        encode_segment([], send_time_ns=1 << 63, first_seq=1, stream_offset=0)


# --------------------------------------------------------------------------- recordings


def test_iter_segments_splits_recording() -> None:
    segments = [
        _segment([SPEC_QUOTE_UPDATE]),
        _segment([]),
        _segment([SPEC_TRADE_REPORT, SPEC_SYSTEM_EVENT]),
        as_tops(SPEC_TP_SEGMENT_DEEP),
    ]
    data = b"".join(segments)
    assert list(iter_segments(data)) == segments
    assert list(iter_segments(bytearray(data))) == segments
    assert list(iter_segments(b"")) == []


def test_iter_segments_over_mmap_can_stop_early(tmp_path: Path) -> None:
    segments = [_segment([SPEC_QUOTE_UPDATE]), _segment([SPEC_TRADE_REPORT]), _segment([])]
    path = tmp_path / "tops.bin"
    path.write_bytes(b"".join(segments))
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        it = iter_segments(data)  # type: ignore[arg-type]
        first = next(it)
        assert type(first) is bytes and first == segments[0]
        # closing the mmap (end of the with) must not fail while `it` is suspended
    assert list(iter_segments(memoryview(path.read_bytes()))) == segments


def test_iter_segments_truncated_tail() -> None:
    data = _segment([SPEC_QUOTE_UPDATE]) + _segment([SPEC_TRADE_REPORT])
    first = HEADER_SIZE + 2 + len(SPEC_QUOTE_UPDATE)
    it = iter_segments(data[:-1])
    assert next(it) == data[:first]
    with pytest.raises(ValueError, match="truncated segment at offset 84"):
        next(it)
    with pytest.raises(ValueError, match="truncated segment header at offset 84"):
        list(iter_segments(data[: first + 10]))


def test_segment_accessors_need_a_header() -> None:
    with pytest.raises(ValueError, match="shorter than the 40-byte header"):
        segment_send_time(b"\x01" * 39)
    with pytest.raises(ValueError, match="shorter than the 40-byte header"):
        segment_message_count(b"")


# --------------------------------------------------------------------------- SegmentWriter


def test_segment_writer_advances_offset_and_sequence() -> None:
    writer = SegmentWriter(session_id=SPEC_SESSION_ID, stream_offset=100, next_seq=10)
    quote = single(SPEC_QUOTE_UPDATE)
    trade = single(SPEC_TRADE_REPORT)
    assert isinstance(quote, Quote) and isinstance(trade, Trade)

    first = writer.write([quote, trade], send_time_ns=1_000)
    header = struct.unpack_from("<BBHIIHHqqq", first)
    assert header == (1, 0, 0x8003, 1, SPEC_SESSION_ID, 84, 2, 100, 10, 1_000)
    assert (writer.stream_offset, writer.next_seq) == (184, 12)
    assert parse_segment(first, VENUE, RECV) == [quote, trade]

    beat = writer.heartbeat(2_000)
    assert struct.unpack_from("<BBHIIHHqqq", beat) == (
        1, 0, 0x8003, 1, SPEC_SESSION_ID, 0, 0, 184, 12, 2_000,
    )  # fmt: skip
    assert (writer.stream_offset, writer.next_seq) == (184, 12)

    third = writer.write_messages([SPEC_SYSTEM_EVENT], 3_000)
    assert struct.unpack_from("<qq", third, 16) == (184, 12)
    assert (writer.stream_offset, writer.next_seq) == (196, 13)
    assert segment_send_time(third) == 3_000 and segment_message_count(third) == 1


def test_segment_writer_state_unchanged_on_error() -> None:
    writer = SegmentWriter()
    quote = single(SPEC_QUOTE_UPDATE)
    assert isinstance(quote, Quote)
    with pytest.raises(ValueError):
        writer.write([quote, replace(SPEC_TRADE_EVENT, trade_id="nope")], 1)
    assert (writer.session_id, writer.stream_offset, writer.next_seq) == (1, 0, 1)
    segment = writer.write([quote], 1)
    assert struct.unpack_from("<qq", segment, 16) == (0, 1)


# --------------------------------------------------------------------------- property tests

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
UINT32 = st.integers(0, (1 << 32) - 1)
SYMBOLS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8)


def prices(minimum: int = 0) -> st.SearchStrategy[Decimal]:
    return st.integers(minimum, (1 << 63) - 1).map(lambda v: Decimal(v).scaleb(-4))


def _trade(
    symbol: str, ts: int, size: int, price: Decimal, trade_id: int, letters: list[str]
) -> Trade:
    conditions = tuple(c for c in "FTI8X" if c in letters) or ("@",)
    updates_last, updates_volume = eligibility(conditions)
    return Trade(
        symbol, VENUE, str(trade_id), price, size, conditions, ts, RECV,
        updates_last, updates_volume,
    )  # fmt: skip


REASONS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=4).filter(
    lambda s: s == s.rstrip(" ")
)

EVENTS: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        lambda code, ts: SystemEvent(VENUE, code, ts, RECV), st.sampled_from("OSRMEC"), INT64
    ),
    st.builds(
        lambda sym, lot, test, ts, poc: Security(sym, VENUE, lot, test, ts, RECV, poc),
        SYMBOLS,
        st.integers(1, (1 << 32) - 1),
        st.booleans(),
        INT64,
        prices(),
    ),
    st.builds(
        lambda sym, state, reason, ts: Status(sym, VENUE, state, reason, ts, RECV),
        SYMBOLS,
        st.sampled_from(["halted", "paused", "quoting", "trading"]),
        REASONS,
        INT64,
    ),
    st.builds(
        lambda sym, bp, bs, ap, asz, ts: Quote(sym, VENUE, bp, bs, ap, asz, ts, RECV),
        SYMBOLS,
        prices(),
        UINT32,
        prices(),
        UINT32,
        INT64,
    ),
    st.builds(
        _trade,
        SYMBOLS,
        INT64,
        st.integers(1, (1 << 32) - 1),
        prices(1),
        st.integers(0, (1 << 63) - 1),
        st.lists(st.sampled_from("FTI8X"), unique=True),
    ),
    st.builds(
        lambda sym, tid, price, size, ts: TradeBreak(sym, VENUE, str(tid), price, size, ts, RECV),
        SYMBOLS,
        st.integers(0, (1 << 63) - 1),
        prices(1),
        st.integers(1, (1 << 32) - 1),
        INT64,
    ),
    st.builds(
        lambda sym, kind, price, ts: OfficialPrice(sym, VENUE, kind, price, ts, RECV),
        SYMBOLS,
        st.sampled_from(["open", "close"]),
        prices(),
        INT64,
    ),
)


@settings(max_examples=500)
@given(EVENTS)
def test_property_encode_then_parse_is_identity(event: Event) -> None:
    body = encode_event(event)
    assert single(body) == event
    assert encode_event(single(body)) == body  # type: ignore[arg-type]


@settings(max_examples=150)
@given(
    st.lists(st.lists(EVENTS, max_size=25), max_size=8),
    st.integers(0, (1 << 32) - 1),
    st.integers(0, 1 << 40),
    st.integers(1, 1 << 40),
    st.integers(-(1 << 63), (1 << 63) - 9),
)
def test_property_segment_round_trip(
    batches: list[list[Event]], session: int, offset: int, seq: int, send_time: int
) -> None:
    writer = SegmentWriter(session, stream_offset=offset, next_seq=seq)
    recording = b"".join(writer.write(batch, send_time + i) for i, batch in enumerate(batches))
    segments = list(iter_segments(recording))
    assert len(segments) == len(batches)
    expected_offset, expected_seq = offset, seq
    for i, (segment, batch) in enumerate(zip(segments, batches, strict=True)):
        assert parse_segment(segment, VENUE, RECV) == batch
        assert segment_send_time(segment) == send_time + i
        assert segment_message_count(segment) == len(batch)
        fields = struct.unpack_from("<BBHIIHHqqq", segment)
        assert fields[4] == session
        assert fields[7:9] == (expected_offset, expected_seq)
        expected_offset += len(segment) - HEADER_SIZE
        expected_seq += len(batch)
    assert (writer.stream_offset, writer.next_seq) == (expected_offset, expected_seq)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_property_arbitrary_bytes_never_raise(data: bytes) -> None:
    for item in parse_segment(data, VENUE, RECV):
        assert isinstance(item, Malformed)


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=90), max_size=10))
def test_property_arbitrary_messages_one_item_or_skip_each(messages: list[bytes]) -> None:
    segment = _segment(messages)
    items = parse_segment(segment, VENUE, RECV)
    skipped = sum(
        1
        for m in messages
        if m[:1] in (b"O", b"P", b"E", b"A", b"I")
        and len(m) == {b"O": 18, b"P": 19, b"E": 18, b"A": 80, b"I": 18}[m[:1]]
    )
    assert len(items) == len(messages) - skipped
    for item in items:
        if isinstance(item, Malformed):
            assert item.raw in messages
            assert item.reason.startswith("tops: ")
        else:
            # Whatever decoded re-encodes to a message that decodes to the same event
            # (bytes may differ only in what the event does not carry: flags, LULD tier).
            assert single(encode_event(item)) == item
