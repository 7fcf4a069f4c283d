"""Kafka topic names and their creation; the names say what each topic carries.

An optional namespace prefixes every name, so several pipelines (tests, demos)
can share one broker without reading each other's data.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, NewTopic

from infra.settings import Settings


@dataclass(frozen=True, slots=True)
class Topics:
    namespace: str = ""

    def raw(self, venue: str) -> str:
        return f"{self.namespace}md.raw.{venue}"

    def venue_of(self, topic: str) -> str:
        return topic.removeprefix(f"{self.namespace}md.raw.")

    @property
    def quotes(self) -> str:
        return f"{self.namespace}md.quotes"

    @property
    def trades(self) -> str:
        return f"{self.namespace}md.trades"

    @property
    def status(self) -> str:
        return f"{self.namespace}md.status"

    @property
    def deadletter(self) -> str:
        return f"{self.namespace}md.deadletter"

    @property
    def orders(self) -> str:
        """Orders, cancels and replaces from the ledger's outbox, keyed by symbol."""
        return f"{self.namespace}oms.orders"

    @property
    def executions(self) -> str:
        """Answers and fills from the execution side, keyed by account."""
        return f"{self.namespace}oms.executions"

    @property
    def alerts(self) -> str:
        """Price alert definitions (each create, change, cancel) from the outbox, keyed by
        symbol: what the alerts flow evaluates with the market data (flows/alerts.py)."""
        return f"{self.namespace}alerts.definitions"

    @property
    def venue_reports(self) -> str:
        """The simulated venues' own execution reports, keyed by symbol; kept for good
        (see VENUE_REPORTS_CONFIG): what reconciliation checks the ledger against."""
        return f"{self.namespace}venues.executions"


# venues.executions: the venues' record, never deleted; stamped with the broker's time, so
# offsets_for_times finds a day's first report (a report is written after its execution).
VENUE_REPORTS_CONFIG = {"retention.ms": "-1", "message.timestamp.type": "LogAppendTime"}


def topics_of(settings: Settings) -> Topics:
    return Topics(settings.namespace)


def all_topics(settings: Settings) -> list[str]:
    t = topics_of(settings)
    return [
        *(t.raw(v) for v in settings.venue_list),
        t.quotes,
        t.trades,
        t.status,
        t.deadletter,
        t.orders,
        t.executions,
        t.venue_reports,
        t.alerts,
    ]


def ensure_topics(settings: Settings, wanted: list[str] | None = None) -> None:
    """Create missing topics; Bytewax's Kafka source needs them to exist before it starts."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    wanted = wanted or all_topics(settings)
    existing = set(admin.list_topics(timeout=10).topics)
    reports = topics_of(settings).venue_reports
    missing = [
        NewTopic(
            t,
            num_partitions=settings.partitions,
            replication_factor=1,
            config=VENUE_REPORTS_CONFIG if t == reports else {},
        )
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


def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers an existing topic has (it may predate the setting)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    if meta.error is not None:
        raise RuntimeError(f"topic {topic}: {meta.error}")
    return sorted(meta.partitions)
