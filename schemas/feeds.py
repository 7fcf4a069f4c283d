"""One entry point for every venue's wire format: sniff, then parse."""

from __future__ import annotations

from schemas import iex_tops, json_feed
from schemas.marketdata import Event, Malformed

IEX_TP_VERSION = 0x01


def parse_raw(raw: bytes, venue: str, receive_ns: int) -> list[Event | Malformed]:
    """Parse one raw Kafka message of any supported format.

    JSON lines start with '{' or '[' (after optional whitespace); IEX-TP
    segments start with their version byte. Anything else is malformed.
    """
    if not raw:
        return [Malformed("empty message", raw, venue)]
    first = raw.lstrip()[:1]
    if first in (b"{", b"["):
        return json_feed.parse_line(raw, venue, receive_ns)
    if raw[0] == IEX_TP_VERSION:
        return iex_tops.parse_segment(raw, venue, receive_ns)
    return [Malformed(f"unknown wire format (first byte 0x{raw[0]:02x})", raw, venue)]
