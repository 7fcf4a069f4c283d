"""bench.hops: each hop is measured over the orders that have both of its ends."""

from __future__ import annotations

from bench.hops import Stamps, table

MS = 1_000_000


def test_each_hop_is_the_difference_of_its_two_stamps() -> None:
    stamps = {
        str(i): Stamps(
            created=1 * MS,  # 0 means "no stamp"
            ack=6 * MS,
            on_orders=8 * MS,
            on_executions=(18 + i) * MS,
            recorded=(41 + i) * MS,
            fill=(101 + i) * MS,
        )
        for i in range(101)
    }
    stamps["lost"] = Stamps(ack=6 * MS, fill=90 * MS)  # no pipeline stamps: left out
    rows = {line.split()[0]: line.split()[1:] for line in table(stamps)[1:]}
    assert rows["placement"] == ["101", "5.0", "5.0", "5.0", "5.0"]
    assert rows["relay"] == ["101", "2.0", "2.0", "2.0", "2.0"]
    # 10 + i ms for i in 0..100: p50 60, p90 100, p99 109, max 110
    assert rows["execution"] == ["101", "60.0", "100.0", "109.0", "110.0"]
    assert rows["to"] == ["ledger", "101", "23.0", "23.0", "23.0", "23.0"]
    assert rows["ledger+stream"] == ["101", "60.0", "60.0", "60.0", "60.0"]
