"""The server side of one WebSocket connection, below ASGI: to close a client that stopped reading.

ASGI's websocket.send and websocket.close wait until the transport is writable, so a
client that stops reading can never be sent its close frame that way, and closing
the transport waits for buffered data to drain, which never happens either. With
uvicorn's websockets-sansio protocol (what Tapeflow runs; uvicorn is pinned) the
protocol object is the bound `receive` callable's owner: `force_close` queues the
close frame behind whatever is buffered (a client that reads again gets everything,
then the close code) and aborts the TCP connection if it is not closed in time.
With any other server it falls back to an ordinary close.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.websockets import WebSocket
from websockets.protocol import State


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final, uncompressed WebSocket text frame (RFC 6455 5.2), as a
    server sends one."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class Peer:
    def __init__(self, ws: WebSocket) -> None:
        proto: Any = getattr(getattr(ws, "_receive", None), "__self__", None)
        ok = all(hasattr(proto, a) for a in ("conn", "transport", "close_sent", "writable"))
        self._proto = proto if ok else None

    @property
    def forcible(self) -> bool:
        return self._proto is not None

    def writable(self) -> bool:
        return self._proto is None or self._proto.writable.is_set()

    def send_now(self, text: bytes) -> bool:
        """Write a text message (UTF-8 bytes) straight to the protocol, if it is open and
        writable: what uvicorn's ASGI send does, without its awaits, the ASGI message
        and a str round trip per message. False:
        use the ASGI path (which waits for the buffer to drain).

        With no extension negotiated and nothing else queued, the frame is built here
        rather than by the websockets protocol object, whose Frame and serialize were
        a fifth of this call's time at 1,000 connections (py-spy)."""
        proto = self._proto
        if (
            proto is None
            or proto.close_sent
            or getattr(proto, "disconnected", False)
            or proto.transport is None
            or proto.transport.is_closing()
            or not proto.writable.is_set()
        ):
            return False
        conn = proto.conn
        if (
            conn.state is State.OPEN
            and not conn.extensions
            and not conn.writes
            and not conn.expect_continuation_frame
        ):
            proto.transport.write(text_frame(text))
            return True
        try:
            conn.send_text(text)
        except Exception:  # the protocol is closing: the ASGI path will say so
            return False
        proto.transport.write(b"".join(conn.data_to_send()))
        return True

    def force_close(self, code: int, reason: str, last: list[bytes], grace_s: float) -> bool:
        """Queue the text messages `last`, then close(code), without waiting; abort after
        grace_s. False when this server's protocol is not one it knows."""
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            return False
        if proto.close_sent:
            return True
        with contextlib.suppress(Exception):  # the protocol may already be closing
            for text in last:
                proto.conn.send_text(text)
            proto.conn.send_close(code, reason)
            proto.transport.write(b"".join(proto.conn.data_to_send()))
        proto.close_sent = True
        if getattr(proto, "read_paused", False):
            proto.read_paused = False
            proto.transport.resume_reading()  # to read the client's close reply
        # uvicorn closes the transport when the client's close reply arrives, if a close
        # timer is set; ours aborts when no reply comes.
        proto.close_timer = asyncio.get_running_loop().call_later(grace_s, proto.transport.abort)
        return True

    def abort(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abort()
