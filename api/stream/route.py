"""WS /v1/stream: authenticate, take a connection slot, then serve actions until the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from api.stream.account import AccountFeed
from api.stream.auth import Principal, authenticate, bearer_token
from api.stream.hub import Hub, hub_of
from api.stream.protocol import (
    Auth,
    Change,
    Close,
    Ping,
    ProtocolError,
    error,
    event,
    parse_action,
)
from api.stream.session import Session
from api.stream.subscriptions import Subscriptions

router = APIRouter(tags=["stream"])
log = logging.getLogger("tapeflow.stream")


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    """Live quotes, trades, 1-minute bars and trading status (protocol: README "Streaming")."""
    hub = await hub_of(ws.app)
    await Connection(ws, hub).run()


class Connection:
    def __init__(self, ws: WebSocket, hub: Hub) -> None:
        self.ws, self.hub, self.cfg = ws, hub, hub.cfg
        self.session = Session(ws, hub.cfg)
        self.subs = Subscriptions(hub.cfg.max_symbols)
        self.id = uuid.uuid4().hex
        self.principal: Principal | None = None
        self.slot: str | None = None
        # trade_updates and alerts (the account's events), made on first subscribe
        self.feed: AccountFeed | None = None

    async def run(self) -> None:
        await self.ws.accept()
        self.session.start(self.hub.flusher)
        try:
            if await self._authenticate() and await self._take_slot():
                await self._serve()
        except ProtocolError as exc:
            await self._fail(exc)
        except Exception:
            log.exception("stream connection failed")
            await self.session.close(Close.INTERNAL, "internal error", error("internal", "bug"))
        finally:
            await self._cleanup()

    # ------------------------------------------------------------ phases

    async def _authenticate(self) -> bool:
        token = bearer_token(self.ws.headers.get("authorization"))
        if token is None:
            try:
                raw = await asyncio.wait_for(self._receive(), self.cfg.auth_timeout_s)
            except TimeoutError:
                raise ProtocolError(
                    "auth_timeout",
                    f'no {{"action":"auth"}} within {self.cfg.auth_timeout_s:g} s',
                    Close.UNAUTHORIZED,
                ) from None
            if raw is None:
                return False
            action = parse_action(raw)
            if not isinstance(action, Auth):
                raise ProtocolError(
                    "not_authenticated",
                    'authenticate first: {"action":"auth","token":"<key_id>.<secret>"}',
                    Close.UNAUTHORIZED,
                )
            token = action.token
        principal = await authenticate(token) if token else None
        if principal is None:
            raise ProtocolError("unauthorized", "invalid or revoked API key", Close.UNAUTHORIZED)
        self.principal = principal
        return True

    async def _take_slot(self) -> bool:
        assert self.principal is not None
        key = str(self.principal.key_id)
        limit = self.cfg.max_connections_per_key
        if not await self.hub.slots.acquire(key, self.id, limit):
            raise ProtocolError(
                "too_many_connections",
                f"this API key already has {limit} open streams",
                Close.TOO_MANY_CONNECTIONS,
            )
        self.slot = key
        self.hub.register(self.session, key, self.id)
        self.session.push_control(
            event(
                "authenticated",
                user_id=str(self.principal.user_id),
                key_id=key,
                batch_ms=self.cfg.batch_ms,
                max_symbols=self.cfg.max_symbols,
            )
        )
        return True

    async def _serve(self) -> None:
        while not self.session.closed:
            raw = await self._receive()
            if raw is None:
                return
            try:
                await self._handle(parse_action(raw))
            except ProtocolError as exc:
                if exc.close is not None:
                    raise
                self.session.push_control(error(exc.code, exc.msg))

    async def _handle(self, action: Auth | Ping | Change) -> None:
        if isinstance(action, Ping):
            extra = {} if action.id is None else {"id": action.id}
            self.session.push_control(event("pong", **extra))
        elif isinstance(action, Auth):
            raise ProtocolError("already_authenticated", "this connection is authenticated")
        else:
            await self._change(action)

    async def _change(self, change: Change) -> None:
        session = self.session
        since = change.since
        if since is not None:  # checked first: a refused change changes nothing
            head = await self._feed().head()
            if since > head:
                raise ProtocolError(
                    "invalid_since", f"since {since} is beyond the account's seq {head}"
                )
        elif change.subscribe and any(not getattr(self.subs, k) for k in change.account_kinds()):
            # Without since: every event after the account's seq now, before the
            # subscription is answered (what commits meanwhile is read from the log).
            since = await self._feed().head()
        delta = self.subs.apply(change)  # may refuse (too many symbols), changing nothing
        for kind, symbols in delta.removed.items():
            if kind not in self.subs.wild:  # else "*" still covers them
                session.purge(kind, symbols)
        for kind in delta.wild_removed:
            session.purge(kind, None)
        snap = {k: s for k, s in delta.added.items() if k in ("quotes", "statuses")}
        wild_snap = [k for k in delta.wild_added if k in ("quotes", "statuses")]
        for kind, symbols in snap.items():
            session.awaiting_snapshot |= {(kind, s) for s in symbols}
        waits = self.hub.apply(session, delta)
        start = self._account_events(change, waits, since)
        session.push_control(self.subs.message())  # before any event of a new symbol
        await self.hub.confirmed(waits)
        if start is not None and self.feed is not None and self.feed.active:
            self.feed.start(start)  # the log after `start`, then live events
        for kind, symbols in snap.items():
            await self.hub.snapshot(session, kind, symbols)
        for kind in wild_snap:
            known = {s.decode() for s in await self.hub.redis.smembers("symbols")}
            known -= {s for k, s in session.awaiting_snapshot if k == kind}
            session.awaiting_snapshot |= {(kind, s) for s in known}
            await self.hub.snapshot(session, kind, sorted(known))

    def _feed(self) -> AccountFeed:
        if self.feed is None:
            assert self.principal is not None
            dsn = self.hub.settings.postgres  # the pool opens in the feed's threads
            self.feed = AccountFeed(self.session, self.principal.account_id, dsn)
        return self.feed

    def _account_events(
        self, change: Change, waits: list[asyncio.Future[None]], since: int | None
    ) -> int | None:
        """Subscribe or unsubscribe the account's order events and/or alert firings; the
        seq to (re)start the feed from once Redis confirms (a first subscribe, or one with
        `since` below where the feed is), else None."""
        kinds = change.account_kinds()
        if not kinds:
            return None
        feed = self._feed()
        if change.subscribe:
            first = not feed.active
            for kind in kinds:
                setattr(self.subs, kind, True)
            if first:
                feed.open(kinds, since)
                waits += self.hub.watch_account(feed)
                return since
            if since is None:
                return None  # already subscribed, no since: nothing changes
            return feed.want(kinds, since, replay=change.since is not None)
        for kind in kinds:
            if getattr(self.subs, kind):
                setattr(self.subs, kind, False)
                feed.unwant(kind)
                self.session.purge(kind, None)
        if feed.active and not feed.wants:
            self.hub.unwatch_account(feed)
            feed.stop()
        return None

    # ------------------------------------------------------------ plumbing

    async def _receive(self) -> str | bytes | None:
        """The next client message; None when the client has gone."""
        msg = await self.ws.receive()
        if msg["type"] == "websocket.disconnect":
            return None
        data: str | bytes | None = msg.get("text")
        if data is None:
            data = msg.get("bytes") or b""
        limit = self.cfg.max_message_bytes
        size = len(data) if isinstance(data, bytes) or len(data) * 4 <= limit else 0
        if size == 0 and isinstance(data, str):
            size = len(data.encode())
        if size > limit:
            raise ProtocolError(
                "message_too_big", f"{size} bytes; messages are at most {limit}", Close.TOO_BIG
            )
        return data

    async def _fail(self, exc: ProtocolError) -> None:
        reason = exc.code.replace("_", " ")
        await self.session.close(exc.close or Close.INTERNAL, reason, error(exc.code, exc.msg))

    async def _cleanup(self) -> None:
        self.hub.unregister(self.session)
        self.hub.apply(self.session, self.subs.clear())
        if self.feed is not None:
            self.hub.unwatch_account(self.feed)
            self.feed.stop()
        await self.session.stop()
        if self.slot is not None:
            with contextlib.suppress(Exception):
                await self.hub.slots.release(self.slot, self.id)
        if not self.session.peer.forcible and self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 1.0)
