"""Kafka at the flows' edges, shaped for throughput and recovery.

RawKafkaSource: unlike Bytewax's own KafkaSource it never blocks the worker (an
empty poll asks Bytewax to come back in a few milliseconds instead of waiting in
librdkafka, which with many idle partitions added up to milliseconds per loop),
runs a few consumers rather than one per topic-partition, and yields plain
(topic, key, value) tuples. Its resume state is the next offset of each
topic-partition, kept in Bytewax recovery snapshots.

BatchKafkaSink: items are lists of messages; it produces without waiting, through one
producer per process whatever the number of parts, and flushes only when Bytewax
snapshots the epoch, so every message is acknowledged
by Kafka before the source offsets that produced it are committed to recovery,
without an acks=all round trip in the hot path.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zlib import crc32

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

RawMessage = tuple[str, bytes | None, bytes]
# (topic, key, value, headers)
OutMessage = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]
IDLE = timedelta(milliseconds=2)  # how soon an empty poll is retried, by default
SINK_PARTS = 8


class _SourcePart(StatefulSourcePartition[RawMessage, dict[str, int]]):
    """One consumer for a group of topic-partitions; state maps "topic:partition" to the
    next offset."""

    def __init__(
        self, config: dict[str, str], offsets: dict[str, int], idle: timedelta = IDLE
    ) -> None:
        self.consumer = Consumer(config)
        self.idle = idle
        self.offsets = dict(offsets)
        self.consumer.assign(
            [
                TopicPartition(tp.rsplit(":", 1)[0], int(tp.rsplit(":", 1)[1]), off)
                for tp, off in self.offsets.items()
            ]
        )
        self.batch_size = 5000
        self.awake: datetime | None = None

    def next_batch(self) -> list[RawMessage]:
        out: list[RawMessage] = []
        for m in self.consumer.consume(self.batch_size, 0):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"kafka error on {m.topic()}: {err}")
            topic = m.topic()
            out.append((topic, m.key(), m.value()))
            self.offsets[f"{topic}:{m.partition()}"] = m.offset() + 1
        self.awake = None if out else datetime.now(UTC) + self.idle
        return out

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> dict[str, int]:
        return dict(self.offsets)

    def close(self) -> None:
        self.consumer.close()


class RawKafkaSource(FixedPartitionedSource[RawMessage, dict[str, int]]):
    """Topic-partitions dealt into `groups` source partitions, one consumer each.

    Bytewax's own source runs a consumer per topic-partition; with a dozen of them per
    flow the broker spent most of its CPU answering their fetches. Groups keep a few
    consumers while still spreading over up to `groups` workers.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        config: dict[str, str],
        groups: int = 2,
        idle: timedelta = IDLE,
    ) -> None:
        self.topics, self.groups, self.idle = topics, groups, idle
        self.config = {
            "bootstrap.servers": bootstrap,
            "enable.auto.commit": "false",
            "enable.partition.eof": "false",
            **config,
        }

    def _topic_partitions(self) -> list[str]:
        consumer = Consumer(self.config)
        try:
            meta = consumer.list_topics(timeout=10).topics
            found = []
            for topic in self.topics:
                if topic not in meta or meta[topic].error is not None:
                    raise RuntimeError(f"topic {topic} does not exist; run `tapeflow up`")
                found += [f"{topic}:{p}" for p in sorted(meta[topic].partitions)]
            return found
        finally:
            consumer.close()

    def list_parts(self) -> list[str]:
        return [f"group-{i}" for i in range(self.groups)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, int] | None
    ) -> _SourcePart:
        index = int(for_part.removeprefix("group-"))
        mine = self._topic_partitions()[index :: self.groups]
        state = resume_state or {}
        offsets = {tp: state.get(tp, OFFSET_BEGINNING) for tp in mine}
        return _SourcePart(self.config, offsets, self.idle)


_PRODUCERS: dict[tuple[tuple[str, str], ...], Producer] = {}
_PRODUCERS_LOCK = threading.Lock()


def shared_producer(config: dict[str, str]) -> Producer:
    """One producer per configuration and process, whichever sink parts it serves.

    A producer per part multiplied the produce requests (each part lingered and sent its
    own small batches), and produce requests were most of the broker's CPU.
    """
    key = tuple(sorted(config.items()))
    with _PRODUCERS_LOCK:
        producer = _PRODUCERS.get(key)
        if producer is None:
            producer = _PRODUCERS[key] = Producer(config)
        return producer


class _SinkPart(StatefulSinkPartition[list[OutMessage], None]):
    def __init__(self, config: dict[str, str]) -> None:
        self.producer = shared_producer(config)

    def write_batch(self, values: list[list[OutMessage]]) -> None:
        produce, poll = self.producer.produce, self.producer.poll
        for batch in values:
            for topic, key, value, headers in batch:
                while True:
                    try:
                        produce(topic, value=value, key=key, headers=headers)
                        break
                    except BufferError:  # local queue full: let deliveries drain
                        poll(0.05)
        poll(0)

    def snapshot(self) -> None:
        # Called as the epoch closes: nothing may count as done before Kafka has it.
        # (The producer is shared, so this also flushes other parts' messages: harmless.)
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()


class BatchKafkaSink(FixedPartitionedSink[list[OutMessage], None]):
    """Items are (routing key, list of messages); any worker may own any part."""

    def __init__(self, config: dict[str, str]) -> None:
        self.config = config

    def list_parts(self) -> list[str]:
        # Bytewax asks for the parts as the flow starts but builds a part only when its
        # first item comes. An idempotent producer holds its first message ~0.5 s while
        # it gets its producer id, so the process's producer is made here: that wait
        # falls at start, not on the first answers (fills arrived 0.5 s late).
        shared_producer(self.config)
        return [str(i) for i in range(SINK_PARTS)]

    def part_fn(self, item_key: str) -> int:
        return crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SinkPart:
        return _SinkPart(self.config)
