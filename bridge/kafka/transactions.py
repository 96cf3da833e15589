"""A transactional producer that never loses an error.

Delivery errors are latched by the delivery callback and raised at the next produce or commit (the
Quix Streams pattern); librdkafka's transactional error classes are translated into three outcomes the
callers act on: retry the call, redo the batch (TransactionAbortedError), or stop the worker because
another one owns the transactional.id now (ProducerFencedError).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from bridge.kafka.errors import KafkaGlueError

log = logging.getLogger(__name__)

_FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


class ProducerFencedError(KafkaGlueError):
    """Another worker with the same transactional.id took over; this one must stop producing."""


class TransactionAbortedError(KafkaGlueError):
    """The open transaction was aborted: none of its records became visible; redo the batch."""


class FatalProducerError(KafkaGlueError):
    """The producer is unusable (a fatal librdkafka error); create a new one."""


class TransactionalProducer:
    def __init__(
        self,
        config: Mapping[str, Any],
        transactional_id: str,
        timeout_s: float = 30.0,
        retries: int = 5,
    ) -> None:
        self._producer = Producer(
            {
                "linger.ms": 10,
                "compression.type": "zstd",
                **config,
                "transactional.id": transactional_id,
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        self.transactional_id = transactional_id
        self._timeout_s = timeout_s
        self._retries = retries
        self._latched: KafkaError | None = None
        self._open = False
        self._dead = False  # fenced or fatal: only closing is left

    # -- lifecycle ---------------------------------------------------------------------------------
    def init(self) -> None:
        """Register the transactional.id: fences older producers and aborts their open transaction."""
        self._call(self._producer.init_transactions, self._timeout_s)

    def begin(self) -> None:
        self._latched = None
        self._call(self._producer.begin_transaction)
        self._open = True

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
        except (ProducerFencedError, FatalProducerError):
            self._dead = True  # the transaction is dead either way
        if not self._dead:
            self._producer.flush(self._timeout_s)

    @property
    def in_transaction(self) -> bool:
        return self._open

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
    ) -> None:
        self._raise_latched()
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._on_delivery}
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
    def _on_delivery(self, error: KafkaError | None, _msg: Message) -> None:
        if error is not None and self._latched is None:
            self._latched = error

    def _raise_latched(self) -> None:
        if self._latched is not None:
            error, self._latched = self._latched, None
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
        error = exc.args[0]
        if not isinstance(error, KafkaError):
            raise FatalProducerError(str(exc)) from exc
        if error.code() in _FENCED_CODES:
            self._open = False
            self._dead = True
            raise ProducerFencedError(
                f"transactional.id {self.transactional_id} is now used by another worker: {error.str()}"
            ) from exc
        if error.fatal():
            self._open = False
            self._dead = True
            raise FatalProducerError(error.str()) from exc
        if error.txn_requires_abort():
            try:
                self._producer.abort_transaction(self._timeout_s)
            finally:
                self._open = False
            raise TransactionAbortedError(error.str()) from exc
        raise exc
