"""Records of the topics a connection's owner reads (its commands; later its hints and control requests),
from one consumer per process and prefix.

The consumer is in assign mode with the group id `epic-bridge.<prefix>` and never joins the group: the
group's membership (bridge.kafka.membership) decides which process owns a connection, and the owner's
engine opens a *route* for each kind of topic the connection reads. Opening assigns the route's partitions
at the group's committed offsets (librdkafka fetches them with require_stable, as the consumer reads
read_committed); closing unassigns them. The offsets are only ever committed inside the owner's
transactions, with the results they produced (bridge.kafka.txn).

One thread polls the consumer and hands each record to its route; nothing else touches the consumer (the
client serialises calls on one handle). A route holds at most `max_pending` records: beyond that its
partitions are paused, never the fetch thread blocked, and resumed once the reader took its share. A route
belongs to one owner and one kind, so adding a kind of topic is adding a route, not a consumer.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from bridge.kafka.errors import KafkaGlueError, translate

log = logging.getLogger(__name__)

RouteKey = tuple[str, str]  # (owner, kind)


class Route:
    """The records of one owner's topics of one kind, in partition order, for one reader on the loop."""

    def __init__(self, key: RouteKey, topics: list[str], loop: asyncio.AbstractEventLoop, max_pending: int):
        self.key = key
        self.topics = topics
        self.partitions: list[TopicPartition] = []
        self.lag: dict[str, int] = {}  # records not yet read, per topic (refreshed every few seconds)
        self.paused = False
        self._loop = loop
        self._max_pending = max_pending
        self._items: collections.deque[Message] = collections.deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()

    def pending(self) -> int:
        return len(self._items)

    def pending_by_topic(self) -> dict[str, int]:
        with self._lock:
            return dict(collections.Counter(str(m.topic()) for m in self._items))

    def full(self) -> bool:
        return len(self._items) >= self._max_pending

    def wants_more(self) -> bool:
        return len(self._items) <= self._max_pending // 2

    def put(self, message: Message) -> None:
        """On the feed thread."""
        with self._lock:
            self._items.append(message)
        self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self, most: int, timeout_s: float) -> list[Message]:
        """Up to `most` records, waiting at most `timeout_s` for the first one."""
        if not self._items:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except TimeoutError:
                return []
        with self._lock:
            taken = [self._items.popleft() for _ in range(min(most, len(self._items)))]
            if not self._items:
                self._ready.clear()
        return taken


@dataclass
class _Op:
    run: Callable[[], Any]
    done: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class PartitionFeed:
    def __init__(
        self, kafka_config: Mapping[str, Any], group: str, *, max_pending: int = 1000, name: str = "feed"
    ) -> None:
        self._config = {
            **kafka_config,
            "group.id": group,  # the committed offsets of the owners' transactions; never joins
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
        self._max_pending = max_pending
        self._consumer: Consumer | None = None
        self._routes: dict[RouteKey, Route] = {}
        self._by_partition: dict[tuple[str, int], Route] = {}
        self._ops: queue.Queue[_Op] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._lag_at = 0.0

    # -- on the loop -------------------------------------------------------------------------------
    def start(self) -> None:
        self._consumer = Consumer(self._config)
        self._thread.start()

    async def open(self, owner: str, kind: str, topics: Iterable[str]) -> Route:
        """Assign every partition of `topics` to a new route, from the group's committed offsets."""
        route = Route((owner, kind), sorted(topics), asyncio.get_running_loop(), self._max_pending)
        await self._run(lambda: self._open(route))
        return route

    async def close(self, owner: str, kind: str | None = None) -> None:
        """Unassign the owner's routes (all kinds, or one); records not yet taken are dropped (the next
        owner reads them again from the committed offsets)."""
        await self._run(lambda: self._close(owner, kind))

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    async def _run(self, fn: Callable[[], Any]) -> Any:
        if not self._thread.is_alive():
            raise KafkaGlueError("the partition feed is not running")
        op = _Op(fn)
        self._ops.put(op)
        return await asyncio.wrap_future(op.done)

    # -- on the feed thread ------------------------------------------------------------------------
    def _open(self, route: Route) -> None:
        assert self._consumer is not None
        partitions: list[TopicPartition] = []
        for topic in route.topics:
            metadata = self._consumer.list_topics(topic, timeout=30).topics.get(topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                raise KafkaGlueError(f"cannot read {topic}: {metadata.error if metadata else 'missing'}")
            partitions += [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        self._close(*route.key)
        route.partitions = partitions
        self._routes[route.key] = route
        for tp in partitions:
            self._by_partition[(tp.topic, tp.partition)] = route
        # Without an offset, librdkafka starts each partition at the group's committed offset.
        self._consumer.incremental_assign(partitions)

    def _close(self, owner: str, kind: str | None) -> None:
        assert self._consumer is not None
        for key in [k for k in self._routes if k[0] == owner and (kind is None or k[1] == kind)]:
            route = self._routes.pop(key)
            for tp in route.partitions:
                self._by_partition.pop((tp.topic, tp.partition), None)
            if route.partitions:
                self._consumer.incremental_unassign(route.partitions)

    def _loop(self) -> None:
        assert self._consumer is not None
        try:
            while not self._stopping.is_set():
                self._serve_ops()
                if not self._by_partition:
                    time.sleep(0.05)
                    continue
                for message in self._fetch():
                    self._dispatch(message)
                self._flow()
                self._report_lag()
        except Exception:
            log.exception("the partition feed stopped")
            raise
        finally:
            self._serve_ops()
            self._consumer.close()

    def _fetch(self, most: int = 500, wait_s: float = 0.1) -> list[Message]:
        """The records there are, handed on as soon as the first arrives. `consume(n, timeout)` returns
        only once it has n records or the timeout passed, so a lone command would wait out the whole
        timeout (measured: 50 ms on average for 0.1 s); `poll` returns with the first record, and
        `consume(n, 0)` then takes whatever else is already fetched, without waiting. `wait_s` bounds how
        long an open or close request waits for this thread."""
        assert self._consumer is not None
        first = self._consumer.poll(wait_s)
        if first is None:
            return []
        return [first, *self._consumer.consume(most - 1, 0)]

    def _serve_ops(self) -> None:
        while True:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                return
            if not op.done.set_running_or_notify_cancel():
                continue
            try:
                op.done.set_result(op.run())
            except KafkaException as exc:
                op.done.set_exception(translate(exc, "assigning partitions"))
            except Exception as exc:  # noqa: BLE001 - handed to the caller on the loop
                op.done.set_exception(exc)

    def _dispatch(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            log.warning("feed: %s", error.str())
            return
        route = self._by_partition.get((str(message.topic()), int(message.partition() or 0)))
        if route is not None:  # else: unassigned meanwhile
            route.put(message)

    def _flow(self) -> None:
        """Pause a route that holds enough; resume it once its reader caught up."""
        assert self._consumer is not None
        for route in self._routes.values():
            if not route.paused and route.full():
                self._consumer.pause(route.partitions)
                route.paused = True
            elif route.paused and route.wants_more():
                self._consumer.resume(route.partitions)
                route.paused = False

    def _report_lag(self, every_s: float = 5.0) -> None:
        assert self._consumer is not None
        now = time.monotonic()
        if now - self._lag_at < every_s:
            return
        self._lag_at = now
        for route in self._routes.values():
            lag: dict[str, int] = {t: 0 for t in route.topics} | route.pending_by_topic()
            try:
                for position in self._consumer.position(route.partitions):
                    _low, high = self._consumer.get_watermark_offsets(position, cached=True)
                    if position.offset >= 0 and high >= 0:
                        lag[position.topic] += max(0, high - position.offset)
            except KafkaException as exc:
                log.debug("no lag figures this time: %s", exc)
                continue
            route.lag = lag
