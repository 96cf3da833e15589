"""Helpers for tests that read what landed in a topic."""

from __future__ import annotations

import threading
import uuid

from confluent_kafka import Consumer, KafkaError, Message


def read_topic(
    bootstrap: str, topic: str, isolation: str = "read_committed", expect: int = 0
) -> list[Message]:
    """Every record of a topic from the start, until all partitions are drained and at least `expect`
    records arrived (or 10 s pass without any record)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    drained: set[int] = set()
    partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    idle_polls = 0
    try:
        while idle_polls < 20 and not (len(drained) >= partitions and len(records) >= expect):
            msg = consumer.poll(0.5)
            if msg is None:
                idle_polls += 1
                continue
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                drained.add(msg.partition() or 0)
                continue
            idle_polls = 0
            records.append(msg)
    finally:
        consumer.close()
    return records


class Owner:
    """A group membership listener (bridge.kafka.membership) that notes whether it owns anything."""

    def __init__(self) -> None:
        self.owned = threading.Event()

    def gained(self, connections: list[str]) -> None:
        self.owned.set()

    def revoked(self, connections: list[str]) -> None:
        self.owned.clear()

    def lost(self, connections: list[str]) -> None:
        self.owned.clear()
