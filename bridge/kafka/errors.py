"""The Kafka glue's exception tree. librdkafka's errors never leave the glue: they are translated here.

KafkaGlueError
├── KafkaUnavailableError        the cluster does not answer (retried by whoever owns the loop)
├── TopicConfigError / TopicCreationError
├── IncompatibleSchemaError      (bridge.kafka.registry)
├── CatchUpTimeoutError          (bridge.kafka.table)
├── TransactionAbortedError      nothing of the transaction became visible: redo it
│   ├── TransactionTimedOutError the coordinator aborted it after transaction.timeout.ms
│   ├── OwnershipRefusedError    the group coordinator refused this member's generation (a zombie)
│   └── NotOwnedError            this process no longer owns the connection the unit belongs to
├── RecordTooLargeError          a record above the size limit: the unit can never commit
├── ProducerFencedError          another process uses this transactional.id
└── FatalProducerError           the producer is unusable; a new one is needed
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from bridge.errors import BridgeError


class KafkaGlueError(BridgeError):
    """Base class for errors raised by the Kafka glue."""


class KafkaUnavailableError(KafkaGlueError):
    """The cluster did not answer (down, unreachable, or too slow); worth retrying later."""


class TopicConfigError(KafkaGlueError):
    """A topic exists with settings the bridge cannot work with (e.g. an internal topic not compacted)."""


class TopicCreationError(KafkaGlueError):
    """The broker refused to create a topic."""


class TransactionAbortedError(KafkaGlueError):
    """The open transaction was aborted: none of its records became visible; redo the batch."""


class TransactionTimedOutError(TransactionAbortedError):
    """The transaction stayed open longer than transaction.timeout.ms and the coordinator aborted it.

    librdkafka reports this exactly like a fence (`_FENCED`, from INVALID_PRODUCER_EPOCH): the producer is
    dead, but nobody took its transactional.id over, so a new producer with the same id may carry on."""


class OwnershipRefusedError(TransactionAbortedError):
    """The group coordinator refused the transaction's offsets: this member's generation is stale (it was
    paused or cut off while its work moved to another member)."""


class NotOwnedError(TransactionAbortedError):
    """The unit belongs to a connection this process no longer owns; it was not put into a transaction."""


class RecordTooLargeError(KafkaGlueError):
    """A record is larger than the producer may send; retrying cannot help."""


class ProducerFencedError(KafkaGlueError):
    """Another worker with the same transactional.id took over; this one must stop producing."""


class FatalProducerError(KafkaGlueError):
    """The producer is unusable (a fatal librdkafka error); create a new one."""


_UNAVAILABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)


def translate(exc: KafkaException, doing: str) -> KafkaGlueError:
    """The glue's error for a librdkafka failure while `doing` something (for consumers and admin calls;
    the transactional producer has its own, finer translation)."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        text = f"{doing}: {error.str()}"
        if error.code() in _UNAVAILABLE or error.retriable():
            return KafkaUnavailableError(text)
        return KafkaGlueError(text)
    return KafkaGlueError(f"{doing}: {exc}")
