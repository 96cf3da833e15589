"""Which connections this process owns: membership of the consumer group `epic-bridge.<prefix>`.

Work is owned per connection, and Kafka's own group protocol hands connections out: every connection
has a single-partition, empty topic `<prefix>._tasks.<connection>`, every bridge process of a prefix joins
one consumer group subscribed to the `_tasks` topics of its configured connections, and the member that is
assigned a connection's partition owns that connection. The group coordinator spreads the partitions over
the live members; `cooperative-sticky` moves only what must move when a member comes or goes. Membership
is dynamic on purpose: a static member (`group.instance.id`) does not leave the group when it closes, so a
clean stop would not hand its work over until the session timed out.

The consumer never receives a record (the topics stay empty); a thread of its own polls it continuously
so the group protocol and the rebalance callbacks run and `max.poll.interval.ms` is never exceeded. The
callbacks do bounded work: they tell the listener and return (a revocation waits, at most the listener's
handover time, for the connection's work to commit and stop). No other thread calls this consumer: the
client serialises calls on one handle and a polling thread starves the others, so the group metadata the
committer needs is copied after every poll (a copy older than the truth can only get a commit refused,
never accepted), and `settle` uses a consumer of its own that never joins.

Fencing (KIP-447): every transaction that writes on behalf of a connection also commits an offset for
that connection's `_tasks` partition, with this consumer's group metadata (see bridge.kafka.txn). A member
whose generation is stale cannot commit, and a new owner's `settle()` (an OffsetFetch with
`require_stable`, which librdkafka sends for a `read_committed` consumer) waits until any transaction
still open with offsets for that connection has committed or aborted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from bridge.kafka.errors import translate

log = logging.getLogger(__name__)


class MembershipListener(Protocol):
    """Called on the membership thread."""

    def gained(self, connections: list[str]) -> None:
        """Newly owned; must return at once (start the work elsewhere)."""
        ...

    def revoked(self, connections: list[str]) -> None:
        """Handed to another member: commit and stop the work (bounded), then return."""
        ...

    def lost(self, connections: list[str]) -> None:
        """Taken away without a handover (the session expired): stop at once, commit nothing."""
        ...


@dataclass(frozen=True)
class MembershipSettings:
    group: str
    client_id: str
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 3.0


class Membership:
    def __init__(
        self,
        kafka_config: Mapping[str, Any],
        settings: MembershipSettings,
        topics: Mapping[str, str],  # connection -> its _tasks topic
        listener: MembershipListener,
    ) -> None:
        self.settings = settings
        self._config = dict(kafka_config)
        self._topics = dict(topics)
        self._connections = {topic: name for name, topic in topics.items()}
        self._listener = listener
        self._lock = threading.RLock()  # the committer holds it for a whole transaction
        self._owned: dict[str, float] = {}  # connection -> wall-clock time it was gained
        self._consumer: Consumer | None = None
        self._offsets: Consumer | None = None  # same group id, never joins: for settle()
        self._metadata: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.joined = False  # an assignment arrived since the last (re)join
        self.error: str | None = None  # the consumer's last error, until the next assignment

    # -- what the committer needs (bridge.kafka.txn.Fencing) --------------------------------------
    def guard(self) -> AbstractContextManager[Any]:
        return self._lock

    def owns(self, connection: str) -> bool:
        return connection in self._owned

    def marker(self, connection: str) -> TopicPartition:
        return TopicPartition(self._topics[connection], 0, 0)

    def group_metadata(self) -> Any:
        return self._metadata

    # -- state ---------------------------------------------------------------------------------------
    def owned(self) -> dict[str, float]:
        """Owned connections and since when (Unix time)."""
        return dict(self._owned)

    def settle(self, connections: list[str], timeout_s: float) -> None:
        """Block until no transaction with offsets for these connections is pending (run off the loop)."""
        assert self._offsets is not None
        partitions = [TopicPartition(self._topics[c], 0) for c in connections]
        try:
            self._offsets.committed(partitions, timeout=timeout_s)
        except KafkaException as exc:
            raise translate(exc, f"settling the handover of {', '.join(connections)}") from exc

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._offsets = Consumer(
            {
                **self._config,
                "group.id": self.settings.group,
                "client.id": self.settings.client_id,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",  # committed() waits for pending transactions
            }
        )
        self._consumer = Consumer(
            {
                **self._config,
                "group.id": self.settings.group,
                "client.id": self.settings.client_id,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": int(self.settings.session_timeout_s * 1000),
                "heartbeat.interval.ms": int(self.settings.heartbeat_interval_s * 1000),
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "error_cb": self._on_error,
            }
        )
        self._consumer.subscribe(
            sorted(self._connections),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        name = f"membership {self.settings.group}"
        self._thread = threading.Thread(target=self._poll, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Leave the group (after the listener was told to stop everything): others take over at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _poll(self) -> None:
        assert self._consumer is not None
        try:
            while not self._stopping.is_set():
                msg = self._consumer.poll(0.2)
                self._metadata = self._consumer.consumer_group_metadata()
                error = None if msg is None else msg.error()
                if error is not None:
                    self._on_error(error)
        except Exception:
            log.exception("the group membership of %s stopped polling", self.settings.group)
            raise
        finally:
            started = time.monotonic()
            self._consumer.close()  # revokes what is left (the listener already stopped it) and leaves
            if self._offsets is not None:
                self._offsets.close()
            log.info("left the group %s in %.1fs", self.settings.group, time.monotonic() - started)

    # -- callbacks (membership thread) ---------------------------------------------------------------
    def _names(self, partitions: list[TopicPartition]) -> list[str]:
        return sorted({self._connections[p.topic] for p in partitions if p.topic in self._connections})

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._metadata = consumer.consumer_group_metadata()  # the new generation, before any commit uses it
        names = self._names(partitions)
        now = time.time()
        with self._lock:
            for name in names:
                self._owned[name] = now
        self.joined = True
        self.error = None
        if names:
            log.info("%s: gained %s", self.settings.group, ", ".join(names))
            self._listener.gained(names)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The rebalance already moved this member to a new generation: the handover's final commits
        # need it, not the copy taken before this poll.
        self._metadata = consumer.consumer_group_metadata()
        names = self._names(partitions)
        if not names:
            return
        log.info("%s: handing over %s", self.settings.group, ", ".join(names))
        try:
            self._listener.revoked(names)
        finally:
            self._release(names)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        names = self._names(partitions)
        self.joined = False
        if not names:
            return
        log.warning("%s: lost %s (session expired); their work stops uncommitted", self.settings.group, names)
        self._release(names)
        self._listener.lost(names)

    def _release(self, names: list[str]) -> None:
        with self._lock:  # waits for a transaction in flight: none starts for these afterwards
            for name in names:
                self._owned.pop(name, None)

    def _on_error(self, error: KafkaError) -> None:
        self.error = error.str()
        log.warning("%s: %s", self.settings.group, error.str())
