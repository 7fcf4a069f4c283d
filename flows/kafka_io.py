"""Kafka at the flows' edges, shaped for throughput and recovery.

RawKafkaSource: one partition of a topic per source partition, like Bytewax's own
KafkaSource, but it never blocks the worker (an empty poll asks Bytewax to come
back in a millisecond instead of waiting in librdkafka, which with many idle
partitions adds up to milliseconds per loop) and yields plain (topic, key, value)
tuples. Its resume state is the next offset, kept in Bytewax recovery snapshots.

BatchKafkaSink: items are lists of messages; it produces without waiting and
flushes only when Bytewax snapshots the epoch, so every message is acknowledged
by Kafka before the source offsets that produced it are committed to recovery,
without an acks=all round trip in the hot path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zlib import crc32

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

RawMessage = tuple[str, bytes | None, bytes]
# (topic, key, value, headers)
OutMessage = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]
IDLE = timedelta(milliseconds=2)
SINK_PARTS = 8


class _SourcePart(StatefulSourcePartition[RawMessage, int]):
    def __init__(self, config: dict[str, str], topic: str, partition: int, offset: int) -> None:
        self.consumer = Consumer(config)
        self.consumer.assign([TopicPartition(topic, partition, offset)])
        self.topic, self.next_offset, self.batch_size = topic, offset, 5000
        self.awake: datetime | None = None

    def next_batch(self) -> list[RawMessage]:
        msgs = self.consumer.consume(self.batch_size, 0)
        out: list[RawMessage] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"kafka error on {self.topic}: {err}")
            out.append((self.topic, m.key(), m.value()))
            self.next_offset = m.offset() + 1
        self.awake = None if out else datetime.now(UTC) + IDLE
        return out

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> int:
        return self.next_offset

    def close(self) -> None:
        self.consumer.close()


class RawKafkaSource(FixedPartitionedSource[RawMessage, int]):
    def __init__(self, bootstrap: str, topics: list[str], config: dict[str, str]) -> None:
        self.topics = topics
        self.config = {
            "bootstrap.servers": bootstrap,
            "enable.auto.commit": "false",
            "enable.partition.eof": "false",
            **config,
        }

    def list_parts(self) -> list[str]:
        consumer = Consumer(self.config)
        try:
            meta = consumer.list_topics(timeout=10).topics
            parts = []
            for topic in self.topics:
                if topic not in meta or meta[topic].error is not None:
                    raise RuntimeError(f"topic {topic} does not exist; run `tapeflow up`")
                parts += [f"{p}-{topic}" for p in meta[topic].partitions]
            return parts
        finally:
            consumer.close()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SourcePart:
        partition, topic = for_part.split("-", 1)
        offset = OFFSET_BEGINNING if resume_state is None else resume_state
        return _SourcePart(self.config, topic, int(partition), offset)


class _SinkPart(StatefulSinkPartition[list[OutMessage], None]):
    def __init__(self, config: dict[str, str]) -> None:
        self.producer = Producer(config)

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
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()


class BatchKafkaSink(FixedPartitionedSink[list[OutMessage], None]):
    """Items are (routing key, list of messages); any worker may own any part."""

    def __init__(self, config: dict[str, str]) -> None:
        self.config = config

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(SINK_PARTS)]

    def part_fn(self, item_key: str) -> int:
        return crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SinkPart:
        return _SinkPart(self.config)
