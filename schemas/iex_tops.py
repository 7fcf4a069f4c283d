"""IEX TOPS 1.6 messages inside IEX-TP (IEX Transport Protocol) segments.

A byte-exact parser and encoder, pure (no I/O), following IEX's public
specifications: the TOPS Specification 1.6x (message protocol id 0x8003) and the
IEX Transport Specification (IEX-TP v1).

Wire format, all integers little endian:

* IEX-TP segment = 40-byte header, then ``message count`` message blocks, each a
  2-byte message length followed by that many bytes of message data.
  Header: version (1, =1), reserved (1), message protocol id (2, =0x8003 for
  TOPS 1.6), channel id (4), session id (4), payload length (2, bytes after the
  header), message count (2), stream offset (8, byte offset of this payload in
  the session's stream), first message sequence number (8), send time (8, ns).
* TOPS message data starts with a 1-byte message type. Price = 8-byte signed
  fixed point with 4 implied decimals; Timestamp = 8-byte signed ns since the
  epoch (UTC); String = ASCII, left justified, space filled (symbols 8 bytes).

Parsing turns each message into one normalized event of ``schemas.marketdata``
(or nothing, for the message types we recognise but do not use), and anything
that does not decode into a ``Malformed`` carrying the offending bytes, so a
bad message never takes the rest of its segment down with it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Context, Decimal, InvalidOperation
from typing import Final, Literal, NoReturn

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
    TradingState,
)
from schemas.sale_conditions import eligibility

__all__ = [
    "HEADER_SIZE",
    "IEX_TP_VERSION",
    "MAX_PAYLOAD",
    "TOPS_CHANNEL_ID",
    "TOPS_PROTOCOL_ID",
    "SegmentWriter",
    "encode_event",
    "encode_segment",
    "iter_segments",
    "parse_segment",
    "segment_message_count",
    "segment_send_time",
]

IEX_TP_VERSION: Final = 1
TOPS_PROTOCOL_ID: Final = 0x8003  # TOPS 1.6 ("Protocol Identification on IEX-TP")
TOPS_CHANNEL_ID: Final = 1
MAX_PAYLOAD: Final = 0xFFFF  # payload length and message length are unsigned shorts

# --------------------------------------------------------------------------- formats

# version, reserved, message protocol id, channel id, session id, payload length,
# message count, stream offset, first message sequence number, send time
_HEADER: Final = struct.Struct("<BBHIIHHqqq")
HEADER_SIZE: Final = _HEADER.size  # 40
_U16: Final = struct.Struct("<H")
_I64: Final = struct.Struct("<q")

# Every TOPS format below includes the leading message type byte.
_SYSTEM_EVENT: Final = struct.Struct("<BBq")  # S: type, system event, timestamp
_SECURITY_DIRECTORY: Final = struct.Struct("<BBq8sIqB")  # D: ... round lot, adj POC, LULD tier
_TRADING_STATUS: Final = struct.Struct("<BBq8s4s")  # H: type, status, ts, symbol, reason
_RETAIL_LIQUIDITY: Final = struct.Struct("<BBq8s")  # I: type, indicator, ts, symbol
_OPERATIONAL_HALT: Final = struct.Struct("<BBq8s")  # O: type, status, ts, symbol
_SHORT_SALE_TEST: Final = struct.Struct("<BBq8sB")  # P: type, status, ts, symbol, detail
_SECURITY_EVENT: Final = struct.Struct("<BBq8s")  # E: type, event, ts, symbol
# Q: type, flags, timestamp, symbol, bid size, bid price, ask price, ask size
_QUOTE_UPDATE: Final = struct.Struct("<BBq8sIqqI")
_TRADE: Final = struct.Struct("<BBq8sIqq")  # T and B: flags, ts, symbol, size, price, trade id
_OFFICIAL_PRICE: Final = struct.Struct("<BBq8sq")  # X: price type, ts, symbol, price
_AUCTION_INFORMATION_SIZE: Final = 80  # A

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_UINT32_MAX: Final = (1 << 32) - 1

# --------------------------------------------------------------------------- code tables

SYSTEM_EVENT_CODES: Final = frozenset("OSRMEC")

_STATUS_BY_BYTE: Final[dict[int, TradingState]] = {
    ord("H"): "halted",  # trading halted across all US equity markets
    ord("P"): "paused",  # trading paused and Order Acceptance Period on IEX
    ord("O"): "quoting",  # halt released into an Order Acceptance Period on IEX
    ord("T"): "trading",  # trading on IEX
}
_BYTE_BY_STATUS: Final = {state: byte for byte, state in _STATUS_BY_BYTE.items()}

_PRICE_TYPE_BY_BYTE: Final[dict[int, Literal["open", "close"]]] = {
    ord("Q"): "open",  # IEX Official Opening Price
    ord("M"): "close",  # IEX Official Closing Price
}
_BYTE_BY_PRICE_TYPE: Final = {kind: byte for byte, kind in _PRICE_TYPE_BY_BYTE.items()}

SECURITY_TEST_FLAG: Final = 0x80

# Sale condition flags (Trade Report / Trade Break), highest bit first.
SALE_CONDITION_FLAGS: Final[tuple[tuple[int, str], ...]] = (
    (0x80, "F"),  # intermarket sweep order
    (0x40, "T"),  # extended hours (Form T)
    (0x20, "I"),  # odd lot
    (0x10, "8"),  # trade-through exempt
    (0x08, "X"),  # single-price cross
)
_FLAG_BY_CONDITION: Final = {letter: bit for bit, letter in SALE_CONDITION_FLAGS}
_REGULAR: Final = "@"


def _conditions_for(flags: int) -> tuple[tuple[str, ...], bool, bool]:
    letters = tuple(letter for bit, letter in SALE_CONDITION_FLAGS if flags & bit)
    conditions = letters or (_REGULAR,)
    updates_last, updates_volume = eligibility(conditions)
    return conditions, updates_last, updates_volume


# flags byte -> (conditions, updates_last, updates_volume); bits 0-2 are not defined
# in TOPS 1.6 and, as the spec allows flags to grow, are ignored.
_CONDITIONS: Final = tuple(_conditions_for(flags) for flags in range(256))

_MESSAGE_NAMES: Final = {
    ord("S"): "System Event",
    ord("D"): "Security Directory",
    ord("H"): "Trading Status",
    ord("I"): "Retail Liquidity Indicator",
    ord("O"): "Operational Halt Status",
    ord("P"): "Short Sale Price Test Status",
    ord("E"): "Security Event",
    ord("Q"): "Quote Update",
    ord("T"): "Trade Report",
    ord("X"): "Official Price",
    ord("B"): "Trade Break",
    ord("A"): "Auction Information",
}

# --------------------------------------------------------------------------- decoding helpers


class _BadMessage(Exception):
    """Raised inside a message decoder; becomes a Malformed for that message."""


def _bad(reason: str) -> NoReturn:
    raise _BadMessage(reason)


def _price(value: int) -> Decimal:
    # scaleb keeps the coefficient, so this is exact and always has 4 places.
    return Decimal(value).scaleb(-4)


_SYMBOLS: dict[bytes, str] = {}
_SYMBOL_CACHE_LIMIT: Final = 100_000


def _symbol(raw: bytes) -> str:
    cached = _SYMBOLS.get(raw)
    if cached is not None:
        return cached
    text = raw.rstrip(b" ")
    if not text:
        _bad("blank symbol")
    if not text.isascii() or b" " in text or not text.decode("ascii").isprintable():
        _bad(f"bad symbol bytes {raw!r}")
    symbol = text.decode("ascii")
    if len(_SYMBOLS) >= _SYMBOL_CACHE_LIMIT:
        _SYMBOLS.clear()
    _SYMBOLS[raw] = symbol
    return symbol


def _reason(raw: bytes) -> str:
    # Space filled per spec; NUL padding is tolerated as well.
    text = raw.rstrip(b" \x00")
    if not text.isascii() or not text.decode("ascii").isprintable():
        _bad(f"bad reason bytes {raw!r}")
    return text.decode("ascii")


def _type_label(mtype: int) -> str:
    char = chr(mtype)
    return (
        f"{char!r} (0x{mtype:02x})" if char.isascii() and char.isprintable() else f"0x{mtype:02x}"
    )


# --------------------------------------------------------------------------- message decoders

_Decoder = Callable[[bytes, int, str, int], Event]


def _decode_system_event(buf: bytes, off: int, venue: str, receive_ns: int) -> Event:
    _, code, ts = _SYSTEM_EVENT.unpack_from(buf, off)
    char = chr(code)
    if char not in SYSTEM_EVENT_CODES:
        _bad(f"unknown system event {_type_label(code)}")
    return SystemEvent(venue=venue, code=char, event_ns=ts, receive_ns=receive_ns)


def _decode_security_directory(buf: bytes, off: int, venue: str, receive_ns: int) -> Event:
    _, flags, ts, sym, round_lot, poc, _luld_tier = _SECURITY_DIRECTORY.unpack_from(buf, off)
    symbol = _symbol(sym)
    if round_lot == 0:
        _bad("round lot size 0")
    if poc < 0:
        _bad(f"negative adjusted POC price {poc}")
    return Security(
        symbol=symbol,
        venue=venue,
        round_lot=round_lot,
        test=bool(flags & SECURITY_TEST_FLAG),
        event_ns=ts,
        receive_ns=receive_ns,
        adjusted_poc_price=_price(poc),
    )


def _decode_trading_status(buf: bytes, off: int, venue: str, receive_ns: int) -> Event:
    _, status, ts, sym, reason = _TRADING_STATUS.unpack_from(buf, off)
    symbol = _symbol(sym)
    state = _STATUS_BY_BYTE.get(status)
    if state is None:
        _bad(f"unknown trading status {_type_label(status)}")
    return Status(
        symbol=symbol,
        venue=venue,
        state=state,
        reason=_reason(reason),
        event_ns=ts,
        receive_ns=receive_ns,
    )


def _decode_quote_update(buf: bytes, off: int, venue: str, receive_ns: int) -> Event:
    _, _flags, ts, sym, bid_size, bid, ask, ask_size = _QUOTE_UPDATE.unpack_from(buf, off)
    symbol = _symbol(sym)
    if bid < 0:
        _bad(f"negative bid price {bid}")
    if ask < 0:
        _bad(f"negative ask price {ask}")
    return Quote(
        symbol=symbol,
        venue=venue,
        bid_price=_price(bid),
        bid_size=bid_size,
        ask_price=_price(ask),
        ask_size=ask_size,
        event_ns=ts,
        receive_ns=receive_ns,
    )


def _check_trade(size: int, price: int, trade_id: int) -> None:
    if size == 0:
        _bad("zero trade size")
    if price < 0:
        _bad(f"negative trade price {price}")
    if price == 0:
        _bad("zero trade price")
    if trade_id < 0:
        _bad(f"negative trade id {trade_id}")


def _decode_trade_report(buf: bytes, off: int, venue: str, receive_ns: int) -> Event:
    _, flags, ts, sym, size, price, trade_id = _TRADE.unpack_from(buf, off)
    symbol = _symbol(sym)
    _check_trade(size, price, trade_id)
    conditions, updates_last, updates_volume = _CONDITIONS[flags]
    return Trade(
        symbol=symbol,
        venue=venue,
        trade_id=str(trade_id),
        price=_price(price),
        size=size,
        conditions=conditions,
        event_ns=ts,
        receive_ns=receive_ns,
        updates_last=updates_last,
        updates_volume=updates_volume,
    )


def _decode_trade_break(buf: bytes, off: int, venue: str, receive_ns: int) -> Event:
    _, _flags, ts, sym, size, price, trade_id = _TRADE.unpack_from(buf, off)
    symbol = _symbol(sym)
    _check_trade(size, price, trade_id)
    return TradeBreak(
        symbol=symbol,
        venue=venue,
        trade_id=str(trade_id),
        price=_price(price),
        size=size,
        event_ns=ts,
        receive_ns=receive_ns,
    )


def _decode_official_price(buf: bytes, off: int, venue: str, receive_ns: int) -> Event:
    _, price_type, ts, sym, price = _OFFICIAL_PRICE.unpack_from(buf, off)
    symbol = _symbol(sym)
    kind = _PRICE_TYPE_BY_BYTE.get(price_type)
    if kind is None:
        _bad(f"unknown official price type {_type_label(price_type)}")
    if price < 0:
        _bad(f"negative official price {price}")
    return OfficialPrice(
        symbol=symbol,
        venue=venue,
        price_type=kind,
        price=_price(price),
        event_ns=ts,
        receive_ns=receive_ns,
    )


# message type -> (expected length, decoder or None for "recognised, skipped")
_DECODERS: Final[dict[int, tuple[int, _Decoder | None]]] = {
    ord("S"): (_SYSTEM_EVENT.size, _decode_system_event),
    ord("D"): (_SECURITY_DIRECTORY.size, _decode_security_directory),
    ord("H"): (_TRADING_STATUS.size, _decode_trading_status),
    ord("Q"): (_QUOTE_UPDATE.size, _decode_quote_update),
    ord("T"): (_TRADE.size, _decode_trade_report),
    ord("X"): (_OFFICIAL_PRICE.size, _decode_official_price),
    ord("B"): (_TRADE.size, _decode_trade_break),
    # Recognised and skipped: nothing in the normalized schema carries them.
    # (Operational Halt is not mapped to Status: its "N" means only "not
    # operationally halted", which says nothing about the regulatory trading
    # status, so turning it into "trading" could wrongly lift a halt.)
    ord("O"): (_OPERATIONAL_HALT.size, None),
    ord("P"): (_SHORT_SALE_TEST.size, None),
    ord("E"): (_SECURITY_EVENT.size, None),
    ord("A"): (_AUCTION_INFORMATION_SIZE, None),
    ord("I"): (_RETAIL_LIQUIDITY.size, None),  # added in TOPS 1.65/1.66
}

# --------------------------------------------------------------------------- segments


def _segment_malformed(
    reason: str, raw: bytes, venue: str, **detail: int
) -> list[Event | Malformed]:
    return [Malformed(reason=f"iex_tp: {reason}", raw=bytes(raw), venue=venue, detail=detail)]


def parse_segment(raw: bytes, venue: str, receive_ns: int) -> list[Event | Malformed]:
    """Decode one IEX-TP segment carrying TOPS 1.6 into normalized events.

    Returns one item per message (none for the recognised-but-unused types
    O, P, E, A, I). A segment whose header or framing is wrong yields a single
    Malformed for the whole segment; a message that does not decode yields a
    Malformed for that message only (raw = its message data) and the rest of
    the segment is still decoded.
    """
    size = len(raw)
    if size < HEADER_SIZE:
        return _segment_malformed(
            f"segment of {size} bytes is shorter than the {HEADER_SIZE}-byte header", raw, venue
        )
    (version, _reserved, protocol, channel, session, payload_len, count, stream_offset,
     first_seq, send_time) = _HEADER.unpack_from(raw, 0)  # fmt: skip
    header = {
        "channel_id": channel,
        "session_id": session,
        "stream_offset": stream_offset,
        "first_seq": first_seq,
        "send_time_ns": send_time,
    }
    if version != IEX_TP_VERSION:
        return _segment_malformed(f"unsupported version {version}", raw, venue, **header)
    if protocol != TOPS_PROTOCOL_ID:
        return _segment_malformed(
            f"message protocol id 0x{protocol:04x} is not TOPS 1.6 (0x{TOPS_PROTOCOL_ID:04x})",
            raw,
            venue,
            **header,
        )
    if payload_len != size - HEADER_SIZE:
        return _segment_malformed(
            f"payload length {payload_len} does not match {size - HEADER_SIZE} bytes",
            raw,
            venue,
            **header,
        )

    # Frame every block first: if the framing is off nothing in it can be trusted.
    blocks: list[tuple[int, int]] = []
    off = HEADER_SIZE
    while off < size:
        if off + 2 > size:
            return _segment_malformed(
                f"message block {len(blocks) + 1} has a truncated length field",
                raw,
                venue,
                **header,
            )
        (length,) = _U16.unpack_from(raw, off)
        off += 2
        if off + length > size:
            return _segment_malformed(
                f"message block {len(blocks) + 1} of {length} bytes overruns the payload by "
                f"{off + length - size} bytes",
                raw,
                venue,
                **header,
            )
        blocks.append((off, length))
        off += length
    if len(blocks) != count:
        return _segment_malformed(
            f"message count {count} does not match {len(blocks)} message blocks",
            raw,
            venue,
            **header,
        )

    out: list[Event | Malformed] = []
    decoders = _DECODERS
    for index, (off, length) in enumerate(blocks):
        try:
            if length == 0:
                _bad("empty message")
            mtype = raw[off]
            entry = decoders.get(mtype)
            if entry is None:
                _bad(f"unknown message type {_type_label(mtype)}")
            expected, decode = entry
            if length != expected:
                _bad(
                    f"{_MESSAGE_NAMES[mtype]} ({chr(mtype)}) message is {length} bytes, "
                    f"expected {expected}"
                )
            if decode is not None:
                out.append(decode(raw, off, venue, receive_ns))
        except _BadMessage as exc:
            out.append(
                Malformed(
                    reason=f"tops: {exc}",
                    raw=bytes(raw[off : off + length]),
                    venue=venue,
                    detail={"session_id": session, "seq": first_seq + index, "index": index},
                )
            )
    return out


def _check_header_size(raw: bytes) -> None:
    if len(raw) < HEADER_SIZE:
        raise ValueError(
            f"iex_tp: segment of {len(raw)} bytes is shorter than the {HEADER_SIZE}-byte header"
        )


def segment_send_time(raw: bytes) -> int:
    """The Send Time (ns since the epoch) of an IEX-TP segment."""
    _check_header_size(raw)
    return _I64.unpack_from(raw, 32)[0]


def segment_message_count(raw: bytes) -> int:
    """The Message Count field of an IEX-TP segment."""
    _check_header_size(raw)
    return _U16.unpack_from(raw, 14)[0]


def iter_segments(data: bytes) -> Iterator[bytes]:
    """Split a recording of back-to-back IEX-TP segments into single segments.

    Each segment's own Payload Length tells where the next one starts. Raises
    ValueError when the data ends inside a segment. ``data`` may be any
    sliceable buffer (bytes, bytearray, mmap); no view of it is held between
    segments, so an mmap can be closed even if iteration stops early.
    """
    total = len(data)
    off = 0
    while off < total:
        if off + HEADER_SIZE > total:
            raise ValueError(
                f"iex_tp: truncated segment header at offset {off} "
                f"({total - off} of {HEADER_SIZE} bytes)"
            )
        (payload_len,) = _U16.unpack_from(data, off + 12)
        end = off + HEADER_SIZE + payload_len
        if end > total:
            raise ValueError(
                f"iex_tp: truncated segment at offset {off}: payload length {payload_len} "
                f"but only {total - off - HEADER_SIZE} bytes left"
            )
        yield bytes(data[off:end])
        off = end


def _check_int(value: int, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is outside [{low}, {high}]")
    return value


def encode_segment(
    messages: Sequence[bytes],
    *,
    send_time_ns: int,
    first_seq: int,
    stream_offset: int,
    session_id: int = 1,
    channel_id: int = 1,
) -> bytes:
    """Frame TOPS message bodies (no length prefix) into one IEX-TP segment.

    An empty list gives a heartbeat (payload length and message count 0).
    """
    parts: list[bytes] = []
    for index, body in enumerate(messages):
        if len(body) > MAX_PAYLOAD:
            raise ValueError(f"message {index} is {len(body)} bytes, longer than {MAX_PAYLOAD}")
        parts.append(_U16.pack(len(body)))
        parts.append(bytes(body))
    payload = b"".join(parts)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    header = _HEADER.pack(
        IEX_TP_VERSION,
        0,
        TOPS_PROTOCOL_ID,
        _check_int(channel_id, 0, _UINT32_MAX, "channel id"),
        _check_int(session_id, 0, _UINT32_MAX, "session id"),
        len(payload),
        len(messages),
        _check_int(stream_offset, _INT64_MIN, _INT64_MAX, "stream offset"),
        _check_int(first_seq, _INT64_MIN, _INT64_MAX, "first sequence number"),
        _check_int(send_time_ns, _INT64_MIN, _INT64_MAX, "send time"),
    )
    return header + payload


# --------------------------------------------------------------------------- encoding

_PRICE_QUANTUM: Final = Decimal("0.0001")
_EXACT: Final = Context(prec=60, traps=[InvalidOperation])


def _enc_price(value: Decimal, what: str, *, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ValueError(f"{what} must be a Decimal, not {type(value).__name__}")
    dec = Decimal(value)
    if not dec.is_finite():
        raise ValueError(f"{what} {value} is not finite")
    try:
        quantized = dec.quantize(_PRICE_QUANTUM, context=_EXACT)
    except InvalidOperation:
        raise ValueError(f"{what} {value} is out of range") from None
    if quantized != dec:
        raise ValueError(f"{what} {value} has more than 4 decimal places")
    if dec < 0:
        raise ValueError(f"{what} {value} is negative")
    if positive and dec == 0:
        raise ValueError(f"{what} must be positive")
    scaled = int(quantized.scaleb(4, context=_EXACT))
    if scaled > _INT64_MAX:
        raise ValueError(f"{what} {value} does not fit an 8-byte price")
    return scaled


def _enc_symbol(symbol: str) -> bytes:
    if not isinstance(symbol, str) or not 1 <= len(symbol) <= 8:
        raise ValueError(f"symbol {symbol!r} must be 1 to 8 characters")
    if not symbol.isascii() or not symbol.isprintable() or " " in symbol:
        raise ValueError(f"symbol {symbol!r} must be printable ASCII without spaces")
    return symbol.encode("ascii").ljust(8, b" ")


def _enc_ts(event_ns: int) -> int:
    return _check_int(event_ns, _INT64_MIN, _INT64_MAX, "event_ns")


def _enc_size(size: int, what: str, *, positive: bool = False) -> int:
    return _check_int(size, 1 if positive else 0, _UINT32_MAX, what)


def _enc_trade_id(trade_id: str) -> int:
    if not isinstance(trade_id, str) or not trade_id.isascii() or not trade_id.isdigit():
        raise ValueError(f"trade_id {trade_id!r} is not a non-negative integer")
    value = int(trade_id)
    if str(value) != trade_id:
        raise ValueError(f"trade_id {trade_id!r} is not in canonical form")
    if value > _INT64_MAX:
        raise ValueError(f"trade_id {trade_id!r} does not fit an 8-byte Long")
    return value


def _enc_conditions(conditions: Iterable[str]) -> int:
    flags = 0
    for code in conditions:
        if code == _REGULAR:
            continue
        bit = _FLAG_BY_CONDITION.get(code)
        if bit is None:
            raise ValueError(f"sale condition {code!r} has no TOPS sale condition flag")
        flags |= bit
    return flags


def _enc_system_event(event: SystemEvent) -> bytes:
    if not isinstance(event.code, str) or event.code not in SYSTEM_EVENT_CODES:
        raise ValueError(f"system event code {event.code!r} is not one of O S R M E C")
    if event.symbol:
        raise ValueError("a TOPS System Event carries no symbol")
    return _SYSTEM_EVENT.pack(ord("S"), ord(event.code), _enc_ts(event.event_ns))


def _enc_security(event: Security) -> bytes:
    return _SECURITY_DIRECTORY.pack(
        ord("D"),
        SECURITY_TEST_FLAG if event.test else 0,
        _enc_ts(event.event_ns),
        _enc_symbol(event.symbol),
        _enc_size(event.round_lot, "round_lot", positive=True),
        _enc_price(event.adjusted_poc_price, "adjusted_poc_price"),
        0,  # LULD tier: not carried by Security, sent as 0 (not applicable)
    )


def _enc_status(event: Status) -> bytes:
    status = _BYTE_BY_STATUS.get(event.state)
    if status is None:
        raise ValueError(f"trading state {event.state!r} has no TOPS trading status")
    reason = event.reason
    if not isinstance(reason, str) or len(reason) > 4:
        raise ValueError(f"reason {reason!r} is longer than 4 characters")
    if not reason.isascii() or not reason.isprintable():
        raise ValueError(f"reason {reason!r} must be printable ASCII")
    return _TRADING_STATUS.pack(
        ord("H"),
        status,
        _enc_ts(event.event_ns),
        _enc_symbol(event.symbol),
        reason.encode("ascii").ljust(4, b" "),
    )


def _enc_quote(event: Quote) -> bytes:
    return _QUOTE_UPDATE.pack(
        ord("Q"),
        0,  # flags: active, regular market session (not carried by Quote)
        _enc_ts(event.event_ns),
        _enc_symbol(event.symbol),
        _enc_size(event.bid_size, "bid_size"),
        _enc_price(event.bid_price, "bid_price"),
        _enc_price(event.ask_price, "ask_price"),
        _enc_size(event.ask_size, "ask_size"),
    )


def _enc_trade(event: Trade) -> bytes:
    return _TRADE.pack(
        ord("T"),
        _enc_conditions(event.conditions),
        _enc_ts(event.event_ns),
        _enc_symbol(event.symbol),
        _enc_size(event.size, "size", positive=True),
        _enc_price(event.price, "price", positive=True),
        _enc_trade_id(event.trade_id),
    )


def _enc_trade_break(event: TradeBreak) -> bytes:
    return _TRADE.pack(
        ord("B"),
        0,  # sale condition flags: not carried by TradeBreak
        _enc_ts(event.event_ns),
        _enc_symbol(event.symbol),
        _enc_size(event.size, "size", positive=True),
        _enc_price(event.price, "price", positive=True),
        _enc_trade_id(event.trade_id),
    )


def _enc_official_price(event: OfficialPrice) -> bytes:
    price_type = _BYTE_BY_PRICE_TYPE.get(event.price_type)
    if price_type is None:
        raise ValueError(f"price_type {event.price_type!r} is not 'open' or 'close'")
    return _OFFICIAL_PRICE.pack(
        ord("X"),
        price_type,
        _enc_ts(event.event_ns),
        _enc_symbol(event.symbol),
        _enc_price(event.price, "price"),
    )


_ENCODERS: Final[dict[type, Callable[..., bytes]]] = {
    SystemEvent: _enc_system_event,
    Security: _enc_security,
    Status: _enc_status,
    Quote: _enc_quote,
    Trade: _enc_trade,
    TradeBreak: _enc_trade_break,
    OfficialPrice: _enc_official_price,
}


def encode_event(event: Event) -> bytes:
    """The TOPS message data (no length prefix) for one normalized event.

    The inverse of the parser: ``parse_segment`` of the framed bytes gives back
    an equal event (venue and receive_ns come from the parse call). Raises
    ValueError for what TOPS cannot carry or the parser would reject.
    """
    encoder = _ENCODERS.get(type(event))
    if encoder is None:
        raise ValueError(f"cannot encode {type(event).__name__} as a TOPS message")
    return encoder(event)


# --------------------------------------------------------------------------- writer


class SegmentWriter:
    """Builds the consecutive IEX-TP segments of one TOPS session.

    Holds the session id, the stream offset and the next message sequence
    number; each segment advances the offset by its payload bytes and the
    sequence by its message count.
    """

    __slots__ = ("channel_id", "next_seq", "session_id", "stream_offset")

    def __init__(
        self,
        session_id: int = 1,
        *,
        channel_id: int = TOPS_CHANNEL_ID,
        stream_offset: int = 0,
        next_seq: int = 1,
    ) -> None:
        self.session_id = session_id
        self.channel_id = channel_id
        self.stream_offset = stream_offset
        self.next_seq = next_seq

    def write(self, events: Iterable[Event], send_time_ns: int) -> bytes:
        """Encode ``events`` into the next segment. State is unchanged on ValueError."""
        return self.write_messages([encode_event(event) for event in events], send_time_ns)

    def write_messages(self, messages: Sequence[bytes], send_time_ns: int) -> bytes:
        """Frame already encoded message bodies into the next segment."""
        segment = encode_segment(
            messages,
            send_time_ns=send_time_ns,
            first_seq=self.next_seq,
            stream_offset=self.stream_offset,
            session_id=self.session_id,
            channel_id=self.channel_id,
        )
        self.stream_offset += len(segment) - HEADER_SIZE
        self.next_seq += len(messages)
        return segment

    def heartbeat(self, send_time_ns: int) -> bytes:
        """A segment with no messages, carrying the next offset and sequence number."""
        return self.write_messages([], send_time_ns)
