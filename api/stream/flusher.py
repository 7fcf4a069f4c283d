"""When each stream session sends its next message: one set of timers per hub.

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
from typing import Protocol


class Sendable(Protocol):
    def flush(self, slot: int) -> None: ...


NOW = -1  # the slot of a session due at once


class Flusher:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._now: list[Sendable] = []
        self._slots: dict[int, list[Sendable]] = {}  # millisecond of loop time -> sessions

    def schedule(self, session: Sendable, at: float) -> int:
        """Flush `session` at loop time `at` (at once if that has passed); the slot it
        got, so that a later schedule can tell this one is stale."""
        if at <= self.loop.time():
            if not self._now:
                self.loop.call_soon(self._flush_now)
            self._now.append(session)
            return NOW
        slot = math.ceil(at * 1000)
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = []
            self.loop.call_at(slot / 1000, self._flush_slot, slot)
        bucket.append(session)
        return slot

    def _flush_now(self) -> None:
        due, self._now = self._now, []
        for session in due:
            session.flush(NOW)

    def _flush_slot(self, slot: int) -> None:
        for session in self._slots.pop(slot):
            session.flush(slot)
