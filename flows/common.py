"""What every flow shares: the Kafka source, deadletter messages, recovery."""

from __future__ import annotations

from pathlib import Path

from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.recovery import RecoveryConfig, init_db_dir
from confluent_kafka import OFFSET_BEGINNING

from infra.settings import Settings
from schemas.marketdata import Malformed

SNAPSHOT_INTERVAL_S = 2.0


def source(
    settings: Settings, topics: list[str], group: str, *, max_wait_ms: int = 5, min_bytes: int = 1
) -> KafkaSource:
    """A Kafka source whose offsets live in Bytewax recovery snapshots, not the group.

    max_wait_ms/min_bytes let the broker hold a fetch until it is worth it: the
    candles flow uses that to get large batches (few ClickHouse parts) without
    buffering in the sink, where a crash after a snapshot would lose items.
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


def sink(settings: Settings) -> KafkaSink:
    return KafkaSink(
        [settings.bootstrap],
        topic=None,
        add_config={"linger.ms": "2", "enable.idempotence": "true", "compression.type": "lz4"},
    )


def deadletter_message(bad: Malformed, topic: str) -> KafkaSinkMessage:
    """The raw bytes untouched as the value; why, and from where, in headers."""
    return KafkaSinkMessage(
        key=bad.venue.encode() or None,
        value=bad.raw,
        topic=topic,
        headers=[("reason", bad.reason.encode()), ("venue", bad.venue.encode())],
    )


def recovery(settings: Settings, flow_name: str, partitions: int = 1) -> RecoveryConfig:
    """Recovery partitions under the home folder, created on first use."""
    path: Path = settings.home.resolve() / "recovery" / flow_name
    if not path.exists() or not any(path.iterdir()):
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, partitions)
    return RecoveryConfig(path)
