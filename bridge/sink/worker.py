"""The command loop of one connection: every command answered as soon as it is done, exactly once.

Records come from the connection's route of the process's partition feed (bridge.kafka.feed), which reads
them from the offsets its group committed; everything is committed through the process's transaction
helper (bridge.kafka.txn), fenced by the connection's ownership. Each record, once read:
1. is decoded (an undecodable one is dead-lettered) and its command id looked up in the ledger: a command
   that already has a result is answered from it without calling Epic, and a record whose own result is
   already committed (read again after a crash or a handover) gets no second one;
2. waits for the command before it with the same record key (commands with the same key run in order;
   commands without a key are not ordered), then runs, at most `concurrency` at once. Before a command
   that may create anything takes its turn, its *intent* is committed with a promise: this owner sends no
   create for it after `until`. A command whose previous owner may still be sending its create (an intent
   without a result) first waits out that promise. Intents commit while earlier commands still run, so at
   full load they ride in the same transactions as other commands' results (the helper group-commits);
3. as soon as it is done, its result, ledger entry and dead letter are committed, with the consumed
   offsets that are safe to commit (bridge.sink.offsets): a slow command holds back no other result. Only
   an answer the ledger does not record under its record (a dead letter, a replay) waits until every
   record before it on its partition is answered, so that its own offset commits with it.
At most `max_batch` records are read and not yet answered; beyond that the feed pauses the partitions.

A result that cannot commit for a reason that may pass is committed again after a pause (it is final: the
command is not run again); if the connection was handed over meanwhile, the run ends and the next owner
reads every unanswered record again. On a stop, commands already running finish and commit; the others are
left to the next owner, and the intents they had committed are withdrawn so it need not wait them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Message
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.kafka.avro import TopicCodec
from bridge.kafka.errors import KafkaGlueError, NotOwnedError, OwnershipRefusedError, ProducerFencedError
from bridge.kafka.feed import Route
from bridge.kafka.registry import is_transient
from bridge.kafka.txn import Committer, Record, Unit
from bridge.sink.decode import DeadLetter, DeadLetterReason, RegistryUnavailable, decode_command, precheck
from bridge.sink.ledger import CommandLedger, Entry
from bridge.sink.model import Command, ErrorInfo, Outcome, Source, Status, result_record
from bridge.sink.offsets import OffsetBook, Position
from bridge.sink.records import ResultRecords
from bridge.sink.replies import ReplyPolicy
from bridge.supervise import wait_or_stop

log = logging.getLogger(__name__)

# Errors after which this process may not commit for the connection: the run ends, whoever owns the
# connection next reads every unanswered record again.
NOT_OURS = (NotOwnedError, OwnershipRefusedError, ProducerFencedError)
MIN_INTENTS_AHEAD = 8


class CommandExecutor(Protocol):
    async def execute(self, command: Command, *, recovering: bool, not_after: float | None = None) -> Outcome:
        """Run one command against the server. `recovering`: an earlier attempt may have created the
        resource already (an intent without a result), so look for it before creating. `not_after` (a
        time.monotonic() value): send no create after it (the promise made in the command's intent)."""
        ...


class Abandoned(Exception):
    """The command cannot be finished here (the process stops, or hands the connection over)."""


@dataclass(frozen=True)
class SinkSettings:
    connection: str
    command_topics: Mapping[str, str]  # topic -> FHIR resource type
    results_topic: str
    dlq_topic: str
    max_batch: int = 200  # records read and not yet answered, at most
    max_command_bytes: int = 1_000_000
    concurrency: int = 8
    # How long one wait for records lasts; records are handed over as soon as they arrive, so this only
    # bounds how often an idle loop looks at its lag and its offsets.
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
    duplicate_of: asyncio.Future[dict[str, Any]] | None = None  # the same command id, read before
    answer: asyncio.Future[dict[str, Any]] | None = None  # its committed result, for later duplicates
    intent: bool = False  # an intent was submitted for it
    started: bool = False  # handed to the executor: it runs to its end
    received_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def command_id(self) -> str | None:
        return self.command.command_id if self.command is not None else None

    @property
    def where(self) -> Position:
        return (self.source.topic, self.source.partition, self.source.offset)


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
        self._executor = executor
        self._deserializer = AvroDeserializer(registry)
        self._records = ResultRecords(
            connection=settings.connection,
            results_topic=settings.results_topic,
            dlq_topic=settings.dlq_topic,
            ledger=ledger,
            registry=registry,
            replies=ReplyPolicy(settings.results_topic, settings.reply_topics, settings.topic_prefix),
            topic_exists=topic_exists,
            max_message_bytes=settings.max_message_bytes,
            topic_limit=topic_limit,
            known=known,
        )
        self._on_result = on_result
        self._on_lag = on_lag
        self._lag_reported = 0.0
        self._halt = asyncio.Event()  # stop requested, or the loop failed: wind down
        self._book = OffsetBook()
        self._tasks: dict[asyncio.Task[None], _Item] = {}
        self._tails: dict[bytes, asyncio.Future[None]] = {}  # per key: done when its last command is
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}  # command id -> its result
        self._slots = asyncio.Semaphore(settings.concurrency)  # commands running against the server
        # Commands holding a committed intent while they wait for a slot: their intents commit while the
        # slots are busy, so a create does not wait for its intent when its turn comes. At least a few, so
        # that at a low concurrency the intents still share transactions and an intent's commit (longer
        # than a search under load) does not leave the slot idle; few, because after a crash the next
        # owner waits out the promise of every intent without a result.
        self._ahead = asyncio.Semaphore(max(settings.concurrency, MIN_INTENTS_AHEAD))
        self._progress = asyncio.Event()  # a record was answered: room to read more
        self._settled = asyncio.Event()  # set, and replaced, each time a record is answered
        self._failure: BaseException | None = None

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._halt = asyncio.Event()
        watch = asyncio.create_task(_relay(stop, self._halt))
        try:
            while not self._halt.is_set():
                room = self.settings.max_batch - self._book.open()
                if room <= 0:
                    self._progress.clear()
                    await self._until_woken(self._progress.wait(), self.settings.poll_timeout_s)
                    continue
                batch = await self._until_woken(
                    self._route.take(room, self.settings.poll_timeout_s), self.settings.poll_timeout_s
                )
                if batch:
                    await self._admit(batch)
                elif not self._tasks:
                    await self._tidy()
                self._report_lag()
        except BaseException:
            await self._abandon(everything=True)
            raise
        finally:
            watch.cancel()
        await self._wind_down()
        if self._failure is not None:
            raise self._failure

    async def _until_woken(self, step: Any, timeout_s: float) -> Any:
        """`step`'s result, or None once stopped, failed or `timeout_s` passed (the step is cancelled)."""
        work = asyncio.ensure_future(step)
        halt = asyncio.ensure_future(self._halt.wait())
        try:
            await asyncio.wait([work, halt], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halt.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        return work.result() if work.done() and not work.cancelled() else None

    def _report_lag(self, every_s: float = 5.0) -> None:
        """Records not yet answered, per command topic (the feed refreshes the figures)."""
        now = time.monotonic()
        if self._on_lag is None or now - self._lag_reported < every_s:
            return
        self._lag_reported = now
        self._on_lag(dict(self._route.lag))

    # -- reading -----------------------------------------------------------------------------------
    async def _admit(self, batch: list[Message]) -> None:
        items: list[_Item] = []
        for message in batch:
            item = await self._decoded(message)
            if item is None:
                break  # stopping: this record and the ones after it are read again by whoever runs next
            self._book.read(item.where)
            items.append(item)
        commands = [i.command for i in items if i.command is not None]
        entries = self._ledger.lookup(c.command_id for c in commands)
        for item in items:
            if item.command is not None and self._plan(item, entries.get(item.command.command_id)):
                self._settle(item)  # answered before: nothing to commit
                continue
            task = asyncio.create_task(self._handle(item))
            self._tasks[task] = item
            task.add_done_callback(self._finished)

    async def _decoded(self, message: Message) -> _Item | None:
        """The record as an item; a registry that cannot be asked is asked again after a pause (None once
        stopped)."""
        pause = self.settings.retry_pause_s
        while True:
            try:
                # Off the loop: an unknown schema id asks the registry, whose client sleeps between its
                # own retries while the registry is away; the commands already running must not stall.
                return await asyncio.to_thread(self._decode, message)
            except RegistryUnavailable as exc:
                log.warning("a command cannot be decoded now, trying again in %.0fs: %s", pause, exc)
                await wait_or_stop(self._halt, pause)
                if self._halt.is_set():
                    return None
                pause = min(pause * 2, self.settings.max_retry_pause_s)

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

    def _plan(self, item: _Item, entry: Entry | None) -> bool:
        """What the ledger and the commands in progress say about this record; True when it was answered
        before (read again after a crash or a handover) and needs nothing more."""
        command = item.command
        assert command is not None
        earlier = self._answers.get(command.command_id)
        if earlier is not None:
            item.duplicate_of = earlier
            return False
        if entry is not None and entry.result is not None:
            if entry.source == item.where:
                return True
            item.replay = entry.result
            return False
        item.recovering = entry is not None and entry.intent
        item.previous_until_ms = entry.until_ms if entry is not None and entry.intent else None
        item.answer = self._answers[command.command_id] = asyncio.get_running_loop().create_future()
        return False

    def _finished(self, task: asyncio.Task[None]) -> None:
        item = self._tasks.pop(task)
        self._progress.set()
        if item.answer is not None and not item.answer.done():
            item.answer.cancel()  # abandoned: a later duplicate is left to the next run too
        if item.answer is not None and self._answers.get(str(item.command_id)) is item.answer:
            del self._answers[str(item.command_id)]
        if task.cancelled():
            return
        failure = task.exception()
        if failure is not None and not isinstance(failure, Abandoned) and self._failure is None:
            self._failure = failure
            self._halt.set()
            log.log(
                logging.INFO if isinstance(failure, NOT_OURS) else logging.ERROR,
                "the command loop ends (%s: %s); unanswered records are read again",
                type(failure).__name__,
                failure,
            )

    # -- one record --------------------------------------------------------------------------------
    async def _handle(self, item: _Item) -> None:
        if item.dead is not None:
            dead = self._records.dead_letter(item.dead, item.source, item.message.value())
            await self._commit(item, (None, [dead]))
            return
        assert item.command is not None
        previous, turn = self._queue(item.source.key)
        try:
            if previous is not None:
                await asyncio.shield(previous)  # cancelling this command must not cancel the one before
            records = await self._result_records(item, await self._answer(item))
        except BaseException:
            _done(turn)
            raise
        await self._commit(item, records, turn)

    def _queue(self, key: bytes | None) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        """Behind the last command with the same key (None: no key, no order): (what to wait for, the
        future to complete once this command's result is on its way)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if key is None:
            return None, turn
        previous = self._tails.get(key)
        self._tails[key] = turn

        def forget(_done: asyncio.Future[None]) -> None:
            if self._tails.get(key) is turn:
                del self._tails[key]

        turn.add_done_callback(forget)
        return previous, turn

    async def _answer(self, item: _Item) -> dict[str, Any]:
        """The result for the record: run the command, or replay the result it already has."""
        command = item.command
        assert command is not None
        if item.duplicate_of is not None:
            return {**(await asyncio.shield(item.duplicate_of)), "replayed": True, "attempts": 0}
        if item.replay is not None:
            return {**item.replay, "replayed": True, "attempts": 0}
        outcome = await self._checked(command)
        if isinstance(outcome, Command):
            item.command = command = outcome
            outcome = await self._run(item)
        item.outcome = outcome
        return result_record(
            command, self.settings.connection, outcome, item.received_at, dt.datetime.now(dt.UTC)
        )

    async def _checked(self, command: Command) -> Command | Outcome:
        """The command ready to run, or the outcome it gets without running (REJECTED)."""
        checked = precheck(command)
        if isinstance(checked, Outcome) or command.reply_topic is None:
            return checked
        problem = await self._retrying(lambda: self._records.reply_problem(str(command.reply_topic)))
        return checked if problem is None else Outcome.rejected(problem)

    async def _run(self, item: _Item) -> Outcome:
        command = item.command
        assert command is not None
        not_after: float | None = None
        if command.action.may_create:
            await self._wait_for_previous_owner(item)
            async with self._ahead:
                not_after = await self._promise(item)
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            if not_after is not None and not_after - time.monotonic() < self.settings.deadline_s(command):
                not_after = await self._promise(item)  # it waited long for its turn: promise afresh
            item.started = True
            return await self._execute(item, not_after)
        finally:
            self._slots.release()

    async def _wait_for_previous_owner(self, item: _Item) -> None:
        """A previous owner may still send this command's create until its promise ran out (plus the
        settle time and the clock-skew margin)."""
        if item.previous_until_ms is None:
            return
        assert item.command is not None
        ready_ms = (
            item.previous_until_ms + (self.settings.settle_s + self.settings.clock_skew_margin_s) * 1000
        )
        wait_s = (ready_ms - _now_ms()) / 1000
        if wait_s <= 0:
            return
        log.info(
            "command %s: its create may be in flight at the previous owner; waiting %.0fs",
            item.command.command_id,
            wait_s,
        )
        await self._pause(wait_s)

    async def _promise(self, item: _Item) -> float:
        """Commit the command's intent: this owner sends no create for it after the returned
        time.monotonic() value."""
        command = item.command
        assert command is not None
        window_s = self.settings.deadline_s(command) + self.settings.promise_grace_s
        pause = self.settings.retry_pause_s
        while True:
            at_ms, not_after = _now_ms(), time.monotonic() + window_s
            intent = self._ledger.intent(command.command_id, at_ms, at_ms + int(window_s * 1000))
            item.intent = True
            claims = self._book.claim()
            try:
                await self._committer.commit(Unit([intent], self.settings.connection, claims, "intent"))
                return not_after
            except NOT_OURS:
                raise
            except KafkaGlueError as exc:
                self._book.unclaim(claims)
                log.warning(
                    "the intent of %s did not commit (%s); again in %.0fs", command.command_id, exc, pause
                )
            await self._pause(pause)
            pause = min(pause * 2, self.settings.max_retry_pause_s)

    async def _execute(self, item: _Item, not_after: float | None) -> Outcome:
        assert item.command is not None
        try:
            return await self._executor.execute(item.command, recovering=item.recovering, not_after=not_after)
        except Exception as exc:  # an executor bug must still give the command its one answer
            log.exception("command %s failed inside the bridge", item.command.command_id)
            return Outcome(
                Status.FAILED,
                error=ErrorInfo(f"internal error in the bridge: {type(exc).__name__}", retriable=True),
            )

    async def _result_records(
        self, item: _Item, result: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Record]]:
        command = item.command
        assert command is not None
        fresh = item.answer is not None
        published, records = await self._retrying(lambda: self._records.result(command, result, fresh=fresh))
        if fresh and item.outcome is not None:
            records += self._records.marker(command, item.outcome)
        return published, records

    async def _commit(
        self,
        item: _Item,
        answer: tuple[dict[str, Any] | None, list[Record]],
        turn: asyncio.Future[None] | None = None,
    ) -> None:
        """Commit the record's answer with the offsets it allows; a failure that may pass is retried (the
        answer is final: the command does not run again)."""
        published, records = answer
        if item.answer is None:  # not recorded in the ledger under this record: commit its offset with it
            while not self._book.first(item.where):
                await self._settled.wait()
        unit = Unit(records, self.settings.connection, self._book.claim([item.where]), "result")
        if turn is not None:
            _done(turn)  # the next command with the same key may run: this answer is on its way
        pause = self.settings.retry_pause_s
        while True:
            try:
                await self._committer.commit(unit)
                break
            except NOT_OURS:
                raise
            except KafkaGlueError as exc:
                log.warning("an answer did not commit (%s); again in %.0fs", exc, pause)
            await self._pause(pause)
            if self._committed_meanwhile(item):
                break  # the commit's outcome was unknown, and it had gone through
            pause = min(pause * 2, self.settings.max_retry_pause_s)
        self._settle(item)
        if item.answer is not None and published is not None and not item.answer.done():
            item.answer.set_result(published)
        if self._on_result is not None:
            self._on_result(item.command, published, item.dead)

    def _settle(self, item: _Item) -> None:
        self._book.settled(item.where)
        self._settled.set()
        self._settled = asyncio.Event()

    def _committed_meanwhile(self, item: _Item) -> bool:
        if item.command is None or item.answer is None:
            return False
        entry = self._ledger.lookup([item.command.command_id]).get(item.command.command_id)
        return entry is not None and entry.result is not None and entry.source == item.where

    async def _retrying(self, step: Callable[[], Any]) -> Any:
        """`step()`, asked again after a pause while the registry cannot be asked. It runs off the loop,
        as it may ask the registry (see `_decoded`)."""
        pause = self.settings.retry_pause_s
        while True:
            try:
                return await asyncio.to_thread(step)
            except RegistryUnavailable as exc:
                log.warning("the schema registry cannot be asked (%s); again in %.0fs", exc, pause)
            await self._pause(pause)
            pause = min(pause * 2, self.settings.max_retry_pause_s)

    async def _pause(self, seconds: float) -> None:
        await wait_or_stop(self._halt, seconds)
        if self._halt.is_set():
            raise Abandoned("stopping")

    # -- stopping ----------------------------------------------------------------------------------
    async def _abandon(self, *, everything: bool) -> None:
        """Cancel the commands that did not start (all of them with `everything`) and wait for the rest."""
        for task, item in list(self._tasks.items()):
            if everything or not item.started:
                task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def _wind_down(self) -> None:
        """Stopping: commands running finish and commit; the others are left to the next owner, with the
        intents they committed withdrawn (so it need not wait their promises out)."""
        idle = [item for item in self._tasks.values() if not item.started]
        await self._abandon(everything=self._failure is not None)
        if self._failure is not None:
            return
        # A recovering command's intent stays: it tells the next owner an earlier create may have landed.
        withdrawn = [i for i in idle if i.intent and not i.recovering and i.command is not None]
        records = [self._ledger.withdrawn(i.command.command_id) for i in withdrawn if i.command is not None]
        if not records and not self._book.unclaimed():
            return
        try:
            await self._committer.commit(
                Unit(records, self.settings.connection, self._book.claim(), "withdraw")
            )
        except KafkaGlueError as exc:
            log.info("the intents of %d unstarted command(s) stay (%s)", len(records), exc)

    async def _tidy(self) -> None:
        """Idle: commit the offsets no answer carried (records answered before, read again)."""
        if not self._book.unclaimed():
            return
        claims = self._book.claim()
        try:
            await self._committer.commit(Unit([], self.settings.connection, claims, "offsets"))
        except NOT_OURS as exc:
            self._failure = exc
            self._halt.set()
        except KafkaGlueError as exc:
            self._book.unclaim(claims)
            log.info("the consumed offsets did not commit now (%s)", exc)


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _relay(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)
