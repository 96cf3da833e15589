"""Request/reply: send a command, then wait for its one result, matched by command id.

The client listens on the results topic (or its own reply topic) from the moment it is created, so a
result can never arrive before the client looks for it. Results of commands this client did not send
are ignored. One client serves any number of commands; it is not thread-safe (use one per thread).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from bridge.client.codecs import CommandEncoder, ResultDecoder
from bridge.client.commands import Command
from bridge.client.errors import ClientError, ResultTimeout
from bridge.client.results import CommandResult
from bridge.client.topics import Topics
from bridge.kafka.topics import TopicSpec, ensure_topics

REPLY_TOPIC_PARTITIONS = 3
# What a topic created a moment ago answers until its partition leaders are elected (not flagged retriable).
_NO_LEADER_YET = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


class CommandClient:
    """`request(command)` sends it and returns its CommandResult (or raises ResultTimeout).

    `reply_topic`: results go there instead of `<prefix>.<connection>.results` (the topic must exist;
    `create_reply_topic=True` creates it). The bridge refuses a reply topic it may not write to with a
    REJECTED result on the connection's results topic.
    """

    def __init__(
        self,
        kafka_config: Mapping[str, Any],
        registry: SchemaRegistryClient,
        topics: Topics,
        *,
        reply_topic: str | None = None,
        create_reply_topic: bool = False,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        self.topics = topics
        self.reply_topic = reply_topic
        self.listen_topic = reply_topic or topics.results
        if reply_topic is not None and create_reply_topic:
            ensure_topics(AdminClient(dict(kafka_config)), [TopicSpec(reply_topic, REPLY_TOPIC_PARTITIONS)])
        self._encode = CommandEncoder(registry, topics)
        self._decode = ResultDecoder(registry)
        self._producer = Producer({**kafka_config, "enable.idempotence": True})
        self._consumer = Consumer(
            {
                **kafka_config,
                "group.id": f"epic-bridge-client-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self._listen_from_end(metadata_timeout_s)
        self._waiting: set[str] = set()
        self._arrived: dict[str, CommandResult] = {}

    def _listen_from_end(self, timeout_s: float) -> None:
        topic = self.listen_topic
        metadata = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise ClientError(
                f"topic {topic} does not exist yet (the bridge creates the results topic when it starts "
                "serving the connection; a reply topic must be created first)"
            )
        deadline = time.monotonic() + timeout_s
        ends = [TopicPartition(topic, p, self._end_offset(topic, p, deadline)) for p in metadata.partitions]
        self._consumer.assign(ends)

    def _end_offset(self, topic: str, partition: int, deadline: float) -> int:
        while True:
            try:
                remaining = max(0.1, deadline - time.monotonic())
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), remaining)
                return int(high)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                passing = error.retriable() or error.code() in _NO_LEADER_YET
                if not passing or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def send(self, command: Command, key: str | None = None) -> str:
        """Produce the command (waiting until Kafka has it); returns its command id.

        `key`: commands with the same key run in order (default: the command id).
        """
        if self.reply_topic is not None and command.reply_topic is None:
            command = command.with_reply_topic(self.reply_topic)
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _msg: Any) -> None:
            if error is not None:
                failures.append(error)

        self._producer.produce(
            self._encode.topic_of(command),
            key=(key or command.command_id).encode(),
            value=self._encode(command),
            on_delivery=delivered,
        )
        if self._producer.flush(30) > 0 or failures:
            raise ClientError(f"command {command.command_id} was not delivered: {failures or 'timed out'}")
        self.expect(command.command_id)
        return command.command_id

    def expect(self, command_id: str) -> None:
        """Also collect the result of a command sent by other means after this client was created
        (e.g. a dead letter replayed with `DeadLetter.replay`)."""
        self._waiting.add(command_id)

    def result(self, command_id: str, timeout_s: float = 60.0) -> CommandResult:
        """Wait for the result of a command sent by this client (or announced with `expect`)."""
        deadline = time.monotonic() + timeout_s
        while command_id not in self._arrived:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(command_id, timeout_s)
            self._read(min(remaining, 0.5))
        self._waiting.discard(command_id)
        return self._arrived.pop(command_id)

    def request(self, command: Command, timeout_s: float = 60.0, key: str | None = None) -> CommandResult:
        """Send the command and wait for its result."""
        return self.result(self.send(command, key), timeout_s)

    def _read(self, timeout_s: float) -> None:
        msg = self._consumer.poll(timeout_s)
        if msg is None or msg.error() is not None:
            return
        result = self._decode(msg.value(), str(msg.topic()))
        if result.command_id in self._waiting:
            self._arrived[result.command_id] = result

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(10)

    def __enter__(self) -> CommandClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
