"""Reading a connection's events as typed objects, in a consumer group of the caller's choosing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.schema_registry import SchemaRegistryClient

from bridge.client.codecs import EventDecoder
from bridge.client.errors import NotAnEvent
from bridge.client.events import Event
from bridge.client.topics import Topics

log = logging.getLogger(__name__)


class EventReader:
    """Polls event topics (read_committed: only events of committed bridge transactions) and returns
    `Event`s. Offsets are committed only by `commit()` (at-least-once: commit after handling).

    `resource_types`: the types to read; None subscribes to every event topic of the connection,
    including ones created later.
    """

    def __init__(
        self,
        kafka_config: Mapping[str, Any],
        registry: SchemaRegistryClient,
        topics: Topics,
        group_id: str,
        *,
        resource_types: Iterable[str] | None = None,
        from_beginning: bool = True,
        on_error: Callable[[KafkaError], object] | None = None,
    ) -> None:
        self._consumer = Consumer(
            {
                **kafka_config,
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "isolation.level": "read_committed",
                "topic.metadata.refresh.interval.ms": 5000,
            }
        )
        self._decode = EventDecoder(registry)
        self._on_error = on_error or (lambda error: log.warning("event consumer: %s", error))
        subscription = (
            [topics.events_pattern()]
            if resource_types is None
            else [topics.events(rtype) for rtype in resource_types]
        )
        self._consumer.subscribe(subscription)

    def poll(self, timeout_s: float = 1.0) -> Event | None:
        """The next event, or None when none arrived within the timeout.

        Raises NotAnEvent for a record that is not a bridge event (the next poll goes on after it),
        RegistryUnavailable when the registry cannot be asked.
        """
        msg = self._consumer.poll(timeout_s)
        if msg is None:
            return None
        error = msg.error()
        if error is not None:
            # Subscribed by pattern before the bridge created a topic: not an error worth reporting.
            if error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                self._on_error(error)
            return None
        topic = str(msg.topic())
        try:
            return self._decode(msg.value(), topic)
        except NotAnEvent as exc:
            raise NotAnEvent(f"{exc} (at {topic}[{msg.partition()}]@{msg.offset()})") from exc

    def __iter__(self) -> Iterator[Event]:
        """Events as they come (blocks; stop by breaking out of the loop)."""
        while True:
            event = self.poll()
            if event is not None:
                yield event

    def commit(self) -> None:
        """Commit the offsets of everything returned so far."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing consumed yet: nothing to commit
                raise

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> EventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
