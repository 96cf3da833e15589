"""What a command record turns into in Kafka: its result record (on the results topic or an allowed reply
topic, Avro-encoded, made smaller when it would not fit), its ledger entries, or its dead letter.

Registry and topic look-ups happen once per topic and are remembered; a registry that cannot be asked
raises RegistryUnavailable (the caller tries again later), never a dead letter or a rejection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient

from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.registry import (
    ForeignSubjectError,
    IncompatibleSchemaError,
    is_transient,
    register_owned_avro,
)
from bridge.kafka.txn import Record
from bridge.sink.decode import DeadLetter, RegistryUnavailable
from bridge.sink.dlq import dead_letter_headers
from bridge.sink.fit import fit_result
from bridge.sink.ledger import CommandLedger
from bridge.sink.model import Command, Outcome, Source
from bridge.sink.replies import ReplyPolicy

# Room left for the dead-letter headers when the original value is copied into the DLQ record.
DLQ_HEADER_ROOM = 4096


class ResultRecords:
    def __init__(
        self,
        *,
        connection: str,
        results_topic: str,
        dlq_topic: str,
        ledger: CommandLedger,
        registry: SchemaRegistryClient,
        replies: ReplyPolicy,
        topic_exists: Callable[[str], bool],
        max_message_bytes: int,
        topic_limit: Callable[[str], int | None] | None = None,
        known: Mapping[str, tuple[TopicCodec | None, int | None]] | None = None,
    ) -> None:
        """`known`: codecs and max.message.bytes of topics looked up beforehand (off the event loop)."""
        self.connection = connection
        self.results_topic = results_topic
        self.dlq_topic = dlq_topic
        self._ledger = ledger
        self._registry = registry
        self._replies = replies
        self._topic_exists_now = topic_exists
        self._max_message_bytes = max_message_bytes
        self._topic_limit = topic_limit  # a topic's max.message.bytes, None when unknown
        self._schema = load_schema("command_result.avsc")
        self._codecs: dict[str, TopicCodec] = {}
        self._codec_lock = threading.Lock()
        self._limits: dict[str, int] = {}
        self._known_topics: set[str] = set()
        for topic, (codec, limit) in (known or {}).items():
            if codec is not None:
                self._codecs[topic] = codec
            self._limits[topic] = min(limit or max_message_bytes, max_message_bytes)

    # -- records -----------------------------------------------------------------------------------
    def dead_letter(self, dead: DeadLetter, source: Source, value: bytes | None) -> Record:
        headers = dead_letter_headers(dead, source, self.connection)
        if value is not None and len(value) > self._limit(self.dlq_topic) - DLQ_HEADER_ROOM:
            # Too large to copy (it reached the DLQ for that very reason): keep the headers, which say
            # where the original is, rather than fail the transaction on every attempt.
            headers.append(("dlq.value.dropped-bytes", str(len(value)).encode()))
            value = None
        return Record(self.dlq_topic, source.key, value, tuple(headers))

    def result(
        self, command: Command, result: dict[str, Any], *, fresh: bool
    ) -> tuple[dict[str, Any], list[Record]]:
        """The result as published (maybe made smaller) and its records: the result itself and, for a fresh
        result (not a replay), its ledger entry with the record it answers, and what the server showed
        about keeping the create marker. Raises RegistryUnavailable."""
        topic = self.topic_of(command)
        result, value = self._encode(topic, result)
        records: list[Record] = []
        if fresh:
            where = (command.source.topic, command.source.partition, command.source.offset)
            records.append(self._ledger.result(command.command_id, result, where))
        records.append(Record(topic, command.source.key, value))
        return result, records

    def marker(self, command: Command, outcome: Outcome) -> list[Record]:
        """Record whether the server kept the marker identifier, when this create told something new."""
        if outcome.marker_kept is None:
            return []
        if self._ledger.marker_kept(command.resource_type) == outcome.marker_kept:
            return []
        return [self._ledger.marker(command.resource_type, outcome.marker_kept)]

    # -- topics ------------------------------------------------------------------------------------
    def topic_of(self, command: Command) -> str:
        reply = command.reply_topic
        if reply is not None and self.reply_problem(reply) is None:
            return reply
        return self.results_topic

    def reply_problem(self, topic: str) -> str | None:
        """Why results cannot go to `topic`, or None when they can. Raises RegistryUnavailable when the
        registry cannot be asked (the command is then answered later)."""
        if problem := self._replies.problem(topic):
            return problem
        if not self._topic_exists(topic):
            return f"reply_topic {topic!r} does not exist"
        try:
            self._codec(topic)
        except (IncompatibleSchemaError, ForeignSubjectError) as exc:
            return f"reply_topic {topic!r} holds records of another schema ({exc})"
        except Exception as exc:
            if is_transient(exc):
                raise RegistryUnavailable(f"schema registry: {type(exc).__name__}: {exc}") from exc
            return f"the schema registry refused the result schema for reply_topic {topic!r}: {exc}"
        return None

    def _encode(self, topic: str, result: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The result (made smaller when it would not fit the topic) and its Avro encoding."""
        limit = min(self._limit(topic), self._limit(self._ledger.topic))
        try:
            return fit_result(result, self._codec(topic).encode, limit)
        except Exception as exc:
            if is_transient(exc):
                raise RegistryUnavailable(f"schema registry: {type(exc).__name__}: {exc}") from exc
            raise

    def _limit(self, topic: str) -> int:
        """The largest record `topic` accepts: its max.message.bytes, capped by the producer's own limit."""
        if topic not in self._limits:
            limit = self._topic_limit(topic) if self._topic_limit is not None else None
            self._limits[topic] = min(limit or self._max_message_bytes, self._max_message_bytes)
        return self._limits[topic]

    def _codec(self, topic: str) -> TopicCodec:
        """The codec for results on `topic`; registry errors propagate (callers decide what they mean)."""
        with self._codec_lock:  # results are encoded on worker threads: one registration per topic
            if topic not in self._codecs:
                self._codecs[topic] = TopicCodec(
                    self._registry, topic, self._schema, register=register_owned_avro
                )
            return self._codecs[topic]

    def _topic_exists(self, topic: str) -> bool:
        if topic in self._known_topics:
            return True
        if self._topic_exists_now(topic):
            self._known_topics.add(topic)
            return True
        return False
