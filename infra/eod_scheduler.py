"""End of day inside `tapeflow run`: a thread that closes each trading day once it is over.

Every POLL_S seconds it reads the market clock (infra.market_view.clock_for: the wall,
or the feed's time during a replay) and runs infra.eod.run_eod for each day
schemas.eod.due_days names: every trading day whose 20:00 New York the clock has
passed, after the newest day already closed, at most CATCH_UP_DAYS back, once it has
been due for a poll. Days already
closed (by this process, another one, or `tapeflow eod`) are never run again; a run
that fails is logged and tried again at the next poll.

It runs in the process that owns chDB (the one serving the API, also with --split).
With a feed clock that stops before 20:00 (a replay that ends at the close), the day is
closed when the clock moves to a later day, or by `tapeflow eod --date`; with a feed clock
that has no feed time yet (it answers with the wall) nothing is due.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import date, datetime

from infra import db
from infra.eod import EodReport, done_days, run_eod
from infra.market_view import clock_for, clock_reading
from infra.settings import Settings
from schemas.eod import catch_up_window, due_days

log = logging.getLogger("tapeflow.eod")
POLL_S = 30.0
FIRST_DELAY_S = 10.0  # let the process start (flows, API) before the first look


class EodScheduler:
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], datetime] | None = None,
        poll_s: float = POLL_S,
        first_delay_s: float = FIRST_DELAY_S,
    ) -> None:
        self.settings = settings
        self.clock = clock or clock_for(settings)
        self.poll_s = poll_s
        self.first_delay_s = first_delay_s
        self.stop = threading.Event()
        self._seen: set[date] = set()  # due at the previous poll

    def due(self) -> list[date]:
        now, source = clock_reading(self.clock)
        if self.settings.clock == "feed" and source != "feed":
            return []  # no feed time yet: the wall would close a day the replay has not played
        window = catch_up_window(now)
        pool = db.pool(self.settings.postgres)
        return due_days(now, done_days(pool, window[0], window[-1]))

    def tick(self) -> list[EodReport]:
        """Close every day that is due now and was due at the previous poll too (the
        fills of a feed that just passed the day's end may still be on their way to the
        ledger: a poll's wait lets them land); the reports of the runs made."""
        due = self.due()
        out = []
        for day in due:
            if day in self._seen:
                log.info("EOD: %s is over, closing it", day)
                out.append(run_eod(self.settings, day, clock=self.clock))
        self._seen = set(due) - {r.day for r in out}
        return out

    def run(self) -> None:
        if self.stop.wait(self.first_delay_s):
            return
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("EOD failed; trying again in %.0f s", self.poll_s)
            if self.stop.wait(self.poll_s):
                return


def start_scheduler(settings: Settings, poll_s: float = POLL_S) -> EodScheduler:
    scheduler = EodScheduler(settings, poll_s=poll_s)
    threading.Thread(target=scheduler.run, name="eod", daemon=True).start()
    return scheduler


def main() -> None:
    """`python -m infra.eod_scheduler`: the scheduler alone, in the foreground (a stack
    whose API runs elsewhere, e.g. docker-compose with a ClickHouse server)."""
    from infra.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    EodScheduler(get_settings()).run()


if __name__ == "__main__":
    main()
