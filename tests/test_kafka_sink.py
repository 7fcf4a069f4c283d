"""BatchKafkaSink on the real broker, run by Bytewax: when a flow's messages reach Kafka."""

from __future__ import annotations

import time
import uuid

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from flows.common import batch_sink
from infra.settings import Settings

pytestmark = pytest.mark.services


def test_a_flows_first_message_is_not_held_back_by_the_producers_start(services: Settings):
    """The first answer of a flow that has run idle, as the execution flow's first fill
    after a start is: Kafka has it at once. An idempotent producer made only when that
    first item came (Bytewax builds a sink part then) held it ~500 ms while it got its
    producer id; the order-to-fill benchmark's first fills were that much late."""
    topic = f"t{uuid.uuid4().hex[:8]}.sink.first"
    admin = AdminClient({"bootstrap.servers": services.bootstrap})
    # The broker's own clock stamps each record as it is appended.
    new = NewTopic(topic, 1, 1, config={"message.timestamp.type": "LogAppendTime"})
    admin.create_topics([new])[topic].result(timeout=30)
    sink = batch_sink(services)
    # Its own producer: another test's, already started, would hide the wait.
    sink.config = {**sink.config, "client.id": f"first-{uuid.uuid4().hex[:8]}"}

    def first_answer_later(_: int) -> tuple[str, list]:
        time.sleep(1.5)  # the flow idles as it would before the first order
        sent_ns = time.time_ns()
        return ("AAPL", [(topic, b"AAPL", str(sent_ns).encode(), None)])

    flow = Dataflow("sink_first_message")
    items = op.input("in", flow, TestingSource([1]))
    op.output("out", op.map("answer", items, first_answer_later), sink)
    run_main(flow)

    consumer = Consumer(
        {"bootstrap.servers": services.bootstrap, "group.id": "t", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        msgs = [m for m in consumer.consume(10, timeout=10) if m.error() is None]
    finally:
        consumer.close()
        admin.delete_topics([topic])
    assert len(msgs) == 1
    appended_ms = msgs[0].timestamp()[1]
    held_ms = appended_ms - int(msgs[0].value()) / 1e6
    assert held_ms < 250, f"the first message reached Kafka {held_ms:.0f} ms after its produce"
