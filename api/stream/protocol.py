"""The wire protocol of WS /v1/stream: client actions in, typed events out.

Client -> server: one JSON object per WebSocket message, with an "action".
Server -> client: one JSON array of events per WebSocket text message; every
event is an object whose "T" says its type and whose "seq" is its position in
this connection's stream (1, 2, 3, ...). README.md ("Streaming") is the spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

Kind = Literal["quotes", "trades", "bars", "statuses"]
KINDS: Final[tuple[Kind, ...]] = ("quotes", "trades", "bars", "statuses")
# Redis pub/sub channel prefix of each kind (channel = f"{prefix}:{SYMBOL}").
CHANNEL_PREFIX: Final[dict[Kind, str]] = {
    "quotes": "quotes",
    "trades": "trades",
    "bars": "bars",
    "statuses": "status",
}
KIND_OF_PREFIX: Final[dict[bytes, Kind]] = {
    prefix.encode(): kind for kind, prefix in CHANNEL_PREFIX.items()
}
WILDCARD: Final = "*"
SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9.\-]{0,10}$")


class Close:
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    TOO_BIG = 1009  # a client message over max_message_bytes
    INTERNAL = 1011
    UNAUTHORIZED = 4001  # no, bad or revoked token; no auth in time; action before auth
    SLOW_CONSUMER = 4008  # stayed too far behind the stream
    TOO_MANY_CONNECTIONS = 4029  # the key already has its maximum of open streams


class ProtocolError(Exception):
    """A client mistake, answered with {"T":"error","code":...,"msg":...}."""

    def __init__(self, code: str, msg: str, close: int | None = None) -> None:
        super().__init__(msg)
        self.code, self.msg, self.close = code, msg, close


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class Ping:
    id: Any = None


@dataclass(frozen=True, slots=True)
class Change:
    """subscribe / unsubscribe: per kind, symbols and/or the wildcard; and the account's
    own events: order events (trade_updates) and alert firings (alerts), each True or
    None when not mentioned, with `since` the last account seq the client has (subscribe
    only; one numbering for both)."""

    subscribe: bool
    symbols: dict[Kind, frozenset[str]] = field(default_factory=dict)
    trade_updates: bool | None = None
    since: int | None = None
    alerts: bool | None = None

    def account_kinds(self) -> list[str]:
        """The account event kinds this change names."""
        return [k for k in ACCOUNT_KINDS if getattr(self, k)]


Action = Auth | Ping | Change


def parse_action(raw: str | bytes) -> Action:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("invalid_message", "a message must be a JSON object")
    action = msg.get("action")
    if action == "auth":
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("invalid_message", "auth needs a non-empty string 'token'")
        return Auth(token)
    if action == "ping":
        return Ping(msg.get("id"))
    if action in ("subscribe", "unsubscribe"):
        return Change(action == "subscribe", _kinds(msg), *_account_fields(msg, action))
    if not isinstance(action, str):
        raise ProtocolError("invalid_message", "a message needs a string 'action'")
    raise ProtocolError(
        "unknown_action",
        f"unknown action {action[:40]!r}; one of auth, subscribe, unsubscribe, ping",
    )


# The account's own events (api/stream/account.py): order events and alert firings.
ACCOUNT_KINDS: Final = ("trade_updates", "alerts")
ACCOUNT_FIELDS: Final = ("trade_updates", "alerts", "since")


def _account_fields(
    msg: dict[str, Any], action: str
) -> tuple[bool | None, int | None, bool | None]:
    """(trade_updates, since, alerts) of a subscribe / unsubscribe; the account is always
    the connection's own (its API key's), so a message cannot name one."""
    orders, alerts = msg.get("trade_updates"), msg.get("alerts")
    for name, wanted in (("trade_updates", orders), ("alerts", alerts)):
        if wanted is not None and not isinstance(wanted, bool):
            raise ProtocolError("invalid_message", f"'{name}' must be true or false")
    since = msg.get("since")
    if since is None:
        return (orders or None), None, (alerts or None)
    if action != "subscribe" or not (orders is True or alerts is True):
        raise ProtocolError(
            "invalid_message", "'since' goes with a subscribe to trade_updates or alerts"
        )
    if isinstance(since, bool) or not isinstance(since, int) or not 0 <= since < 2**63:
        raise ProtocolError("invalid_since", "'since' must be an account seq (an integer >= 0)")
    return (orders or None), since, (alerts or None)


def _kinds(msg: dict[str, Any]) -> dict[Kind, frozenset[str]]:
    unknown = sorted(k for k in msg if k != "action" and k not in KINDS and k not in ACCOUNT_FIELDS)
    if unknown:
        raise ProtocolError(
            "invalid_message",
            f"unknown field(s) {', '.join(unknown)[:80]}; kinds are {', '.join(KINDS)}"
            f" (and {', '.join(ACCOUNT_FIELDS)})",
        )
    out: dict[Kind, frozenset[str]] = {}
    for kind in KINDS:
        if kind not in msg:
            continue
        value = msg[kind]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ProtocolError("invalid_message", f"'{kind}' must be an array of strings")
        out[kind] = frozenset(_symbol(s) for s in value)
    return out


def _symbol(raw: str) -> str:
    if raw == WILDCARD:
        return raw
    symbol = raw.strip().upper()
    if not SYMBOL_RE.match(symbol):
        raise ProtocolError(
            "invalid_symbol", f"{raw[:20]!r} is not a ticker symbol (A-Z, 0-9, '.', '-') or '*'"
        )
    return symbol


# ---------------------------------------------------------------- events out
#
# An event is held as (head, tail): its JSON with the "seq" member cut out, so the
# hub encodes a market-data message once and each connection only splices its own
# sequence number in: head + ',"seq":N' + tail. head is '{"T":"<type>"'.

Piece = tuple[bytes, bytes]


def split(payload: bytes) -> Piece:
    """Cut an encoded event after its "T" member (which every payload starts with)."""
    if not payload.startswith(b'{"T":"'):
        raise ValueError(f"not an event: {payload[:30]!r}")
    end = payload.index(b'"', 6) + 1
    return payload[:end], payload[end:]


def event(type_: str, **fields: Any) -> Piece:
    return split(orjson.dumps({"T": type_, **fields}))


def error(code: str, msg: str) -> Piece:
    return event("error", code=code, msg=msg)


def with_seq(piece: Piece, seq: int) -> bytes:
    return b'%b,"seq":%d%b' % (piece[0], seq, piece[1])
