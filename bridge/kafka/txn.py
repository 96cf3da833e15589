"""The one way the bridge commits to Kafka: units of records, group-committed by one thread.

The source's batches, the sink's intents and results and backfill's snapshots all go through a
`Committer`: one transactional producer per (process, prefix), owned by one thread, so the number of Kafka
clients does not grow with the number of poll tasks and no blocking Kafka call runs on the event loop or
on asyncio's shared executor.

A caller submits a `Unit`: records (some of them writes to an internal table), the connection the unit
belongs to, and consumed offsets to commit with it. Units that arrive together share one transaction:

    begin → produce every record → flush (all on the broker) → send offsets → commit

The offsets always include a marker of each unit's connection (see bridge.kafka.membership), sent with
the group metadata of this process's membership: a process that was paused or cut off while its
connections moved has a stale generation, the group coordinator refuses the offsets, and the whole
transaction aborts (KIP-447). The process also refuses, before producing anything, a unit of a
connection it no longer owns, under the same lock the membership takes to release a connection, so a
revoked connection cannot slip a commit in after its release.

If a shared transaction fails, each unit is retried alone, so a poison unit (a record over the size
limit) fails only itself. Caches are updated only after a commit succeeded, once, by this thread, with
the offsets from the delivery reports (see bridge.kafka.table). A caller that stops waiting (cancelled)
never cuts a commit short: its unit either was not started (and never will be) or runs to its end.

When a commit's outcome is unknown (the commit call itself failed without an answer), the producer is
replaced (its `init_transactions` settles the old transaction one way or the other) and the caches are
caught up with the topics before the unit is reported failed: a redo then sees what did commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Message, TopicPartition

from bridge.kafka.errors import (
    KafkaGlueError,
    NotOwnedError,
    OwnershipRefusedError,
    ProducerFencedError,
    RecordTooLargeError,
    TransactionAbortedError,
    TransactionTimedOutError,
)
from bridge.kafka.table import Applied, CompactedTable
from bridge.kafka.transactions import TransactionalProducer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    table: CompactedTable | None = None  # a write to this internal table, applied once committed

    def size(self) -> int:
        return len(self.key or b"") + len(self.value or b"") + sum(len(k) + len(v) for k, v in self.headers)


@dataclass
class Unit:
    records: Sequence[Record]
    owner: str | None = None  # the connection it belongs to; None: not fenced by the group (backfill)
    offsets: Sequence[TopicPartition] = ()  # consumed offsets committed with it, for the group
    label: str = ""


@dataclass(frozen=True)
class Committed:
    records: int
    shared_with: int  # other units in the same transaction


class Fencing(Protocol):
    """What the committer needs from the group membership (bridge.kafka.membership.Membership)."""

    def guard(self) -> AbstractContextManager[None]:
        """Held for a whole transaction; the membership takes it to release a connection."""
        ...

    def owns(self, connection: str) -> bool: ...

    def marker(self, connection: str) -> TopicPartition: ...

    def group_metadata(self) -> Any: ...


class CommitObserver(Protocol):
    def transaction(self, outcome: str, units: int) -> None:
        """outcome: committed, aborted, refused, fenced, timed-out, failed."""
        ...


class _Uncertain(KafkaGlueError):
    """The commit call failed without saying whether the transaction committed."""


@dataclass
class _Pending:
    unit: Unit
    future: concurrent.futures.Future[Committed] = field(default_factory=concurrent.futures.Future)


_STOP = object()


class Committer:
    def __init__(
        self,
        kafka_config: Mapping[str, Any],
        transactional_id: str,
        *,
        fencing: Fencing | None = None,
        transaction_timeout_s: float = 10.0,
        max_record_bytes: int = 1_000_000,
        max_units: int = 64,
        on_uncertain: Callable[[], object] | None = None,
        on_fenced: Callable[[str], None] | None = None,
        observer: CommitObserver | None = None,
        name: str = "committer",
    ) -> None:
        self._config = dict(kafka_config)
        self.transactional_id = transactional_id
        self._fencing = fencing
        self._txn_timeout_s = transaction_timeout_s
        self._max_record_bytes = max_record_bytes
        self._max_units = max_units
        self._on_uncertain = on_uncertain
        self._on_fenced = on_fenced
        self._observer = observer
        self._queue: queue.Queue[Any] = queue.Queue()
        self._producer: TransactionalProducer | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self.fenced: str | None = None  # why this process may not commit any more (another uses its id)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> concurrent.futures.Future[None]:
        """Start the thread; the future completes once the producer is registered (which aborts a
        predecessor's open transaction), or fails with why it could not be."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not self._started:
            self._started = True
            self._thread.start()
        self._queue.put(ready)
        return ready

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what was submitted, then abort anything open and close the producer."""
        if self._started and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)

    # -- submitting --------------------------------------------------------------------------------
    def submit(self, unit: Unit) -> concurrent.futures.Future[Committed]:
        if not self._started or not self._thread.is_alive():
            raise RuntimeError("the committer is not running")
        pending = _Pending(unit)
        self._queue.put(pending)
        return pending.future

    async def commit(self, unit: Unit) -> Committed:
        """Commit `unit`; cancelling the caller withdraws the unit only if it has not started yet."""
        return await asyncio.wrap_future(self.submit(unit))

    def commit_sync(self, unit: Unit, timeout_s: float | None = None) -> Committed:
        return self.submit(unit).result(timeout_s)

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                if isinstance(item, concurrent.futures.Future):
                    self._prepare(item)
                    continue
                batch: list[_Pending] = [item]
                stop = False
                while len(batch) < self._max_units:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    if isinstance(more, concurrent.futures.Future):
                        self._prepare(more)
                        continue
                    batch.append(more)
                started = [p for p in batch if p.future.set_running_or_notify_cancel()]
                if started:
                    self._commit_safely(started)
                if stop:
                    return
        finally:
            self._drain()
            if self._producer is not None:
                self._producer.close()

    def _prepare(self, ready: concurrent.futures.Future[None]) -> None:
        if not ready.set_running_or_notify_cancel():
            return
        try:
            self._ensure_producer()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            ready.set_exception(exc)
        else:
            ready.set_result(None)

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Pending) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(TransactionAbortedError("the committer stopped"))

    def _ensure_producer(self) -> TransactionalProducer:
        if self.fenced is not None:
            raise ProducerFencedError(self.fenced)
        if self._producer is not None and self._producer.usable:
            return self._producer
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        producer = TransactionalProducer(
            self._config, self.transactional_id, transaction_timeout_s=self._txn_timeout_s
        )
        try:
            producer.init()
        except ProducerFencedError as exc:
            producer.close()
            self._fence(str(exc))
            raise
        except BaseException:
            producer.close()
            raise
        self._producer = producer
        return producer

    # -- one group commit --------------------------------------------------------------------------
    def _commit_safely(self, batch: list[_Pending]) -> None:
        """This thread never dies of one batch: a failure nobody foresaw fails the batch, and the producer
        is replaced (its registration aborts whatever the failure left open)."""
        try:
            self._commit(batch)
        except Exception as exc:
            log.exception("%s: committing %d unit(s) failed unexpectedly", self.transactional_id, len(batch))
            if self._producer is not None:
                self._producer.close()
                self._producer = None
            pending = [p for p in batch if not p.future.done()]
            self._fail(pending, TransactionAbortedError(f"{type(exc).__name__}: {exc}"), "failed")

    def _commit(self, batch: list[_Pending]) -> None:
        fitting: list[_Pending] = []
        for pending in batch:
            big = next((r for r in pending.unit.records if r.size() > self._max_record_bytes), None)
            if big is None:
                fitting.append(pending)
            else:
                self._fail(
                    [pending],
                    RecordTooLargeError(
                        f"a record for {big.topic} is {big.size()} bytes, above the limit of "
                        f"{self._max_record_bytes}: {pending.unit.label or 'unit'} cannot be committed"
                    ),
                    "failed",
                )
        if fitting:
            self._commit_group(fitting, may_split=True)

    def _commit_group(self, batch: list[_Pending], *, may_split: bool) -> None:
        split = False
        with self._guard():
            mine = [p for p in batch if p.unit.owner is None or self._owns(p.unit.owner)]
            gone = [p for p in batch if p not in mine]
            if gone:
                names = sorted({str(p.unit.owner) for p in gone})
                self._fail(gone, NotOwnedError(f"this process no longer owns {', '.join(names)}"), "refused")
            if not mine:
                return
            try:
                applied = self._transaction(mine)
            except ProducerFencedError as exc:
                self._fence(str(exc))
                self._fail(mine, exc, "fenced")
                return
            except OwnershipRefusedError as exc:
                self._fail(mine, exc, "refused")
                return
            except _Uncertain as exc:
                self._settle_uncertain(mine, exc)
                return
            except KafkaGlueError as exc:
                if not (may_split and len(mine) > 1):
                    self._fail(mine, exc, _outcome(exc))
                    return
                log.warning("a shared transaction of %d units failed (%s); retrying each", len(mine), exc)
                if self._observer is not None:
                    self._observer.transaction("aborted", len(mine))
                split = True
            else:
                self._apply(applied)
                if self._observer is not None:
                    self._observer.transaction("committed", len(mine))
                for pending in mine:
                    pending.future.set_result(Committed(len(pending.unit.records), len(mine) - 1))
                return
        if split:
            for pending in mine:
                self._commit_group([pending], may_split=False)

    def _transaction(self, batch: list[_Pending]) -> dict[CompactedTable, list[Applied]]:
        try:
            producer = self._ensure_producer()
        except ProducerFencedError:
            raise
        except KafkaGlueError as exc:
            raise TransactionAbortedError(f"no producer: {exc}") from exc
        written: dict[CompactedTable, list[Applied]] = {}

        def recorder(record: Record) -> Callable[[Message], None] | None:
            table = record.table
            if table is None:
                return None

            def delivered(msg: Message) -> None:
                entry = (record.key or b"", record.value, int(msg.partition() or 0), int(msg.offset() or 0))
                written.setdefault(table, []).append(entry)

            return delivered

        producer.begin()
        try:
            for pending in batch:
                for record in pending.unit.records:
                    producer.produce(
                        record.topic,
                        record.value,
                        key=record.key,
                        headers=record.headers,
                        on_delivery=recorder(record),
                    )
            producer.flush()
            offsets = self._offsets(batch)
            if offsets:
                assert self._fencing is not None
                producer.send_offsets(offsets, self._fencing.group_metadata())
        except BaseException:
            if producer.usable and producer.in_transaction:
                try:
                    producer.abort()
                except KafkaGlueError as exc:
                    log.warning("abort after a failed transaction also failed: %s", exc)
            raise
        try:
            producer.commit()
        except (TransactionAbortedError, ProducerFencedError, RecordTooLargeError):
            raise  # the transaction did not commit, for sure
        except KafkaGlueError as exc:
            raise _Uncertain(str(exc)) from exc
        return written

    def _offsets(self, batch: list[_Pending]) -> list[TopicPartition]:
        if self._fencing is None:
            return []
        merged: dict[tuple[str, int], int] = {}
        for pending in batch:
            marks = [self._fencing.marker(pending.unit.owner)] if pending.unit.owner is not None else []
            for tp in [*marks, *pending.unit.offsets]:
                merged[(tp.topic, tp.partition)] = max(merged.get((tp.topic, tp.partition), 0), tp.offset)
        return [TopicPartition(t, p, o) for (t, p), o in merged.items()]

    def _settle_uncertain(self, batch: list[_Pending], exc: _Uncertain) -> None:
        log.warning("%s: the commit's outcome is unknown (%s); settling it", self.transactional_id, exc)
        deadline = time.monotonic() + 2 * self._txn_timeout_s + 30
        while time.monotonic() < deadline:
            try:
                if self._producer is not None:
                    self._producer.close()
                self._producer = None
                self._ensure_producer()  # init_transactions: the old transaction is now decided
                if self._on_uncertain is not None:
                    self._on_uncertain()  # the caches learn whatever did commit
                break
            except ProducerFencedError:
                break
            except KafkaGlueError as retry:
                log.warning("settling the unknown commit failed, retrying: %s", retry)
                time.sleep(1.0)
        self._fail(batch, TransactionAbortedError(f"commit outcome was unknown ({exc}); redo"), "failed")

    def _fence(self, reason: str) -> None:
        if self.fenced is not None:
            return
        self.fenced = reason
        log.error("%s: %s; this process commits nothing any more", self.transactional_id, reason)
        if self._on_fenced is not None:
            self._on_fenced(reason)

    def _apply(self, written: dict[CompactedTable, list[Applied]]) -> None:
        for table, writes in written.items():
            table.apply(writes)

    def _fail(self, batch: list[_Pending], exc: BaseException, outcome: str) -> None:
        if self._observer is not None:
            self._observer.transaction(outcome, len(batch))
        for pending in batch:
            pending.future.set_exception(exc)

    # -- fencing helpers ---------------------------------------------------------------------------
    @contextmanager
    def _guard(self) -> Iterator[None]:
        if self._fencing is None:
            yield
            return
        with self._fencing.guard():
            yield

    def _owns(self, owner: str) -> bool:
        return self._fencing is None or self._fencing.owns(owner)


def _outcome(exc: KafkaGlueError) -> str:
    if isinstance(exc, TransactionTimedOutError):
        return "timed-out"
    return "failed" if isinstance(exc, RecordTooLargeError) else "aborted"
