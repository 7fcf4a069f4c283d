"""The local services really work: `up` is idempotent and each one serves a client.

Shares the session's services (tests/conftest.py runs `up`); never calls `down`.
"""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from infra.services import ServiceStatus, status, up
from infra.settings import Settings, get_settings

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="module")
def running(settings: Settings) -> list[ServiceStatus]:
    return up(settings)


def test_up_is_idempotent(settings: Settings, running: list[ServiceStatus]) -> None:
    again = up(settings)
    assert [(s.name, s.pid) for s in again] == [(s.name, s.pid) for s in running]
    assert all(s.healthy for s in again), again


def test_status_reports_healthy(settings: Settings, running: list[ServiceStatus]) -> None:
    current = status(settings)
    assert {s.name for s in current} == {"kafka", "redis", "postgres"}
    assert all(s.healthy for s in current), current


def test_kafka_round_trip(settings: Settings, running: list[ServiceStatus]) -> None:
    topic = f"test.services.{uuid.uuid4().hex}"
    # Created up front: relying on auto-creation makes the first produce retry for a while.
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(timeout=30)

    producer = Producer({"bootstrap.servers": settings.bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(10) == 0

    # subscribe() (not assign()) so the group coordinator and __consumer_offsets,
    # which need replication factor 1 on a single node, are exercised too.
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"test-services-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
        assert msg is not None, "no message within 30 s"
        assert msg.error() is None, msg.error()
        assert (msg.key(), msg.value()) == (b"k", b"hello")
    finally:
        consumer.close()
        admin.delete_topics([topic])


def test_redis_set_get(settings: Settings, running: list[ServiceStatus]) -> None:
    client = redis.Redis.from_url(settings.redis)
    key = f"test:services:{uuid.uuid4().hex}"
    try:
        assert client.set(key, "v", ex=60)
        assert client.get(key) == b"v"
    finally:
        client.delete(key)
        client.close()


def test_postgres_table(settings: Settings, running: list[ServiceStatus]) -> None:
    table = sql.Identifier(f"test_services_{uuid.uuid4().hex}")
    with psycopg.connect(settings.postgres, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create table {} (id int primary key, amount numeric(18, 4))").format(table)
        )
        try:
            conn.execute(sql.SQL("insert into {} values (1, 12.3456)").format(table))
            row = conn.execute(sql.SQL("select amount from {}").format(table)).fetchone()
            assert row is not None and str(row[0]) == "12.3456"
        finally:
            conn.execute(sql.SQL("drop table {}").format(table))
