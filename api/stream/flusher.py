"""When each stream session sends its next message: one set of timers per process.

A writer task per connection woke twice per message (the push, then the rest of the
50 ms interval), and at 1,000 connections those task switches were a fifth of the
stream process's CPU. Here a session due now joins a list that one `call_soon`
callback sends, so a Redis read fanned out to many sessions is written in one pass,
and a session due later joins the bucket of its millisecond: one `call_at` timer per
bucket, whatever the number of sessions in it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol


class Sendable(Protocol):
    def flush(self, slot: int) -> None: ...


NOW = -1  # the slot of a session due at once


class Flusher:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._now: list[tuple[Sendable, int]] = []
        self._slots: dict[int, list[tuple[Sendable, int]]] = {}

    def schedule(self, session: Sendable, at: float) -> int:
        """Flush `session` at loop time `at` (at once if that has passed); the slot it
        got, so that a later schedule can tell this one is stale."""
        if at <= self.loop.time():
            if not self._now:
                self.loop.call_soon(self._run, self._now_batch)
            self._now.append((session, NOW))
            return NOW
        slot = math.ceil(at * 1000)
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = []
            self.loop.call_at(slot / 1000, self._run, lambda: self._slots.pop(slot))
        bucket.append((session, slot))
        return slot

    def _now_batch(self) -> list[tuple[Sendable, int]]:
        batch, self._now = self._now, []
        return batch

    @staticmethod
    def _run(take: Callable[[], list[tuple[Sendable, int]]]) -> None:
        for session, slot in take():
            session.flush(slot)


_FLUSHERS: dict[asyncio.AbstractEventLoop, Flusher] = {}


def flusher() -> Flusher:
    """The running loop's flusher (tests run several loops, one after the other)."""
    loop = asyncio.get_running_loop()
    found = _FLUSHERS.get(loop)
    if found is None:
        for old in [lp for lp in _FLUSHERS if lp.is_closed()]:
            del _FLUSHERS[old]
        found = _FLUSHERS[loop] = Flusher(loop)
    return found
