"""Garbage collection for long-running processes: the stream edge, the API, the flows.

Reference counting frees nearly everything these processes allocate; the cyclic
collector only finds the rare cycle. With CPython's default thresholds (a young
collection every 700 net container allocations) the stream edge at 1,000 clients ran
~40 young collections a second and a full one every few seconds, each full one
walking every live object (sessions, sockets, the app) with the event loop stopped:
0.18 s of every second in the collector by wall clock on the saturated machine. With
these settings it ran none during the benchmark (bench/MEASUREMENTS.md, "WebSocket stream"). The
quotes flow's process, untuned, stopped 61 ms for one full collection in a 20 s run of
that benchmark; tuned, it collected nothing.
"""

from __future__ import annotations

import gc

# A young collection every 50,000 net allocations (default 700), a middle one every 20
# young ones, a full one every 100 middle ones (defaults 10 and 10).
THRESHOLDS = (50_000, 20, 100)


def tune_for_server() -> None:
    """Keep what startup built out of every later scan, and collect far less often.
    Once per process: every hub start calls it (one per event loop, several in tests),
    and a full collection of a large process is not free."""
    if gc.get_threshold() == THRESHOLDS:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
