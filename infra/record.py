"""Record a live feed into the same file format that `tapeflow replay` reads.

Sources: a Kafka raw topic (what feed handlers publish), or UDP datagrams
carrying IEX-TP segments (the way IEX multicasts TOPS).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from infra.recording import RecordingWriter


def record_kafka(
    topic: str, out: Path, bootstrap: str, *, duration_s: float, from_beginning: bool
) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"tapeflow-record-{time.time_ns()}",
            "enable.auto.commit": "false",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    parts = [
        TopicPartition(topic, p, OFFSET_BEGINNING) if from_beginning else TopicPartition(topic, p)
        for p in meta.partitions
    ]
    consumer.assign(parts)
    deadline = time.monotonic() + duration_s
    count = 0
    with RecordingWriter(out) as writer:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None and msg.value():
                    writer.write(msg.value())
                    count += 1
    consumer.close()
    return count


def record_udp(host: str, port: int, out: Path, *, duration_s: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(0.2)
    deadline = time.monotonic() + duration_s
    count = 0
    with RecordingWriter(out) as writer:
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65535)
            except TimeoutError:
                continue
            writer.write(data)
            count += 1
    sock.close()
    return count
