"""A transactional producer that never loses an error.

Delivery errors are latched by the delivery callback and raised at the next produce or flush (the Quix
Streams pattern); librdkafka's transactional error classes are translated (see bridge.kafka.errors) into
the outcomes callers act on: retry the call, redo the batch (TransactionAbortedError and its kinds), drop a
unit that can never commit (RecordTooLargeError), replace the producer (TransactionTimedOutError,
FatalProducerError), or stop because another process owns the transactional.id now (ProducerFencedError).

A fence and a transaction timeout look the same from librdkafka (`_FENCED` after INVALID_PRODUCER_EPOCH /
PRODUCER_FENCED): the coordinator bumps the producer epoch in both cases. They are told apart by how long
the transaction had been open: past `transaction.timeout.ms` the coordinator's own abort is the cause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from bridge.kafka.errors import (
    FatalProducerError,
    KafkaGlueError,
    OwnershipRefusedError,
    ProducerFencedError,
    RecordTooLargeError,
    TransactionAbortedError,
    TransactionTimedOutError,
    translate,
)

__all__ = [
    "FatalProducerError",
    "OwnershipRefusedError",
    "ProducerFencedError",
    "RecordTooLargeError",
    "TransactionAbortedError",
    "TransactionTimedOutError",
    "TransactionalProducer",
]

log = logging.getLogger(__name__)

_FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
# The group coordinator's answer to offsets sent with a stale member id or generation (KIP-447).
_GENERATION_CODES = frozenset(
    {KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.FENCED_INSTANCE_ID}
)
_TOO_LARGE_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


class TransactionalProducer:
    def __init__(
        self,
        config: Mapping[str, Any],
        transactional_id: str,
        timeout_s: float = 30.0,
        retries: int = 5,
        transaction_timeout_s: float | None = None,
    ) -> None:
        if transaction_timeout_s is None:  # librdkafka's own default unless the config sets one
            transaction_timeout_s = int(config.get("transaction.timeout.ms", 60000)) / 1000
        self._producer = Producer(
            {
                # Costs no latency: a transaction flushes right after producing, and flush() sends what is
                # queued at once (measured: produce + flush ~2 ms at linger.ms 0, 2, 5 and 10 alike); while
                # many records are produced it lets them leave in fewer, better-compressed batches.
                "linger.ms": 10,
                "compression.type": "zstd",
                **config,
                "transactional.id": transactional_id,
                "transaction.timeout.ms": int(transaction_timeout_s * 1000),
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        self.transactional_id = transactional_id
        self.transaction_timeout_s = transaction_timeout_s
        self._timeout_s = timeout_s
        self._retries = retries
        self._latched: KafkaError | None = None
        self._open = False
        self._opened_at = 0.0
        self._dead = False  # fenced, timed out or fatal: only closing is left

    # -- lifecycle ---------------------------------------------------------------------------------
    def init(self) -> None:
        """Register the transactional.id: fences older producers and aborts their open transaction."""
        self._call(self._producer.init_transactions, self._timeout_s)

    def begin(self) -> None:
        self._latched = None
        self._call(self._producer.begin_transaction)
        self._open = True
        self._opened_at = time.monotonic()

    def flush(self) -> None:
        """Wait until every record of the open transaction is on the broker (or raise why not)."""
        try:
            remaining = self._producer.flush(self._timeout_s)
        except KafkaException as exc:
            self._translate(exc)
            raise
        except Exception as exc:  # the client failed without a Kafka error (seen after a fence)
            self._raise_latched()
            self._open = False
            self._dead = True
            raise FatalProducerError(f"flush failed: {type(exc).__name__}: {exc}") from exc
        self._raise_latched()
        if remaining:
            self.abort()
            raise TransactionAbortedError(f"{remaining} record(s) not delivered in {self._timeout_s:.0f}s")

    def commit(self) -> None:
        """Flush and commit. Raises TransactionAbortedError if the batch must be redone."""
        try:
            self._call(self._producer.commit_transaction, self._timeout_s)
        finally:
            self._open = False
        self._raise_latched()

    def abort(self) -> None:
        if not self._open:
            return
        try:
            self._call(self._producer.abort_transaction, self._timeout_s)
        finally:
            self._open = False

    def close(self) -> None:
        """Abort anything half-done; nothing uncommitted ever becomes visible."""
        try:
            self.abort()
        except KafkaGlueError:
            self._dead = True  # the transaction is dead either way
        if not self._dead:
            self._producer.flush(self._timeout_s)

    @property
    def in_transaction(self) -> bool:
        return self._open

    @property
    def usable(self) -> bool:
        """False once fenced, timed out or failed fatally: a new producer is needed."""
        return not self._dead

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """begin ... commit; any exception in the block aborts (unless this producer was fenced)."""
        self.begin()
        try:
            yield
        except BaseException:
            try:
                self.abort()
            except KafkaGlueError as exc:
                log.warning("abort after a failed batch also failed: %s", exc)
            raise
        self.commit()

    # -- records -----------------------------------------------------------------------------------
    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        on_delivery: Callable[[Message], None] | None = None,
    ) -> None:
        """Stage one record in the open transaction; `on_delivery` gets it once the broker has it."""
        self._raise_latched()

        def delivered(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                if self._latched is None:
                    self._latched = error
            elif on_delivery is not None:
                on_delivery(msg)

        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": delivered}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve delivery reports, then retry
            except KafkaException as exc:
                self._translate(exc)
        self._producer.poll(0)

    def send_offsets(self, offsets: list[TopicPartition], group_metadata: Any) -> None:
        """Commit consumed offsets as part of the open transaction (consume-transform-produce)."""
        self._call(self._producer.send_offsets_to_transaction, offsets, group_metadata, self._timeout_s)

    # -- errors ------------------------------------------------------------------------------------
    def _raise_latched(self) -> None:
        if self._latched is None:
            return
        error, self._latched = self._latched, None
        if error.code() in _FENCED_CODES or error.fatal():
            self._raise_for(error, None)
        if self._open:
            try:
                self.abort()
            except KafkaGlueError as exc:
                log.warning("abort after a failed delivery also failed: %s", exc)
        if error.code() in _TOO_LARGE_CODES:
            raise RecordTooLargeError(f"the broker refused a record of this transaction: {error.str()}")
        raise TransactionAbortedError(f"a record of this transaction was not delivered: {error}")

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        for attempt in range(self._retries + 1):
            try:
                return fn(*args)
            except KafkaException as exc:
                error = exc.args[0]
                if isinstance(error, KafkaError) and error.retriable() and attempt < self._retries:
                    log.info("retrying %s after a retriable error: %s", fn.__name__, error)
                    time.sleep(min(0.1 * 2**attempt, 2.0))
                    continue
                self._translate(exc)
        raise AssertionError("unreachable")

    def _translate(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError):
            self._open = False
            self._dead = True
            raise FatalProducerError(str(exc)) from exc
        self._raise_for(error, exc)

    def _raise_for(self, error: KafkaError, exc: KafkaException | None) -> None:
        code = error.code()
        if code in _FENCED_CODES:
            open_for = time.monotonic() - self._opened_at if self._open else 0.0
            self._open = False
            self._dead = True
            if open_for >= self.transaction_timeout_s:
                raise TransactionTimedOutError(
                    f"the transaction was open {open_for:.1f}s, longer than transaction.timeout.ms "
                    f"({self.transaction_timeout_s:.0f}s), and the coordinator aborted it: {error.str()}"
                ) from exc
            raise ProducerFencedError(
                f"transactional.id {self.transactional_id} is now used by another worker: {error.str()}"
            ) from exc
        if error.fatal():
            self._open = False
            self._dead = True
            raise FatalProducerError(error.str()) from exc
        if code in _TOO_LARGE_CODES:
            if self._open:
                self.abort()
            raise RecordTooLargeError(error.str()) from exc
        if error.txn_requires_abort():
            try:
                self._producer.abort_transaction(self._timeout_s)
            except KafkaException as abort_failed:
                log.warning("abort after an abortable error also failed: %s", abort_failed)
                self._dead = True
            finally:
                self._open = False
            if code in _GENERATION_CODES:
                raise OwnershipRefusedError(
                    f"the group coordinator refused this member's offsets: {error.str()}"
                ) from exc
            raise TransactionAbortedError(error.str()) from exc
        if exc is None:
            raise KafkaGlueError(error.str())
        raise translate(exc, "kafka transaction") from exc
