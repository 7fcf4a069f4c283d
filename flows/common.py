"""What every flow shares: the Kafka source, deadletter messages, recovery."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir

from flows.kafka_io import BatchKafkaSink, OutMessage, RawKafkaSource
from infra.settings import Settings
from schemas.marketdata import Malformed

SNAPSHOT_INTERVAL_S = 2.0


def deadletter_out(bad: Malformed, topic: str) -> OutMessage:
    """The raw bytes untouched as the value; why, and from where, in headers."""
    headers = [("reason", bad.reason.encode()), ("venue", bad.venue.encode())]
    return (topic, bad.venue.encode() or None, bad.raw, headers)


def raw_source(
    settings: Settings,
    topics: list[str],
    *,
    max_wait_ms: int = 100,
    min_bytes: int = 1,
    config: dict[str, str] | None = None,
    idle_ms: float = 2,
) -> RawKafkaSource:
    """(topic, key, value) tuples; offsets live in Bytewax recovery snapshots.

    With fetch.min.bytes 1 the broker answers as soon as data arrives, so a long
    max wait costs no latency; it only stops idle consumers from polling it hot.
    `config` adds or overrides consumer settings (e.g. isolation.level for topics
    written in Kafka transactions). After an empty poll the worker looks again in
    `idle_ms`: each look wakes the whole dataflow (~40 µs of CPU, 0.02 cores at 2 ms),
    so a flow that batches on purpose (candles) looks less often.
    """
    return RawKafkaSource(
        settings.bootstrap,
        topics,
        {
            "fetch.wait.max.ms": str(max_wait_ms),
            "fetch.min.bytes": str(min_bytes),
            "group.id": "tapeflow",
            **(config or {}),
        },
        idle=timedelta(milliseconds=idle_ms),
    )


def batch_sink(settings: Settings, linger_ms: int = 5) -> BatchKafkaSink:
    return BatchKafkaSink(
        {
            "bootstrap.servers": settings.bootstrap,
            # A few ms of batching costs little latency and saves the broker most of its
            # CPU (see infra.replay.MARKET_DATA_LINGER_MS); 5 ms by default, where
            # fills wait on it.
            "linger.ms": str(linger_ms),
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
