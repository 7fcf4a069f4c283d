"""Per API process: one Redis pub/sub connection, fanned out to every stream session.

Subscriptions are per symbol and refcounted: the first session that wants
quotes of AAPL makes the hub SUBSCRIBE quotes:AAPL, the last one to leave
UNSUBSCRIBEs. A kind subscribed with "*" by any session is a PSUBSCRIBE
(quotes:*, trades:*, bars:*, status:*) while that lasts. So a process reads
only what its clients want (the whole market's quotes are far more than one
Python process can parse), and any number of processes can serve behind a
load balancer, each with one Redis connection.

While a kind's pattern is subscribed Redis sends a message of a subscribed
channel twice (message, then pmessage); the hub then delivers from the
pmessage only. Which form counts flips exactly where the (p)subscribe
confirmation sits in the reply stream, so nothing is lost or doubled.

Quotes: the stream carries the consolidated quote (venue "NBBO"); venue quotes
on the same channels are skipped without parsing. Payloads are never parsed on
the fan-out path: each is cut once (protocol.split) and every session splices
in its own sequence number.

Account events (trade_updates): the channel account:{account_id} is subscribed while
any connection of that account wants it (refcounted the same way); its messages go to
the account's feeds (api/stream/account.py), which order them by account seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterable

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI

from api.stream.account import AccountFeed
from api.stream.clock import MarketClock
from api.stream.config import StreamSettings, get_stream_settings
from api.stream.flusher import Flusher
from api.stream.protocol import (
    CHANNEL_PREFIX,
    KIND_OF_PREFIX,
    KINDS,
    Kind,
    Piece,
    event,
    split,
)
from api.stream.pubsub import PubSubProtocol, Reply, connect
from api.stream.session import Session
from api.stream.slots import Slots
from api.stream.subscriptions import Delta
from infra.gc_tuning import tune_for_server
from infra.settings import Settings, get_settings

log = logging.getLogger("tapeflow.stream")
NBBO_MARK = b'"venue":"NBBO"'
SUBSCRIBE_TIMEOUT_S = 5.0


def channel(kind: Kind, symbol: str) -> bytes:
    return f"{CHANNEL_PREFIX[kind]}:{symbol}".encode()


def pattern(kind: Kind) -> bytes:
    return f"{CHANNEL_PREFIX[kind]}:*".encode()


class Hub:
    def __init__(self, settings: Settings, cfg: StreamSettings) -> None:
        self.settings, self.cfg = settings, cfg
        self.redis = aioredis.Redis.from_url(settings.redis)
        self.slots = Slots(self.redis, cfg.slot_ttl_s)
        self.clock = MarketClock(cfg.market_clock)
        self.stale_ns = int(settings.stale_after_s * 1e9)
        self.by_channel: dict[bytes, set[Session]] = {}
        self.wild: dict[Kind, set[Session]] = {k: set() for k in KINDS}
        self.pattern_active: set[Kind] = set()
        # Per channel or pattern, the (un)subscribe commands not yet confirmed, in order.
        self._ops: dict[bytes, deque[asyncio.Future[None]]] = {}
        self.sessions: dict[Session, tuple[str, str]] = {}  # -> (key_id, connection id)
        self.account_feeds: dict[bytes, set[AccountFeed]] = {}  # account:{id} -> feeds
        self.last_quote_ns: dict[str, int] = {}  # wall time the latest NBBO arrived
        self.stale: set[str] = set()
        self.feed_ns: int | None = None
        self._last_nbbo: bytes | None = None
        self._pubsub: PubSubProtocol | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self.name = f"tapeflow-stream-{os.getpid()}-{id(self):x}"  # in Redis CLIENT LIST
        self.flusher = Flusher(asyncio.get_running_loop())  # when each session sends

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        tune_for_server()  # the fan-out allocates per quote and session: see gc_tuning
        await asyncio.to_thread(self.clock.warm_up)
        self._pubsub = await self._connect()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._ticker()), loop.create_task(self._refresher())]

    async def _connect(self) -> PubSubProtocol:
        return await connect(self.settings.redis, self._on_reply, self._on_lost, self.name)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._pubsub is not None:
            self._pubsub.on_lost = lambda exc: None
            self._pubsub.close()
        await self.redis.aclose()

    def _on_lost(self, exc: Exception | None) -> None:
        log.warning("redis pub/sub connection lost (%r); reconnecting", exc)
        self._pubsub = None
        self.pattern_active.clear()
        for ops in self._ops.values():
            for fut in ops:
                if not fut.done():
                    fut.set_result(None)
        self._ops.clear()
        self._tasks.append(asyncio.get_running_loop().create_task(self._reconnect()))

    async def _reconnect(self) -> None:
        delay = 0.1
        while self._pubsub is None:
            try:
                self._pubsub = await self._connect()
            except OSError as exc:
                log.warning("redis pub/sub reconnect failed: %r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        waits = self._subscribe(list(self.by_channel), [k for k in KINDS if self.wild[k]])
        waits += self._command("SUBSCRIBE", list(self.account_feeds))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), SUBSCRIBE_TIMEOUT_S)
        for feeds in self.account_feeds.values():
            for feed in feeds:
                feed.resync()  # what was published meanwhile is in the log
        log.info("redis pub/sub reconnected; resyncing %d sessions", len(self.sessions))
        for session in list(self.sessions):
            session.push_control(event("resync", reason="upstream_reconnected"))
        for session, quotes in self._quote_interest().items():
            for symbol in quotes:
                session.awaiting_snapshot.add(("quotes", symbol))
            await self.snapshot(session, "quotes", quotes)
        for session in list(self.wild["quotes"]):
            known = {s.decode() for s in await self.redis.smembers("symbols")}
            session.awaiting_snapshot |= {("quotes", s) for s in known}
            await self.snapshot(session, "quotes", sorted(known))

    def _quote_interest(self) -> dict[Session, set[str]]:
        out: dict[Session, set[str]] = {}
        for ch, sessions in self.by_channel.items():
            prefix, _, sym = ch.partition(b":")
            if KIND_OF_PREFIX.get(prefix) == "quotes":
                for s in sessions:
                    out.setdefault(s, set()).add(sym.decode())
        return out

    # ------------------------------------------------------------ sessions

    def register(self, session: Session, key_id: str, conn_id: str) -> None:
        self.sessions[session] = (key_id, conn_id)

    def unregister(self, session: Session) -> None:
        self.sessions.pop(session, None)

    def apply(self, session: Session, delta: Delta) -> list[asyncio.Future[None]]:
        """Change a session's fan-out now; returns what to await for Redis to confirm."""
        to_sub: list[bytes] = []
        to_unsub: list[bytes] = []
        for kind, symbols in delta.removed.items():
            for s in symbols:
                ch = channel(kind, s)
                held = self.by_channel.get(ch)
                if held is not None:
                    held.discard(session)
                    if not held:
                        del self.by_channel[ch]
                        to_unsub.append(ch)
        for kind in delta.wild_removed:
            self.wild[kind].discard(session)
        waits: list[asyncio.Future[None]] = []
        for kind, symbols in delta.added.items():
            for s in symbols:
                ch = channel(kind, s)
                held = self.by_channel.get(ch)
                if held is None:
                    self.by_channel[ch] = {session}
                    to_sub.append(ch)
                else:
                    held.add(session)
                    if self._ops.get(ch):
                        waits.append(self._ops[ch][-1])
        new_patterns = []
        for kind in delta.wild_added:
            if not self.wild[kind]:
                new_patterns.append(kind)
            elif self._ops.get(pattern(kind)):
                waits.append(self._ops[pattern(kind)][-1])
            self.wild[kind].add(session)
        gone_patterns = [k for k in delta.wild_removed if not self.wild[k]]
        # Subscribe before unsubscribing: a symbol moving under a new "*" is never uncovered.
        waits += self._subscribe(to_sub, new_patterns)
        self._unsubscribe(to_unsub, gone_patterns)
        return waits

    def watch_account(self, feed: AccountFeed) -> list[asyncio.Future[None]]:
        """Deliver the account's events to `feed`; returns what to await for Redis."""
        held = self.account_feeds.get(feed.channel)
        if held is None:
            self.account_feeds[feed.channel] = {feed}
            return self._command("SUBSCRIBE", [feed.channel])
        held.add(feed)
        ops = self._ops.get(feed.channel)
        return [ops[-1]] if ops else []

    def unwatch_account(self, feed: AccountFeed) -> None:
        held = self.account_feeds.get(feed.channel)
        if held is None or feed not in held:
            return
        held.discard(feed)
        if not held:
            del self.account_feeds[feed.channel]
            self._command("UNSUBSCRIBE", [feed.channel])

    def _command(self, verb: str, names: list[bytes]) -> list[asyncio.Future[None]]:
        if not names:
            return []
        loop = asyncio.get_running_loop()
        futs = []
        for name in names:
            fut: asyncio.Future[None] = loop.create_future()
            self._ops.setdefault(name, deque()).append(fut)
            futs.append(fut)
        if self._pubsub is not None:
            for i in range(0, len(names), 1000):
                self._pubsub.send(verb, *names[i : i + 1000])
        return futs

    def _subscribe(self, channels: list[bytes], kinds: list[Kind]) -> list[asyncio.Future[None]]:
        return self._command("SUBSCRIBE", channels) + self._command(
            "PSUBSCRIBE", [pattern(k) for k in kinds]
        )

    def _unsubscribe(self, channels: list[bytes], kinds: list[Kind]) -> None:
        self._command("UNSUBSCRIBE", channels)
        self._command("PUNSUBSCRIBE", [pattern(k) for k in kinds])

    async def confirmed(self, waits: list[asyncio.Future[None]]) -> None:
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), SUBSCRIBE_TIMEOUT_S)

    # ------------------------------------------------------------ snapshots

    async def snapshot(self, session: Session, kind: Kind, symbols: Iterable[str] | None) -> None:
        """Current quotes (NBBO) or statuses from Redis; None = every known symbol."""
        if symbols is None:
            symbols = sorted(s.decode() for s in await self.redis.smembers("symbols"))
        symbols = list(symbols)
        for i in range(0, len(symbols), 500):
            chunk = symbols[i : i + 500]
            pipe = self.redis.pipeline(transaction=False)
            for s in chunk:
                if kind == "quotes":
                    pipe.hget(f"quote:{s}", "NBBO")
                else:
                    pipe.hgetall(f"status:{s}")
            results = await pipe.execute()
            for symbol, raw in zip(chunk, results, strict=True):
                if (kind, symbol) not in session.awaiting_snapshot or session.closed:
                    continue  # a live event came first, or the client left / unsubscribed
                session.awaiting_snapshot.discard((kind, symbol))
                if kind == "quotes" and raw:
                    self._snapshot_quote(session, symbol, raw)
                elif kind == "statuses" and raw:
                    for field, value in sorted(raw.items()):
                        if not field.endswith(b":ns"):
                            session.push("statuses", symbol, split(value))

    def _snapshot_quote(self, session: Session, symbol: str, raw: bytes) -> None:
        session.push_quote(symbol, split(raw))
        receive_ns = int(orjson.loads(raw)["receive_ns"])
        if receive_ns > self.last_quote_ns.get(symbol, 0):
            self.last_quote_ns[symbol] = receive_ns
        last = self.last_quote_ns[symbol]
        if time.time_ns() - last <= self.stale_ns or not self.clock.is_open(self._feed_time()):
            return
        if symbol in self.stale:  # the others were told already
            session.push("quotes", symbol, self._stale_event(symbol, last))
        else:
            self._mark_stale(symbol, last)

    def _stale_event(self, symbol: str, last_ns: int) -> Piece:
        return event(
            "stale", symbol=symbol, last_update_ns=last_ns, after_s=self.settings.stale_after_s
        )

    # ------------------------------------------------------------ the reply stream

    def _on_reply(self, reply: Reply) -> None:
        if not isinstance(reply, list) or not reply:
            log.warning("unexpected reply on the pub/sub connection: %r", reply)
            return
        typ = reply[0]
        if typ == b"message":
            ch = reply[1]
            kind = KIND_OF_PREFIX.get(ch.partition(b":")[0])
            if kind is not None:
                if kind not in self.pattern_active:
                    self._dispatch(kind, ch, reply[2], False)
            elif ch in self.account_feeds:
                for feed in list(self.account_feeds[ch]):
                    feed.on_live(reply[2])
        elif typ == b"pmessage":
            ch = reply[2]
            kind = KIND_OF_PREFIX.get(ch.partition(b":")[0])
            if kind is not None:
                self._dispatch(kind, ch, reply[3], True)
        else:
            self._confirm(typ, reply[1])

    def _confirm(self, typ: bytes, name: bytes) -> None:
        if typ in (b"psubscribe", b"punsubscribe"):
            kind = KIND_OF_PREFIX.get(name.partition(b":")[0])
            if kind is not None:
                if typ == b"psubscribe":
                    self.pattern_active.add(kind)
                else:
                    self.pattern_active.discard(kind)
        ops = self._ops.get(name)
        if ops:
            fut = ops.popleft()
            if not fut.done():
                fut.set_result(None)
            if not ops:
                del self._ops[name]

    def _dispatch(self, kind: Kind, ch: bytes, data: bytes, via_pattern: bool) -> None:
        if kind == "quotes" and NBBO_MARK not in data:
            return
        targets = self.by_channel.get(ch)
        wild = self.wild[kind] if via_pattern else None
        symbol = ch[ch.index(b":") + 1 :].decode()
        if kind == "quotes":
            self.last_quote_ns[symbol] = time.time_ns()
            self._last_nbbo = data
            if self.stale:
                self.stale.discard(symbol)
        if not targets and not wild:
            return
        try:
            piece = split(data)
        except ValueError:
            log.warning("dropping a malformed payload on %r: %r", ch, data[:80])
            return
        if kind == "quotes":
            for group in (targets, wild):
                if group:
                    for s in group:
                        s.push_quote(symbol, piece)
        else:
            for group in (targets, wild):
                if group:
                    for s in group:
                        s.push(kind, symbol, piece)

    # ------------------------------------------------------------ timers

    def _feed_time(self) -> int | None:
        if self._last_nbbo is not None:
            with contextlib.suppress(Exception):
                ns = int(orjson.loads(self._last_nbbo)["event_ns"])
                self.feed_ns = max(self.feed_ns or 0, ns)
            self._last_nbbo = None
        return self.feed_ns

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.cfg.tick_s)
            try:
                self._check_stale()
                now = loop.time()
                for session in list(self.sessions):
                    if not session.closed and session.is_slow(now):
                        task = loop.create_task(session.close_slow())
                        self._closing.add(task)
                        task.add_done_callback(self._closing.discard)
            except Exception:
                log.exception("stream ticker failed")

    def _check_stale(self) -> None:
        if not self.clock.is_open(self._feed_time()):
            return
        now = time.time_ns()
        watched: Iterable[str]
        if self.wild["quotes"]:
            watched = list(self.last_quote_ns)
        else:
            watched = [ch[7:].decode() for ch in self.by_channel if ch.startswith(b"quotes:")]
        for symbol in watched:
            last = self.last_quote_ns.get(symbol)
            if last is None or symbol in self.stale or now - last <= self.stale_ns:
                continue
            self._mark_stale(symbol, last)

    def _mark_stale(self, symbol: str, last: int) -> None:
        self.stale.add(symbol)
        piece = self._stale_event(symbol, last)
        for group in (self.by_channel.get(channel("quotes", symbol)), self.wild["quotes"]):
            for s in group or ():
                s.push("quotes", symbol, piece)

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.slot_ttl_s / 3)
            try:
                await self.slots.refresh(list(self.sessions.values()))
            except Exception:
                log.exception("refreshing stream slots failed")


async def hub_of(app: FastAPI) -> Hub:
    """The app's hub, started on first use (one per process and event loop)."""
    starting: asyncio.Task[Hub] | None = getattr(app.state, "stream_hub", None)
    if starting is None or (starting.done() and starting.exception() is not None):
        starting = asyncio.get_running_loop().create_task(_start_hub(app))
        app.state.stream_hub = starting
    return await asyncio.shield(starting)


async def _start_hub(app: FastAPI) -> Hub:
    settings = getattr(app.state, "settings", None) or get_settings()
    hub = Hub(settings, getattr(app.state, "stream_settings", None) or get_stream_settings())
    await hub.start()
    return hub
