"""One connection's account events: order events (trade_updates) and alert firings
(alerts), in account seq order.

The ledger flow logs each order event in PostgreSQL (`account_events`, numbered 1, 2,
3 ... per account with no holes) and then PUBLISHes it to Redis `account:{id}`
(infra/account_events.py). The hub subscribes to that channel while any connection of
the account wants it, and hands each message to the account's feeds (`on_live`).

A feed keeps `last`, the account seq it has given the session, and so never sends an
event twice nor skips one:
- a live event with seq last + 1 goes out at once; one with seq <= last is dropped
  (already sent: read from the log, or delivered twice);
- a live event beyond last + 1 means events are missing (a publish that failed, the
  pub/sub connection lost for a while): it waits in `buffer` while the missing ones
  are read from the log. Every seq below a published one is committed already (the
  account's row lock orders the commits), so the log has them;
- subscribing with `since` = N first reads every event after N from the log (in pages,
  waiting for the connection to send them), holding live events back in `buffer`,
  then releases those beyond what it read. Without `since`, the feed starts after the
  account's latest seq when the Redis subscription was confirmed.
Events go out as {"T":"trade_update","seq":<connection seq>,"data":<the logged event>}
through the session like any other non-quote event: never conflated; dropped only by
a slow consumer's overflow, which a gap event reports.

Alert firings (infra/alerts.py) are in the same log and numbering, with event "alert";
they go out as {"T":"alert",...,"data":...} to a connection subscribed to `alerts`, and
order events only to one subscribed to `trade_updates`. One feed serves both kinds: it
reads the log once, in order, and `floor` keeps per kind the seq up to which that kind
was already sent (or predates its subscription), so subscribing one kind with `since`
replays only that kind's events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson

from api.stream.protocol import error
from infra import account_events, db

if TYPE_CHECKING:
    from api.stream.session import Session

log = logging.getLogger("tapeflow.stream")

KIND: Any = "trade_updates"  # the session's kind for these events (purged on unsubscribe)
ALERTS: Any = "alerts"  # alert firings: logged events whose "event" is "alert"
HEAD = b'{"T":"trade_update"'
HEADS = {KIND: HEAD, ALERTS: b'{"T":"alert"'}
PAGE = 500


def piece(payload: bytes, kind: str = KIND) -> tuple[bytes, bytes]:
    return HEADS[kind], b',"data":%b}' % payload


def kind_of(payload: bytes) -> str:
    """alerts for an alert firing, trade_updates for an order's event."""
    try:
        return ALERTS if orjson.loads(payload).get("event") == "alert" else KIND
    except (orjson.JSONDecodeError, AttributeError):
        return KIND


class AccountFeed:
    def __init__(self, session: Session, account_id: UUID, dsn: str) -> None:
        self.session, self.account_id, self.dsn = session, account_id, dsn
        self.channel = account_events.channel(account_id).encode()
        self.active = False
        self.last: int | None = None  # the last account seq given to the session
        self.wants: set[str] = set()  # trade_updates and/or alerts
        self.floor: dict[str, int] = {}  # per kind: its events up to this seq are not sent
        self.buffer: dict[int, bytes] = {}  # live events held while the log is read
        self.catching = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ control (the route)

    def open(self, kinds: list[str] | None = None, since: int | None = None) -> None:
        """Subscribed at the hub: hold live events until `start`."""
        self.active, self.catching = True, True
        self.wants = set(kinds or [KIND])
        self.floor = {k: since for k in self.wants if since is not None}

    def want(self, kinds: list[str], since: int, replay: bool) -> int | None:
        """More kinds (or `since` again) on an open feed: their events after `since`.
        Returns the seq to read the log from again (a replay below where the feed is),
        else None: the feed goes on, and the floor skips what the kinds should not get."""
        for k in kinds:
            self.wants.add(k)
            self.floor[k] = since
        if replay and (self.last is None or since < self.last):
            if self.last is not None:
                for k in self.wants - set(kinds):  # already sent up to last: not again
                    self.floor[k] = max(self.floor.get(k, 0), self.last)
            return since
        return None

    def unwant(self, kind: str) -> None:
        self.wants.discard(kind)
        self.floor.pop(kind, None)

    def start(self, since: int | None) -> None:
        """From `since` (None: from the account's latest seq), once Redis confirmed."""
        self._cancel()
        self.last = since
        self.catching = True
        self._task = asyncio.get_running_loop().create_task(self._catch_up())

    def resync(self) -> None:
        """Live messages may have been lost (the pub/sub connection came back): read the
        log from `last`."""
        if self.active and not self.catching and self.last is not None:
            self.start(self.last)

    def stop(self) -> None:
        self.active = False
        self._cancel()
        self.buffer.clear()
        self.last = None
        self.wants.clear()
        self.floor.clear()

    def _cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def head(self) -> int:
        """The account's latest seq (0 before its first event)."""
        return await asyncio.to_thread(self._head)

    # ------------------------------------------------------------ live (the hub)

    def on_live(self, data: bytes) -> None:
        if not self.active:
            return
        try:
            seq = int(orjson.loads(data)["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("dropping a malformed account event: %r", data[:80])
            return
        last = self.last
        if self.catching or last is None:
            if last is None or seq > last:
                self.buffer[seq] = data
            return
        if seq <= last:
            return
        if seq == last + 1:
            self._push(seq, data)
            return
        self.buffer[seq] = data  # a hole before it: read the log from last
        self.start(last)

    # ------------------------------------------------------------ the log

    def _push(self, seq: int, payload: bytes) -> None:
        # Urgent: out with the next write, not after the session's batch interval (50 ms
        # by default). An order's owner waits on its fill; the events of one ledger
        # commit arrive together and still go out as one message.
        kind = kind_of(payload)
        if kind in self.wants and seq > self.floor.get(kind, -1):
            self.session.push(kind, "", piece(payload, kind), urgent=True)
        self.last = seq

    async def _catch_up(self) -> None:
        try:
            while True:
                if self.last is None:
                    self.last = await self.head()
                else:
                    while True:
                        rows = await asyncio.to_thread(self._read, self.last)
                        for seq, payload in rows:
                            if seq > self.last:
                                self._push(seq, payload)
                        if len(rows) < PAGE:
                            break
                        await self._room()
                # Release the held live events that continue the sequence.
                for seq in sorted(self.buffer):
                    if seq <= self.last:
                        del self.buffer[seq]
                    elif seq == self.last + 1:
                        self._push(seq, self.buffer.pop(seq))
                    else:
                        break
                if not self.buffer:
                    self.catching = False
                    return
                # A hole below a held event: it is committed, so read the log again.
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("reading account events of %s failed", self.account_id)
            self.catching = False
            self.session.push_control(
                error("trade_updates_unavailable", f"reading the account's events failed: {exc}")
            )
            # Retry from `last` with the next live event (or a new subscribe).

    async def _room(self) -> None:
        """Wait while the session holds more than half its pending limit."""
        session = self.session
        while not session.closed and session.behind():
            await asyncio.sleep(session.cfg.batch_ms / 1000)

    def _head(self) -> int:
        with db.pool(self.dsn).connection() as conn:
            return account_events.head(conn, self.account_id) or 0

    def _read(self, after: int) -> list[tuple[int, bytes]]:
        with db.pool(self.dsn).connection() as conn:
            return account_events.read(conn, self.account_id, after, PAGE)
