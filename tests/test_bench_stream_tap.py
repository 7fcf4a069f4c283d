"""bench.stream --tap: each feed quote's send matched to its PUBLISH by (symbol, event time)."""

from __future__ import annotations

import numpy as np

from bench.stream_feed import Feed
from bench.stream_run import publish_latencies_ms


def test_published_quotes_after_the_warmup_are_timed_from_their_own_send() -> None:
    feed = Feed(rate=4, seconds=2, symbols=2, warmup_s=0.5, base_ns=10**18)
    sent = np.array([1_000_000_000 + k * 250_000_000 for k in range(feed.total)], dtype=np.int64)

    def key(k: int) -> tuple[str, int]:
        return feed.symbol(k), feed.base_ns + k * feed.step

    published = {
        key(0): (int(sent[0]) + 1_000_000, 0),  # warm-up: left out
        key(2): (int(sent[2]) + 7_000_000, 0),
        key(5): (int(sent[5]) + 3_000_000, 0),
        # quote 3 conflated away (never published); 4, 6, 7 too
        (feed.symbol(4), feed.base_ns + 4 * feed.step + 1): (int(sent[4]), 0),  # another event
    }
    assert publish_latencies_ms(feed, sent, published).tolist() == [3.0, 7.0]
