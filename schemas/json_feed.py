"""The JSON-lines vendor feed: one JSON object (or an array of them) per line.

Shaped like the streaming market-data APIs people already use::

    {"T":"q","S":"AAPL","bx":"Q","bp":"189.10","bs":300,"ax":"Q","ap":"189.12","as":200,"t":"…"}
    {"T":"t","S":"AAPL","i":"71675","x":"Q","p":"189.11","s":100,"t":"…","c":["@"]}
    {"T":"s","S":"AAPL","sc":"H","sm":"Trading halt","t":"…"}
    {"T":"x","S":"AAPL","i":"71675","x":"Q","p":"189.11","s":100,"t":"…"}   (trade break)

Decisions a reader must know:

- The normalized event's venue is the feed (the ``venue`` argument), never the
  bx/ax/x exchange letters, which are accepted and ignored on input.
- Prices may be JSON strings or numbers. orjson turns a number into a float, so
  a numeric price goes through ``repr(float)`` (the shortest text that reads
  back as the same float): ``189.1`` becomes ``Decimal("189.1")``, never
  ``189.099999…``. A number with more significant digits than a double holds
  is therefore rounded by the JSON decoder before we see it; vendors that care
  send strings. String prices must be plain decimals (``\\d+(\\.\\d+)?``): no
  exponent, sign, underscore or whitespace. Every price is quantized to 4
  places, so ``"189.1"`` and ``"189.1000"`` give the same event.
- More than 4 significant decimals, or a price of ``MAX_PRICE`` or more, is
  "price out of range"; a trade or break price of 0 is too. A quote price may
  be 0 (no bid / no offer), as may a quote size.
- Sizes are JSON integers (not floats, not bools), below 2**32 so any event can
  be re-encoded as IEX TOPS; trade and break sizes must be positive.
- ``c`` (sale conditions) is optional and defaults to no conditions; ``sm``
  (status message) is optional and defaults to "". Unknown keys are ignored,
  for forward compatibility.
- ``i`` (trade id) may be a string or an integer; it always becomes a string.
- Times are RFC 3339 with 0..9 fractional digits and ``Z`` or ``±hh:mm``,
  parsed by hand to exact integer nanoseconds (no float, no datetime).
- A line holding an array yields one result per element; a bad element becomes
  its own Malformed whose ``raw`` is that element re-encoded (orjson gives no
  byte spans) and whose ``detail["index"]`` is its position in the line.

Malformed reasons (stable strings, the dead-letter topic groups by them):
"json: invalid JSON", "json: not an object", "json: missing field 'X'",
"json: unknown message type 'Z'", "json: invalid symbol", "json: invalid price",
"json: negative price", "json: price out of range", "json: invalid size",
"json: invalid time", "json: invalid trade id", "json: invalid conditions",
"json: unknown sale condition '%'", "json: unknown status code 'Y'",
"json: invalid status message". Field-specific ones carry ``detail["field"]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import orjson

from schemas import sale_conditions
from schemas.marketdata import (
    PRICE_PLACES,
    Event,
    Malformed,
    Quote,
    Status,
    Trade,
    TradeBreak,
    TradingState,
)

MAX_PRICE = Decimal(100_000_000)  # exclusive; above any listed equity, fits NUMERIC(18,4)
MAX_SIZE = 2**32 - 1  # IEX TOPS sizes are uint32; keeps every event re-encodable
MAX_SYMBOL_LEN = 16

STATUS_CODES: dict[str, TradingState] = {
    "H": "halted",
    "P": "paused",
    "T": "trading",
    "Q": "quoting",
}
_STATUS_LETTERS: dict[str, str] = {state: code for code, state in STATUS_CODES.items()}

# Exchange letters (CTA/UTP participant ids) written into bx/ax/x on encode. Parsing
# ignores them, so an unlisted venue just gets its initial.
EXCHANGE_CODES: dict[str, str] = {
    "nasdaq": "Q",
    "iex": "V",
    "nyse": "N",
    "arca": "P",
    "bats": "Z",
    "cboe": "Z",
    "memx": "U",
    "miax": "H",
}

_PRICE_TEXT = re.compile(r"\d+(?:\.\d+)?")
_SYMBOL_TEXT = re.compile(r"[A-Z0-9][A-Z0-9.\-/+=^]*")


class _Bad(Exception):
    """One field of one message is wrong; becomes a Malformed at the message boundary."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


# ---------------------------------------------------------------- time


_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_FRACTION_SCALE = tuple(10 ** (9 - n) for n in range(10))  # digits -> ns multiplier


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _digits(s: str, start: int, end: int) -> int:
    part = s[start:end]
    # isdigit() alone would admit other scripts' digits; s is checked ASCII by the caller.
    if len(part) != end - start or not part.isdigit():
        raise ValueError(f"expected digits at {start} in {s!r}")
    return int(part)


def _expect(s: str, pos: int, chars: str) -> None:
    if pos >= len(s) or s[pos] not in chars:
        raise ValueError(f"expected {chars!r} at {pos} in {s!r}")


# Feeds stamp UTC ('Z') and many messages share a second: the common shape takes a
# regex match and a cached lookup of its whole-second part instead of a full parse.
_UTC_TIME = re.compile(r"(\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?[Zz]\Z")


@lru_cache(maxsize=4096)
def _utc_seconds(head: str) -> int:
    return _parse_time_full(head + "Z") // 1_000_000_000


def parse_time(s: str) -> int:
    """RFC 3339 date-time -> integer ns since the epoch, UTC. Raises ValueError.

    Accepts 0..9 fractional digits, 'Z'/'z' or ±hh:mm, 'T'/'t' separator; rejects
    leap seconds (:60), impossible dates and anything else.
    """
    match = _UTC_TIME.match(s) if s.isascii() else None
    if match is None:
        return _parse_time_full(s)
    head, fraction = match.groups()
    ns = _utc_seconds(head) * 1_000_000_000
    return ns + int(fraction) * _FRACTION_SCALE[len(fraction)] if fraction else ns


def _parse_time_full(s: str) -> int:
    """RFC 3339 date-time -> integer ns since the epoch, UTC. Raises ValueError.

    Accepts 0..9 fractional digits, 'Z'/'z' or ±hh:mm, 'T'/'t' separator; rejects
    leap seconds (:60), impossible dates and anything else, so a bad vendor clock
    never silently becomes a plausible time.
    """
    if not s.isascii() or len(s) < 20:
        raise ValueError(f"not an RFC 3339 time: {s!r}")
    year = _digits(s, 0, 4)
    _expect(s, 4, "-")
    month = _digits(s, 5, 7)
    _expect(s, 7, "-")
    day = _digits(s, 8, 10)
    _expect(s, 10, "Tt")
    hour = _digits(s, 11, 13)
    _expect(s, 13, ":")
    minute = _digits(s, 14, 16)
    _expect(s, 16, ":")
    second = _digits(s, 17, 19)
    if not 1 <= month <= 12:
        raise ValueError(f"month out of range: {s!r}")
    last_day = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= last_day or hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"date or time out of range: {s!r}")
    pos, fraction = _parse_fraction(s, 19)
    offset_s = _parse_offset(s, pos)
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_s) * 1_000_000_000 + fraction


def _parse_fraction(s: str, pos: int) -> tuple[int, int]:
    """Return (position after the fraction, fraction in ns)."""
    if s[pos] != ".":
        return pos, 0
    end = pos + 1
    while end < len(s) and "0" <= s[end] <= "9":
        end += 1
    n = end - pos - 1
    if not 1 <= n <= 9:
        raise ValueError(f"fraction must have 1..9 digits: {s!r}")
    return end, int(s[pos + 1 : end]) * _FRACTION_SCALE[n]


def _parse_offset(s: str, pos: int) -> int:
    """Return the UTC offset in seconds of the zone designator that must end s."""
    rest = len(s) - pos
    if rest == 1 and s[pos] in "Zz":
        return 0
    if rest != 6:
        raise ValueError(f"bad zone designator: {s!r}")
    _expect(s, pos, "+-")
    _expect(s, pos + 3, ":")
    hours = _digits(s, pos + 1, pos + 3)
    minutes = _digits(s, pos + 4, pos + 6)
    if hours > 23 or minutes > 59:
        raise ValueError(f"offset out of range: {s!r}")
    sign = -1 if s[pos] == "-" else 1
    return sign * (hours * 3600 + minutes * 60)


def format_time(ns: int) -> str:
    """Integer ns since the epoch -> RFC 3339 UTC with exactly 9 fractional digits."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    days, second_of_day = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    if not 0 <= year <= 9999:
        raise ValueError(f"time out of the 4-digit-year range: {ns}")
    hour, rem = divmod(second_of_day, 3600)
    minute, second = divmod(rem, 60)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{fraction:09d}Z"


# ---------------------------------------------------------------- field readers


def _field(obj: dict[str, Any], name: str) -> Any:
    try:
        return obj[name]
    except KeyError:
        raise _Bad(f"json: missing field '{name}'", name) from None


def _symbol(obj: dict[str, Any]) -> str:
    value = _field(obj, "S")
    if (
        not isinstance(value, str)
        or len(value) > MAX_SYMBOL_LEN
        or not _SYMBOL_TEXT.fullmatch(value)
    ):
        raise _Bad("json: invalid symbol", "S")
    return value


def _price(obj: dict[str, Any], name: str, *, allow_zero: bool) -> Decimal:
    value = _to_decimal(_field(obj, name), name)
    if value.is_signed():  # also catches "-0", which would encode back as "-0.0000"
        raise _Bad("json: negative price", name)
    if value >= MAX_PRICE or (value == 0 and not allow_zero):
        raise _Bad("json: price out of range", name)
    quantized = value.quantize(PRICE_PLACES)
    if quantized != value:
        raise _Bad("json: price out of range", name)  # more than 4 decimals
    return quantized


def _to_decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, str):
        # A leading '-' is still a number, so report it as negative rather than garbage.
        text = value[1:] if value.startswith("-") else value
        if not _PRICE_TEXT.fullmatch(text):
            raise _Bad("json: invalid price", name)
        return Decimal(value)
    if isinstance(value, bool):  # bool is an int subclass; true is not a price
        raise _Bad("json: invalid price", name)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # repr is the shortest round-tripping text, i.e. what the vendor most likely wrote.
        try:
            result = Decimal(repr(value))
        except InvalidOperation:
            raise _Bad("json: invalid price", name) from None
        if not result.is_finite():
            raise _Bad("json: invalid price", name)
        return result
    raise _Bad("json: invalid price", name)


def _size(obj: dict[str, Any], name: str, *, allow_zero: bool) -> int:
    value = _field(obj, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad("json: invalid size", name)
    if value < (0 if allow_zero else 1) or value > MAX_SIZE:
        raise _Bad("json: invalid size", name)
    return value


def _time(obj: dict[str, Any]) -> int:
    value = _field(obj, "t")
    if not isinstance(value, str):
        raise _Bad("json: invalid time", "t")
    try:
        return parse_time(value)
    except ValueError:
        raise _Bad("json: invalid time", "t") from None


def _trade_id(obj: dict[str, Any]) -> str:
    value = _field(obj, "i")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Bad("json: invalid trade id", "i")
    text = str(value)
    if not text or len(text) > 64:
        raise _Bad("json: invalid trade id", "i")
    return text


def _conditions(obj: dict[str, Any]) -> tuple[str, ...]:
    value = obj.get("c", [])
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise _Bad("json: invalid conditions", "c")
    unknown = sale_conditions.unknown(value)
    if unknown:
        raise _Bad(f"json: unknown sale condition '{unknown[0]}'", "c")
    return tuple(value)


# ---------------------------------------------------------------- messages


def _quote(obj: dict[str, Any], venue: str, receive_ns: int) -> Quote:
    return Quote(
        symbol=_symbol(obj),
        venue=venue,
        bid_price=_price(obj, "bp", allow_zero=True),
        bid_size=_size(obj, "bs", allow_zero=True),
        ask_price=_price(obj, "ap", allow_zero=True),
        ask_size=_size(obj, "as", allow_zero=True),
        event_ns=_time(obj),
        receive_ns=receive_ns,
    )


def _trade(obj: dict[str, Any], venue: str, receive_ns: int) -> Trade:
    symbol = _symbol(obj)
    trade_id = _trade_id(obj)
    price = _price(obj, "p", allow_zero=False)
    size = _size(obj, "s", allow_zero=False)
    event_ns = _time(obj)
    conditions = _conditions(obj)
    updates_last, updates_volume = sale_conditions.eligibility(conditions)
    return Trade(
        symbol=symbol,
        venue=venue,
        trade_id=trade_id,
        price=price,
        size=size,
        conditions=conditions,
        event_ns=event_ns,
        receive_ns=receive_ns,
        updates_last=updates_last,
        updates_volume=updates_volume,
    )


def _break(obj: dict[str, Any], venue: str, receive_ns: int) -> TradeBreak:
    return TradeBreak(
        symbol=_symbol(obj),
        venue=venue,
        trade_id=_trade_id(obj),
        price=_price(obj, "p", allow_zero=False),
        size=_size(obj, "s", allow_zero=False),
        event_ns=_time(obj),
        receive_ns=receive_ns,
    )


def _status(obj: dict[str, Any], venue: str, receive_ns: int) -> Status:
    symbol = _symbol(obj)
    code = _field(obj, "sc")
    state = STATUS_CODES.get(code) if isinstance(code, str) else None
    if state is None:
        raise _Bad(f"json: unknown status code '{code}'", "sc")
    reason = obj.get("sm", "")
    if not isinstance(reason, str):
        raise _Bad("json: invalid status message", "sm")
    return Status(
        symbol=symbol,
        venue=venue,
        state=state,
        reason=reason,
        event_ns=_time(obj),
        receive_ns=receive_ns,
    )


_PARSERS = {"q": _quote, "t": _trade, "x": _break, "s": _status}


def _parse_object(obj: Any, venue: str, receive_ns: int) -> Event:
    if not isinstance(obj, dict):
        raise _Bad("json: not an object")
    kind = _field(obj, "T")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise _Bad(f"json: unknown message type '{kind}'", "T")
    return parser(obj, venue, receive_ns)


def _malformed(bad: _Bad, raw: bytes, venue: str, index: int | None) -> Malformed:
    detail: dict[str, Any] = {}
    if bad.field is not None:
        detail["field"] = bad.field
    if index is not None:
        detail["index"] = index
    return Malformed(reason=bad.reason, raw=raw, venue=venue, detail=detail)


def parse_line(raw: bytes, venue: str, receive_ns: int) -> list[Event | Malformed]:
    """One line of the feed -> its events; never raises on bad input."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [Malformed("json: invalid JSON", raw, venue, {"error": str(exc)})]
    if not isinstance(data, list):
        try:
            return [_parse_object(data, venue, receive_ns)]
        except _Bad as bad:
            return [_malformed(bad, raw, venue, None)]
    out: list[Event | Malformed] = []
    for index, element in enumerate(data):
        try:
            out.append(_parse_object(element, venue, receive_ns))
        except _Bad as bad:
            out.append(_malformed(bad, orjson.dumps(element), venue, index))
    return out


# ---------------------------------------------------------------- encoding


def _price_text(value: Decimal) -> str:
    # format 'f' never produces exponents (str(Decimal) would for e.g. 1E+2).
    return format(value.quantize(PRICE_PLACES), "f")


def _exchange(venue: str) -> str:
    return EXCHANGE_CODES.get(venue.lower(), venue[:1].upper())


def to_object(event: Event) -> dict[str, Any]:
    """The feed's JSON object for a quote, trade, break or status."""
    if isinstance(event, Quote):
        x = _exchange(event.venue)
        return {
            "T": "q",
            "S": event.symbol,
            "bx": x,
            "bp": _price_text(event.bid_price),
            "bs": event.bid_size,
            "ax": x,
            "ap": _price_text(event.ask_price),
            "as": event.ask_size,
            "t": format_time(event.event_ns),
        }
    if isinstance(event, Trade):
        return {
            "T": "t",
            "S": event.symbol,
            "i": event.trade_id,
            "x": _exchange(event.venue),
            "p": _price_text(event.price),
            "s": event.size,
            "t": format_time(event.event_ns),
            "c": list(event.conditions),
        }
    if isinstance(event, TradeBreak):
        return {
            "T": "x",
            "S": event.symbol,
            "i": event.trade_id,
            "x": _exchange(event.venue),
            "p": _price_text(event.price),
            "s": event.size,
            "t": format_time(event.event_ns),
        }
    if isinstance(event, Status):
        return {
            "T": "s",
            "S": event.symbol,
            "sc": _STATUS_LETTERS[event.state],
            "sm": event.reason,
            "t": format_time(event.event_ns),
        }
    raise TypeError(f"the JSON feed has no message for {type(event).__name__}")


def encode_event(event: Event) -> bytes:
    """One feed line (no newline). Raises TypeError for kinds the feed lacks."""
    return orjson.dumps(to_object(event))


# ---------------------------------------------------------------- recordings


def iter_lines(data: bytes) -> Iterator[bytes]:
    """The non-blank lines of a recording, without their line endings."""
    for line in data.splitlines():
        if line.strip():
            yield line


_TIME_KEY = b'"t":"'
_SYMBOL_KEY = b'"S":"'


def _string_after(raw: bytes, key: bytes) -> bytes | None:
    """The string value of the first `key` in raw, by byte search (no JSON decode).

    Inside a JSON string a quote is always escaped, so `"t":"` can only match a key.
    """
    start = raw.find(key)
    if start < 0:
        return None
    start += len(key)
    end = raw.find(b'"', start)
    return None if end < 0 else raw[start:end]


def line_event_time(raw: bytes) -> int | None:
    """The event time of a line (its first message's), for replay pacing; None if none."""
    text = _string_after(raw, _TIME_KEY)
    if text is None:
        return _decoded_time(raw)  # e.g. an encoder that puts spaces after ':'
    try:
        return parse_time(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _decoded_time(raw: bytes) -> int | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    first = data[0] if isinstance(data, list) and data else data
    value = first.get("t") if isinstance(first, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def line_symbol(raw: bytes) -> str | None:
    """The symbol of a line, for Kafka keys; None if absent or if a batch mixes symbols."""
    if raw.count(_SYMBOL_KEY) == 1:
        text = _string_after(raw, _SYMBOL_KEY)
        try:
            return text.decode("ascii") if text else None
        except UnicodeDecodeError:
            return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    items = data if isinstance(data, list) else [data]
    symbols = {item.get("S") for item in items if isinstance(item, dict)}
    if len(symbols) != 1:
        return None
    symbol = symbols.pop()
    return symbol if isinstance(symbol, str) and symbol else None
