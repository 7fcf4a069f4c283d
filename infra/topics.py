"""Kafka topic names and their creation; the names say what each topic carries."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewTopic

from infra.settings import Settings

QUOTES = "md.quotes"
TRADES = "md.trades"
STATUS = "md.status"
DEADLETTER = "md.deadletter"
PARTITIONS = 4


def raw_topic(venue: str) -> str:
    return f"md.raw.{venue}"


def all_topics(settings: Settings) -> list[str]:
    return [*(raw_topic(v) for v in settings.venue_list), QUOTES, TRADES, STATUS, DEADLETTER]


def ensure_topics(settings: Settings, topics: list[str] | None = None) -> None:
    """Create missing topics; Bytewax's Kafka source needs them to exist before it starts."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    wanted = topics or all_topics(settings)
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [
        NewTopic(t, num_partitions=PARTITIONS, replication_factor=1)
        for t in wanted
        if t not in existing
    ]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=10).items():
        try:
            future.result()
        except Exception as exc:  # a concurrent creator already made it
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"could not create topic {topic}: {exc}") from exc
