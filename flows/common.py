"""What every flow shares: the Kafka source, deadletter messages, recovery."""

from __future__ import annotations

from pathlib import Path

from bytewax.connectors.kafka import KafkaSource
from bytewax.recovery import RecoveryConfig, init_db_dir
from confluent_kafka import OFFSET_BEGINNING

from flows.kafka_io import BatchKafkaSink, OutMessage, RawKafkaSource
from infra.settings import Settings
from schemas.marketdata import Malformed

SNAPSHOT_INTERVAL_S = 2.0


def source(
    settings: Settings, topics: list[str], group: str, *, max_wait_ms: int = 100, min_bytes: int = 1
) -> KafkaSource:
    """A Kafka source whose offsets live in Bytewax recovery snapshots, not the group.

    max_wait_ms/min_bytes let the broker hold a fetch until it is worth it: the
    candles flow uses that to get large batches (few ClickHouse parts) without
    buffering in the sink, where a crash after a snapshot would lose items. With
    min_bytes 1 the broker answers as soon as any message arrives, so max_wait_ms
    adds no latency; it only says how often an idle consumer asks again (every 5 ms,
    times ~20 partition consumers, kept the broker busy with empty fetches).
    """
    return KafkaSource(
        [settings.bootstrap],
        topics,
        tail=True,
        starting_offset=OFFSET_BEGINNING,
        add_config={
            "group.id": group,
            "enable.auto.commit": "false",
            "fetch.wait.max.ms": str(max_wait_ms),
            "fetch.min.bytes": str(min_bytes),
        },
        batch_size=5000,
    )


def deadletter_out(bad: Malformed, topic: str) -> OutMessage:
    """The raw bytes untouched as the value; why, and from where, in headers."""
    headers = [("reason", bad.reason.encode()), ("venue", bad.venue.encode())]
    return (topic, bad.venue.encode() or None, bad.raw, headers)


def raw_source(
    settings: Settings, topics: list[str], *, max_wait_ms: int = 5, min_bytes: int = 1
) -> RawKafkaSource:
    """(topic, key, value) tuples; offsets live in Bytewax recovery snapshots."""
    return RawKafkaSource(
        settings.bootstrap,
        topics,
        {
            "fetch.wait.max.ms": str(max_wait_ms),
            "fetch.min.bytes": str(min_bytes),
            "group.id": "tapeflow",
        },
    )


def batch_sink(settings: Settings) -> BatchKafkaSink:
    return BatchKafkaSink(
        {
            "bootstrap.servers": settings.bootstrap,
            "linger.ms": "0",
            "enable.idempotence": "true",
            "compression.type": "lz4",
            "queue.buffering.max.messages": "1000000",
        }
    )


def recovery(settings: Settings, flow_name: str, partitions: int = 1) -> RecoveryConfig:
    """Recovery partitions under the home folder, created on first use."""
    path: Path = settings.home.resolve() / "recovery" / flow_name
    if not path.exists() or not any(path.iterdir()):
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, partitions)
    return RecoveryConfig(path)
