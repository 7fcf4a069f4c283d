"""Replay into Kafka, record back out: the recording comes back byte for byte."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest

from infra.record import record_kafka, record_udp
from infra.recording import read_recording
from infra.replay import paced, replay
from infra.settings import Settings
from infra.topics import ensure_topics
from tests.conftest import SAMPLE

pytestmark = pytest.mark.services


@pytest.mark.parametrize("name", ["iex.tops", "nasdaq.jsonl"])
def test_recording_replayed_and_recorded_is_identical(services: Settings, tmp_path, name):
    topic = f"t{uuid.uuid4().hex[:8]}.md.raw.x"
    ensure_topics(services, [topic])
    source = SAMPLE / name
    stats = replay(source, "x", services.bootstrap, speed=None, topic=topic)
    out = tmp_path / name
    # Segments are keyed by venue (one partition, in order); JSON lines by symbol, so
    # only each symbol's order is kept: compare as multisets, and in order for segments.
    n = record_kafka(topic, out, services.bootstrap, duration_s=4, from_beginning=True)
    assert n == stats.messages
    original = [r.payload for r in read_recording(source)]
    recorded = [r.payload for r in read_recording(out)]
    if name.endswith(".tops"):
        assert recorded == original
    else:
        assert sorted(recorded) == sorted(original)


def test_udp_datagrams_are_recorded_as_segments(tmp_path):
    segments = [r.payload for r in read_recording(SAMPLE / "iex.tops")][:200]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "live.tops"
    recorder = threading.Thread(
        target=record_udp, args=("127.0.0.1", port, out), kwargs={"duration_s": 2.5}
    )
    recorder.start()
    time.sleep(0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for seg in segments:
            s.sendto(seg, ("127.0.0.1", port))
            time.sleep(0.001)  # loopback UDP drops what a full socket buffer cannot take
    recorder.join()
    assert [r.payload for r in read_recording(out)] == segments


def test_pacing_follows_the_recorded_clock_divided_by_speed():
    records = list(read_recording(SAMPLE / "nasdaq.jsonl"))[:400]
    span_s = (records[-1].event_ns - records[0].event_ns) / 1e9
    speed = span_s / 0.5  # half a second of wall time
    started = time.monotonic()
    assert len(list(paced(records, speed))) == len(records)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed <= 1.5, elapsed
