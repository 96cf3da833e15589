"""The command loop: consume a batch, execute it, publish one result per command, commit.

Per batch:
1. decode every record (undecodable ones are dead-lettered) and look the command ids up in the ledger:
   a command that already has a result is answered from it without calling Epic;
2. commit an *intent* for every command that may create something, before calling Epic;
3. execute the rest concurrently, one task per record key (commands with the same key stay in order),
   at most `concurrency` at once;
4. in one transaction: the results, the dead letters, the ledger results and the consumed offsets.
If that transaction cannot commit, the batch is read again; the ledger's intents make the second pass
search before it creates, so a create is not repeated.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.registry import (
    ForeignSubjectError,
    IncompatibleSchemaError,
    is_transient,
    register_owned_avro,
)
from bridge.kafka.table import Write
from bridge.kafka.transactions import TransactionAbortedError, TransactionalProducer
from bridge.sink.decode import DeadLetter, DeadLetterReason, RegistryUnavailable, decode_command, precheck
from bridge.sink.dlq import dead_letter_headers
from bridge.sink.fit import fit_result
from bridge.sink.ledger import CommandLedger, Entry
from bridge.sink.model import Command, ErrorInfo, Outcome, Source, Status, result_record
from bridge.sink.replies import ReplyPolicy

log = logging.getLogger(__name__)


class CommandExecutor(Protocol):
    async def execute(self, command: Command, *, recovering: bool) -> Outcome:
        """Run one command against the server. `recovering`: an earlier attempt may have created the
        resource already (an intent without a result), so look for it before creating."""
        ...


@dataclass(frozen=True)
class SinkSettings:
    connection: str
    command_topics: Mapping[str, str]  # topic -> FHIR resource type
    results_topic: str
    dlq_topic: str
    max_batch: int = 200
    max_command_bytes: int = 1_000_000
    concurrency: int = 8
    poll_timeout_s: float = 0.5
    retry_pause_s: float = 1.0
    topic_prefix: str | None = None
    reply_topics: tuple[str, ...] = ()  # sink.reply_topics: names or glob patterns
    max_message_bytes: int = 1_000_000  # the producer's message.max.bytes
    max_retry_pause_s: float = 30.0


@dataclass
class _Item:
    message: Message
    source: Source
    command: Command | None = None
    dead: DeadLetter | None = None
    outcome: Outcome | None = None
    replay: dict[str, Any] | None = None
    recovering: bool = False
    duplicate_of: int | None = None  # index of the earlier record with the same command id
    received_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class SinkWorker:
    def __init__(
        self,
        settings: SinkSettings,
        *,
        consumer: Consumer,
        producer: TransactionalProducer,
        ledger: CommandLedger,
        registry: SchemaRegistryClient,
        executor: CommandExecutor,
        on_result: Callable[[Command | None, dict[str, Any] | None, DeadLetter | None], None] | None = None,
        on_lag: Callable[[dict[str, int]], None] | None = None,
        topic_limit: Callable[[str], int | None] | None = None,
    ) -> None:
        self.settings = settings
        self._consumer = consumer
        self._producer = producer
        self._ledger = ledger
        self._registry = registry
        self._executor = executor
        self._deserializer = AvroDeserializer(registry)
        self._result_schema = load_schema("command_result.avsc")
        self._codecs: dict[str, TopicCodec] = {}
        self._replies = ReplyPolicy(settings.results_topic, settings.reply_topics, settings.topic_prefix)
        self._known_topics: set[str] = set()
        self._on_result = on_result
        self._on_lag = on_lag
        self._lag_reported = 0.0
        self._reassigned = False  # partitions moved: catch the ledger up before the next batch
        self._topic_limit = topic_limit  # a topic's max.message.bytes, None when unknown
        self._limits: dict[str, int] = {}
        self._failed_batches = 0  # in a row: the pause before reading a batch again grows with it

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._consumer.subscribe(list(self.settings.command_topics), on_assign=self._on_assign)
        while not stop.is_set():
            messages = await asyncio.to_thread(self._fetch)
            batch = [m for m in messages if m.error() is None]
            for m in messages:
                if m.error() is not None:
                    log.warning("consumer error: %s", m.error())
            if batch:
                await self.handle(batch)
            self._report_lag()

    def _report_lag(self, every_s: float = 5.0) -> None:
        """Records not yet consumed, per command topic (from the watermarks the last fetches brought)."""
        now = time.monotonic()
        if self._on_lag is None or now - self._lag_reported < every_s:
            return
        self._lag_reported = now
        lag: dict[str, int] = dict.fromkeys(self.settings.command_topics, 0)
        try:
            assigned = self._consumer.assignment()
            for position in self._consumer.position(assigned):
                _low, high = self._consumer.get_watermark_offsets(position, cached=True)
                if position.offset >= 0 and high >= 0:
                    lag[position.topic] = lag.get(position.topic, 0) + max(0, high - position.offset)
        except KafkaException as exc:
            log.debug("no lag figures this time: %s", exc)
            return
        self._on_lag(lag)

    def _fetch(self) -> list[Message]:
        """Wait for one record, then take what else is already there (up to a batch): a lone command is
        not held back waiting for a full batch."""
        first = self._consumer.poll(self.settings.poll_timeout_s)
        if first is None:
            return []
        if self.settings.max_batch == 1:
            return [first]
        return [first, *self._consumer.consume(self.settings.max_batch - 1, 0)]

    async def handle(self, batch: list[Message]) -> None:
        """Process one batch; on a transient failure, rewind so the batch is read again."""
        try:
            await self._process(batch)
        except (TransactionAbortedError, RegistryUnavailable, KafkaException) as exc:
            self._failed_batches += 1
            pause = self._retry_pause()
            log.warning(
                "batch of %d commands will be read again in %.1fs (failure %d in a row): %s",
                len(batch),
                pause,
                self._failed_batches,
                exc,
            )
            self._rewind(batch)
            await asyncio.sleep(pause)
        else:
            self._failed_batches = 0

    def _retry_pause(self) -> float:
        """Full-jitter backoff from retry_pause_s up to max_retry_pause_s, by failures in a row."""
        ceiling = min(
            self.settings.max_retry_pause_s, self.settings.retry_pause_s * 2 ** (self._failed_batches - 1)
        )
        return max(self.settings.retry_pause_s / 2, random.uniform(0, ceiling))

    # -- one batch ---------------------------------------------------------------------------------
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs inside consume(): only note it. Another instance may have recorded intents and results
        # for these partitions' commands since this instance last read the ledger.
        self._reassigned = True

    async def _process(self, batch: list[Message]) -> None:
        if self._reassigned:
            self._reassigned = False
            await asyncio.to_thread(self._ledger.catch_up)
        items = [self._decode(m) for m in batch]
        self._plan(items)
        await self._commit_intents([i for i in items if self._needs_intent(i)])
        await self._execute([i for i in items if self._runs(i)])
        await self._publish(items, batch)

    def _decode(self, message: Message) -> _Item:
        topic = str(message.topic())
        source = Source(topic, int(message.partition() or 0), int(message.offset() or 0), message.key())
        item = _Item(message, source)
        context = SerializationContext(topic, MessageField.VALUE)
        try:
            item.command = decode_command(
                message.value(),
                source,
                self.settings.command_topics[topic],
                lambda value: self._deserializer(value, context),
                self.settings.max_command_bytes,
            )
        except DeadLetter as dead:
            item.dead = dead
        except RegistryUnavailable:
            raise
        except Exception as exc:  # poison: whatever it is, this record must not stop the partition
            if is_transient(exc):
                raise RegistryUnavailable(f"schema registry: {type(exc).__name__}: {exc}") from exc
            log.warning("record %s[%d]@%d cannot be decoded: %s", topic, source.partition, source.offset, exc)
            item.dead = DeadLetter(DeadLetterReason.UNDECODABLE, f"{type(exc).__name__}: {exc}")
        return item

    def _plan(self, items: list[_Item]) -> None:
        commands = [i.command for i in items if i.command is not None]
        entries: dict[str, Entry] = self._ledger.lookup(c.command_id for c in commands)
        first_index: dict[str, int] = {}
        for index, item in enumerate(items):
            command = item.command
            if command is None:
                continue
            if command.command_id in first_index:
                item.duplicate_of = first_index[command.command_id]
                continue
            first_index[command.command_id] = index
            entry = entries.get(command.command_id)
            if entry is not None and entry.result is not None:
                item.replay = entry.result
                continue
            item.recovering = entry is not None and entry.intent
            checked = precheck(command)
            if isinstance(checked, Outcome):
                item.outcome = checked
            elif command.reply_topic is not None and (problem := self._reply_problem(command.reply_topic)):
                item.outcome = Outcome.rejected(problem)
            else:
                item.command = checked

    @staticmethod
    def _runs(item: _Item) -> bool:
        return (
            item.command is not None
            and item.outcome is None
            and item.replay is None
            and item.duplicate_of is None
        )

    def _needs_intent(self, item: _Item) -> bool:
        return (
            self._runs(item)
            and item.command is not None
            and item.command.action.may_create
            and not item.recovering
        )

    async def _commit_intents(self, items: list[_Item]) -> None:
        if not items:
            return
        now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        writes: list[Write] = []
        self._producer.begin()
        try:
            for item in items:
                assert item.command is not None
                writes.append(self._ledger.stage_intent(self._producer, item.command.command_id, now_ms))
        except BaseException:
            self._producer.abort()
            raise
        await asyncio.to_thread(self._producer.commit)
        self._ledger.apply(writes)

    async def _execute(self, items: list[_Item]) -> None:
        by_key: dict[bytes | None, list[_Item]] = {}
        for item in items:
            by_key.setdefault(item.source.key, []).append(item)
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def run_in_order(group: list[_Item]) -> None:
            for item in group:
                async with limit:
                    item.outcome = await self._execute_one(item)

        await asyncio.gather(*(run_in_order(group) for group in by_key.values()))

    async def _execute_one(self, item: _Item) -> Outcome:
        assert item.command is not None
        try:
            return await self._executor.execute(item.command, recovering=item.recovering)
        except Exception as exc:  # an executor bug must still give the command its one answer
            log.exception("command %s failed inside the bridge", item.command.command_id)
            return Outcome(
                Status.FAILED,
                error=ErrorInfo(f"internal error in the bridge: {type(exc).__name__}", retriable=True),
            )

    async def _publish(self, items: list[_Item], batch: list[Message]) -> None:
        ledger_writes: list[Write] = []
        results: list[dict[str, Any] | None] = [None] * len(items)
        self._producer.begin()
        try:
            for index, item in enumerate(items):
                if item.dead is not None:
                    self._dead_letter(item)
                    continue
                assert item.command is not None
                if item.duplicate_of is not None:
                    result = results[item.duplicate_of]
                    assert result is not None
                    result = {**result, "replayed": True, "attempts": 0}
                elif item.replay is not None:
                    result = {**item.replay, "replayed": True, "attempts": 0}
                else:
                    assert item.outcome is not None
                    result = result_record(
                        item.command,
                        self.settings.connection,
                        item.outcome,
                        item.received_at,
                        dt.datetime.now(dt.UTC),
                    )
                topic = self._result_topic(item)
                result, value = self._encode(topic, result)
                if item.duplicate_of is None and item.replay is None:
                    ledger_writes.append(
                        self._ledger.stage_result(self._producer, item.command.command_id, result)
                    )
                    ledger_writes.extend(self._marker_writes(item))
                results[index] = result
                self._producer.produce(topic, value, key=item.source.key)
            self._producer.send_offsets(self._offsets(batch), self._consumer.consumer_group_metadata())
        except BaseException:
            self._producer.abort()
            raise
        await asyncio.to_thread(self._producer.commit)
        self._ledger.apply(ledger_writes)
        if self._on_result is not None:
            for item, result in zip(items, results, strict=True):
                self._on_result(item.command, result, item.dead)

    # -- helpers -----------------------------------------------------------------------------------
    def _dead_letter(self, item: _Item) -> None:
        assert item.dead is not None
        headers = dead_letter_headers(item.dead, item.source, self.settings.connection)
        value = item.message.value()
        if value is not None and len(value) > self._limit(self.settings.dlq_topic) - 4096:
            # Too large to copy (it reached the DLQ for that very reason): keep the headers, which say
            # where the original is, rather than fail the transaction on every attempt.
            headers.append(("dlq.value.dropped-bytes", str(len(value)).encode()))
            value = None
        self._producer.produce(self.settings.dlq_topic, value, key=item.source.key, headers=headers)

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
            self._limits[topic] = min(
                limit or self.settings.max_message_bytes, self.settings.max_message_bytes
            )
        return self._limits[topic]

    def _marker_writes(self, item: _Item) -> list[Write]:
        """Record whether the server kept the marker identifier, when this create told something new."""
        outcome, command = item.outcome, item.command
        if outcome is None or command is None or outcome.marker_kept is None:
            return []
        if self._ledger.marker_kept(command.resource_type) == outcome.marker_kept:
            return []
        return [self._ledger.stage_marker(self._producer, command.resource_type, outcome.marker_kept)]

    def _result_topic(self, item: _Item) -> str:
        reply = item.command.reply_topic if item.command is not None else None
        if reply is not None and self._reply_problem(reply) is None:
            return reply
        return self.settings.results_topic

    def _codec(self, topic: str) -> TopicCodec:
        """The codec for results on `topic`; registry errors propagate (callers decide what they mean)."""
        if topic not in self._codecs:
            self._codecs[topic] = TopicCodec(
                self._registry, topic, self._result_schema, register=register_owned_avro
            )
        return self._codecs[topic]

    def _reply_problem(self, topic: str) -> str | None:
        """Why results cannot go to `topic`, or None when they can. Raises RegistryUnavailable when the
        registry cannot be asked (the batch is then read again later)."""
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

    def _topic_exists(self, topic: str) -> bool:
        if topic in self._known_topics:
            return True
        metadata = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            self._known_topics.add(topic)
            return True
        return False

    @staticmethod
    def _offsets(batch: list[Message]) -> list[TopicPartition]:
        next_offsets: dict[tuple[str, int], int] = {}
        for m in batch:
            key = (str(m.topic()), int(m.partition() or 0))
            next_offsets[key] = max(next_offsets.get(key, 0), int(m.offset() or 0) + 1)
        return [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]

    def _rewind(self, batch: list[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for m in batch:
            key = (str(m.topic()), int(m.partition() or 0))
            first[key] = min(first.get(key, int(m.offset() or 0)), int(m.offset() or 0))
        for (topic, partition), offset in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # revoked meanwhile: its new owner reads it
                log.info("not rewinding %s[%d]: %s", topic, partition, exc)
