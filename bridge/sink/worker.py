"""The command loop of one connection: take a batch, execute it, publish one result per command, commit.

Records come from the connection's route of the process's partition feed (bridge.kafka.feed), which
reads them from the offsets its group committed; everything is committed through the process's
transaction helper (bridge.kafka.txn), fenced by the connection's ownership. Per batch:
1. decode every record (undecodable ones are dead-lettered) and look the command ids up in the ledger:
   a command that already has a result is answered from it without calling Epic, and a record whose
   result is already committed (read again after a handover) gets no second one;
2. execute the rest concurrently, one task per record key (commands with the same key stay in order),
   at most `concurrency` at once. Right before a command that may create anything runs, its *intent* is
   committed with a promise: this owner sends no create for it after `until`. A command whose previous
   owner may still be sending its create (an intent without a result) first waits out that promise;
3. one unit: the results, the dead letters, the ledger results and the consumed offsets.
If that unit cannot commit for a reason that may pass, the same batch is processed again after a pause (the
ledger's intents make the second pass search before it creates, so a create is not repeated); if the
connection was handed over meanwhile, the batch is dropped and its next owner reads it again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.errors import KafkaGlueError, NotOwnedError, OwnershipRefusedError, ProducerFencedError
from bridge.kafka.feed import Route
from bridge.kafka.registry import (
    ForeignSubjectError,
    IncompatibleSchemaError,
    is_transient,
    register_owned_avro,
)
from bridge.kafka.txn import Committer, Record, Unit
from bridge.sink.decode import DeadLetter, DeadLetterReason, RegistryUnavailable, decode_command, precheck
from bridge.sink.dlq import dead_letter_headers
from bridge.sink.fit import fit_result
from bridge.sink.ledger import CommandLedger, Entry
from bridge.sink.model import Command, ErrorInfo, Outcome, Source, Status, result_record
from bridge.sink.replies import ReplyPolicy
from bridge.supervise import wait_or_stop

log = logging.getLogger(__name__)


class CommandExecutor(Protocol):
    async def execute(self, command: Command, *, recovering: bool, not_after: float | None = None) -> Outcome:
        """Run one command against the server. `recovering`: an earlier attempt may have created the
        resource already (an intent without a result), so look for it before creating. `not_after` (a
        time.monotonic() value): send no create after it (the promise made in the command's intent)."""
        ...


class Abandoned(Exception):
    """The batch cannot be finished here (the connection was handed over, or the process stops)."""


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
    deadline_s: Callable[[Command], float] = lambda _command: 60.0  # the executor's deadline of a command
    promise_grace_s: float = 1.0  # added to a create's deadline in its intent's `until`
    settle_s: float = 1.0  # after a previous owner's `until`: let a request still in flight land
    clock_skew_margin_s: float = 2.0
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
    previous_until_ms: int | None = None  # recovering: the previous owner's promise
    answered: bool = False  # read again: its result is already committed
    duplicate_of: int | None = None  # index of the earlier record with the same command id
    received_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class SinkWorker:
    def __init__(
        self,
        settings: SinkSettings,
        *,
        route: Route,
        committer: Committer,
        ledger: CommandLedger,
        registry: SchemaRegistryClient,
        executor: CommandExecutor,
        topic_exists: Callable[[str], bool],
        on_result: Callable[[Command | None, dict[str, Any] | None, DeadLetter | None], None] | None = None,
        on_lag: Callable[[dict[str, int]], None] | None = None,
        topic_limit: Callable[[str], int | None] | None = None,
        known: Mapping[str, tuple[TopicCodec | None, int | None]] | None = None,
    ) -> None:
        """`known`: codecs and max.message.bytes of topics looked up beforehand (off the event loop)."""
        self.settings = settings
        self._route = route
        self._committer = committer
        self._ledger = ledger
        self._registry = registry
        self._executor = executor
        self._topic_exists_now = topic_exists
        self._deserializer = AvroDeserializer(registry)
        self._result_schema = load_schema("command_result.avsc")
        self._codecs: dict[str, TopicCodec] = {}
        self._replies = ReplyPolicy(settings.results_topic, settings.reply_topics, settings.topic_prefix)
        self._known_topics: set[str] = set()
        self._on_result = on_result
        self._on_lag = on_lag
        self._lag_reported = 0.0
        self._topic_limit = topic_limit  # a topic's max.message.bytes, None when unknown
        self._limits: dict[str, int] = {}
        for topic, (codec, limit) in (known or {}).items():
            if codec is not None:
                self._codecs[topic] = codec
            self._limits[topic] = min(limit or settings.max_message_bytes, settings.max_message_bytes)
        self._stop = asyncio.Event()

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        while not stop.is_set():
            batch = await self._route.take(self.settings.max_batch, self.settings.poll_timeout_s)
            if batch:
                await self.handle(batch)
            self._report_lag()

    def _report_lag(self, every_s: float = 5.0) -> None:
        """Records not yet answered, per command topic (the feed refreshes the figures)."""
        now = time.monotonic()
        if self._on_lag is None or now - self._lag_reported < every_s:
            return
        self._lag_reported = now
        self._on_lag(dict(self._route.lag))

    async def handle(self, batch: list[Message]) -> None:
        """Process one batch until it is committed; after a failure that may pass, the same batch again."""
        pause = self.settings.retry_pause_s
        while True:
            try:
                await self._process(batch)
                return
            except Abandoned:
                return
            except (NotOwnedError, OwnershipRefusedError, ProducerFencedError) as exc:
                # Never go on past a batch that is not committed: this run ends, and whoever runs the
                # connection next (a restart here, or its next owner) reads it again.
                log.info("batch of %d commands not committed (%s); reading it again", len(batch), exc)
                raise
            except (KafkaGlueError, RegistryUnavailable) as exc:
                if self._stop.is_set():
                    return
                log.warning("batch of %d commands is processed again in %.0fs: %s", len(batch), pause, exc)
                await wait_or_stop(self._stop, pause)
                pause = min(pause * 2, self.settings.max_retry_pause_s)

    # -- one batch ---------------------------------------------------------------------------------
    async def _process(self, batch: list[Message]) -> None:
        items = [self._decode(m) for m in batch]
        self._plan(items)
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
                if entry.source == (item.source.topic, item.source.partition, item.source.offset):
                    item.answered = True  # this very record was answered before a handover
                else:
                    item.replay = entry.result
                continue
            item.recovering = entry is not None and entry.intent
            item.previous_until_ms = entry.until_ms if entry is not None and entry.intent else None
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
            and not item.answered
        )

    async def _promise(self, item: _Item) -> float | None:
        """For a command that may create: wait out a previous owner's promise, then commit this owner's
        intent. Returns the time.monotonic() value after which no create may be sent (None: no create)."""
        command = item.command
        assert command is not None
        if not command.action.may_create:
            return None
        if item.previous_until_ms is not None:
            ready_ms = (
                item.previous_until_ms + (self.settings.settle_s + self.settings.clock_skew_margin_s) * 1000
            )
            wait_s = (ready_ms - _now_ms()) / 1000
            if wait_s > 0:
                log.info(
                    "command %s: its create may be in flight at the previous owner; waiting %.0fs",
                    command.command_id,
                    wait_s,
                )
                await wait_or_stop(self._stop, wait_s)
                if self._stop.is_set():
                    raise Abandoned("stopping")
        window_s = self.settings.deadline_s(command) + self.settings.promise_grace_s
        at_ms, not_after = _now_ms(), time.monotonic() + window_s
        intent = self._ledger.intent(command.command_id, at_ms, at_ms + int(window_s * 1000))
        await self._committer.commit(Unit([intent], owner=self.settings.connection, label="intent"))
        return not_after

    async def _execute(self, items: list[_Item]) -> None:
        by_key: dict[bytes | None, list[_Item]] = {}
        for item in items:
            by_key.setdefault(item.source.key, []).append(item)
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def run_in_order(group: list[_Item]) -> None:
            for item in group:
                async with limit:
                    item.outcome = await self._execute_one(item)

        tasks = [asyncio.ensure_future(run_in_order(group)) for group in by_key.values()]
        try:
            await asyncio.gather(*tasks)
        finally:  # one failed (its intent could not commit): the batch is abandoned, stop the others
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _execute_one(self, item: _Item) -> Outcome:
        assert item.command is not None
        not_after = await self._promise(item)  # a failure here abandons the batch: no answer yet
        try:
            return await self._executor.execute(item.command, recovering=item.recovering, not_after=not_after)
        except Exception as exc:  # an executor bug must still give the command its one answer
            log.exception("command %s failed inside the bridge", item.command.command_id)
            return Outcome(
                Status.FAILED,
                error=ErrorInfo(f"internal error in the bridge: {type(exc).__name__}", retriable=True),
            )

    async def _publish(self, items: list[_Item], batch: list[Message]) -> None:
        records: list[Record] = []
        results: list[dict[str, Any] | None] = [None] * len(items)
        for index, item in enumerate(items):
            if item.answered:
                continue
            if item.dead is not None:
                records.append(self._dead_letter(item))
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
                where = (item.source.topic, item.source.partition, item.source.offset)
                records.append(self._ledger.result(item.command.command_id, result, where))
                records.extend(self._marker_records(item))
            results[index] = result
            records.append(Record(topic, item.source.key, value))
        unit = Unit(records, owner=self.settings.connection, offsets=self._offsets(batch), label="results")
        await self._committer.commit(unit)
        if self._on_result is not None:
            for item, result in zip(items, results, strict=True):
                if not item.answered:
                    self._on_result(item.command, result, item.dead)

    # -- helpers -----------------------------------------------------------------------------------
    def _dead_letter(self, item: _Item) -> Record:
        assert item.dead is not None
        headers = dead_letter_headers(item.dead, item.source, self.settings.connection)
        value = item.message.value()
        if value is not None and len(value) > self._limit(self.settings.dlq_topic) - 4096:
            # Too large to copy (it reached the DLQ for that very reason): keep the headers, which say
            # where the original is, rather than fail the transaction on every attempt.
            headers.append(("dlq.value.dropped-bytes", str(len(value)).encode()))
            value = None
        return Record(self.settings.dlq_topic, item.source.key, value, tuple(headers))

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

    def _marker_records(self, item: _Item) -> list[Record]:
        """Record whether the server kept the marker identifier, when this create told something new."""
        outcome, command = item.outcome, item.command
        if outcome is None or command is None or outcome.marker_kept is None:
            return []
        if self._ledger.marker_kept(command.resource_type) == outcome.marker_kept:
            return []
        return [self._ledger.marker(command.resource_type, outcome.marker_kept)]

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
        registry cannot be asked (the batch is then processed again later)."""
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
        if self._topic_exists_now(topic):
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


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)
