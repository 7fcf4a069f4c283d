"""One connection's outbound stream: pending events, conflation, sequence numbers, batching.

The hub pushes events synchronously (no awaits on the fan-out path); the hub's
Flusher sends them as one JSON array per WebSocket message, at most one message every
`batch_ms` (the first event after a quiet spell goes out at once, the rest wait for
the next slot). Control events (subscription, error, pong) flush at once. A message
is written straight to the socket; only when the client's buffer is full does a task
wait for it to drain (Peer.send_now), and nothing else is sent meanwhile.

- Quotes are conflated per symbol: a newer quote replaces the pending one of its
  symbol and takes its place at the end of the batch (so order stays by arrival).
- Everything else is kept in arrival order, at most `max_pending` events; past
  that the oldest are dropped, and the next message starts with a gap event
  {"T":"gap","from_seq":a,"to_seq":b,"dropped":n}: seqs a..b were those events.
- Sequence numbers are given when a message is built, so they have no holes but
  the ones a gap event covers.
- The session is slow when it has been dropping, or unable to write, for more
  than `slow_close_s`: it is then closed with 4008 (see Peer.force_close).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from starlette.websockets import WebSocket

from api.stream.config import StreamSettings
from api.stream.flusher import NOW, Flusher
from api.stream.peer import Peer
from api.stream.protocol import Close, Kind, Piece, error, event, with_seq

log = logging.getLogger("tapeflow.stream")


class Session:
    def __init__(self, ws: WebSocket, cfg: StreamSettings) -> None:
        self.ws, self.cfg = ws, cfg
        self.peer = Peer(ws)
        self.seq = 0
        self.dropped_total = 0
        self._quotes: dict[str, tuple[int, Piece]] = {}
        self._others: deque[tuple[int, Kind | None, str, Piece]] = deque()
        self._arrival = 0
        self._dropped = 0
        self._interval = cfg.batch_ms / 1000
        self._flusher: Flusher | None = None  # the hub's, from start()
        self._slot: int | None = None  # the Flusher slot a flush is due in, if any
        self._last = -1e9  # loop time of the last message
        self.overflow_since: float | None = None
        self.sending_since: float | None = None
        self.closed = False
        # (kind, symbol) whose snapshot from Redis is pending; a live event first wins.
        self.awaiting_snapshot: set[tuple[Kind, str]] = set()
        self._sending: asyncio.Task[None] | None = None  # waiting for the buffer to drain
        self._unsent: bytes | None = None

    # ------------------------------------------------------------ fed by the hub

    def push_quote(self, symbol: str, piece: Piece) -> None:
        self._arrival += 1
        quotes = self._quotes
        if symbol in quotes:
            del quotes[symbol]  # re-inserted at the end: batches stay in arrival order
        quotes[symbol] = (self._arrival, piece)
        if self.awaiting_snapshot:
            self.awaiting_snapshot.discard(("quotes", symbol))
        if self._slot is None:
            self._due(False)

    def push(self, kind: Kind | None, symbol: str, piece: Piece, *, urgent: bool = False) -> None:
        self._arrival += 1
        others = self._others
        others.append((self._arrival, kind, symbol, piece))
        if kind == "statuses" and self.awaiting_snapshot:  # (quotes: push_quote; stale: no)
            self.awaiting_snapshot.discard((kind, symbol))
        if len(others) > self.cfg.max_pending:
            others.popleft()
            self._dropped += 1
            self.dropped_total += 1
            if self.overflow_since is None:
                self.overflow_since = asyncio.get_running_loop().time()
        self._due(urgent or self.behind())

    def behind(self) -> bool:
        """Events other than quotes fill more than half the pending limit: send without
        waiting for the next slot, and let a catch-up read wait (AccountFeed)."""
        return len(self._others) > self.cfg.max_pending // 2

    def push_control(self, piece: Piece) -> None:
        self.push(None, "", piece, urgent=True)

    def purge(self, kind: Kind, symbols: set[str] | None) -> None:
        """Forget pending events of symbols (None: all) of a kind just unsubscribed."""
        if kind == "quotes":
            if symbols is None:
                self._quotes.clear()
            else:
                for s in symbols:
                    self._quotes.pop(s, None)
        kept = [
            e for e in self._others if e[1] != kind or (symbols is not None and e[2] not in symbols)
        ]
        if len(kept) != len(self._others):
            self._others = deque(kept)
        self.awaiting_snapshot = {
            (k, s)
            for k, s in self.awaiting_snapshot
            if k != kind or (symbols is not None and s not in symbols)
        }

    # ------------------------------------------------------------ building messages

    def take_batch(self) -> bytes | None:
        """Everything pending as one message, with sequence numbers; None if nothing."""
        quotes, others = self._quotes, self._others
        if not quotes and not others and not self._dropped:
            return None
        seq = self.seq
        parts: list[bytes] = []
        if self._dropped:
            first, seq = seq + 1, seq + self._dropped
            gap = event(
                "gap", from_seq=first, to_seq=seq, dropped=self._dropped, reason="slow_consumer"
            )
            seq += 1
            parts.append(with_seq(gap, seq))
            self._dropped = 0
        else:
            self.overflow_since = None  # a whole batch without drops: caught up
        if not others:
            for _, piece in quotes.values():
                seq += 1
                parts.append(with_seq(piece, seq))
        elif not quotes:
            for _, _, _, piece in others:
                seq += 1
                parts.append(with_seq(piece, seq))
        else:
            for _, piece in _merge(list(quotes.values()), others):
                seq += 1
                parts.append(with_seq(piece, seq))
        self.seq = seq
        quotes.clear()
        others.clear()
        return b"[" + b",".join(parts) + b"]"

    # ------------------------------------------------------------ sending

    def start(self, flusher: Flusher) -> None:
        self._flusher = flusher

    def _due(self, urgent: bool) -> None:
        """Something is pending: make sure a flush is scheduled, at once if urgent."""
        if self._flusher is None or self.closed or self._sending is not None:
            return  # not started, over, or a slow send that reschedules when done
        if urgent:
            if self._slot != NOW:
                self._slot = self._flusher.schedule(self, 0.0)
        elif self._slot is None:
            self._slot = self._flusher.schedule(self, self._last + self._interval)

    def flush(self, slot: int) -> None:
        """Send what is pending; called by the Flusher in the slot it was due in."""
        if slot != self._slot or self.closed or self._sending is not None:
            return  # superseded by an earlier (urgent) slot, or nothing to do now
        self._slot = None
        try:
            frame = self.take_batch()
            if frame is None:
                return
            self._last = asyncio.get_running_loop().time()
            if not self.peer.send_now(frame):
                self.sending_since = self._last
                self._unsent = frame  # until written: a cancelled send writes nothing
                self._sending = asyncio.get_running_loop().create_task(self._drain(frame))
        except Exception as exc:  # the client went away mid-send: the reader sees it too
            log.debug("stream send failed: %r", exc)
            self.closed = True

    async def _drain(self, frame: bytes) -> None:
        try:
            await self.ws.send_text(frame.decode())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("stream send failed: %r", exc)
            self.closed = True
            return
        self._unsent = None
        self.sending_since = None
        self._sending = None
        self._last = asyncio.get_running_loop().time()
        if self._quotes or self._others or self._dropped:
            self._due(self.behind())

    def is_slow(self, now: float) -> bool:
        limit = self.cfg.slow_close_s
        return (self.sending_since is not None and now - self.sending_since > limit) or (
            self.overflow_since is not None and now - self.overflow_since > limit
        )

    async def close(self, code: int, reason: str, err: Piece | None = None) -> None:
        """Send what is pending (and err), then close with code; never waits on a stuck client."""
        if self.closed:
            return
        self.closed = True
        blocked = self.sending_since is not None or not self.peer.writable()
        await self._cancel_send()
        if err is not None:
            self.push_control(err)
        # The frame a cancelled send never wrote, then everything pending: no seq is lost.
        last = [f for f in (self._unsent, self.take_batch()) if f is not None]
        self._unsent = None
        if self.peer.force_close(code, reason, last, grace_s=10.0):
            return
        with contextlib.suppress(Exception):
            if not blocked:
                for frame in last:
                    await asyncio.wait_for(self.ws.send_text(frame.decode()), 1.0)
            await asyncio.wait_for(self.ws.close(code, reason), 1.0)

    async def close_slow(self) -> None:
        log.info("closing a slow consumer (seq %d, dropped %d)", self.seq, self.dropped_total)
        await self.close(
            Close.SLOW_CONSUMER,
            "slow consumer",
            error("slow_consumer", f"more than {self.cfg.slow_close_s:g} s behind the stream"),
        )

    async def stop(self) -> None:
        """The connection is gone: stop writing."""
        self.closed = True
        await self._cancel_send()

    async def _cancel_send(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sending


def _merge(
    quotes: list[tuple[int, Piece]], others: deque[tuple[int, Kind | None, str, Piece]]
) -> list[tuple[int, Piece]]:
    out: list[tuple[int, Piece]] = []
    i = 0
    for arrival, _, _, piece in others:
        while i < len(quotes) and quotes[i][0] < arrival:
            out.append(quotes[i])
            i += 1
        out.append((arrival, piece))
    out.extend(quotes[i:])
    return out
