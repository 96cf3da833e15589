"""One topic prefix in this process: its internal tables, its transaction helper, its group membership,
and a worker per configured connection that runs while this process owns the connection.

Start-up, in the order exactly-once needs (retried with backoff until it works; the process never exits
because Kafka or the registry is away, /readyz says why it waits):
1. topics: the internal ones, one `_tasks` topic per connection, each connection's event topics; schemas;
2. the transaction helper registers `epic-bridge.<instance id>.<prefix>`, which aborts whatever a previous
   run of this process left open;
3. the process joins the group `epic-bridge.<prefix>`.

When connections are gained: (1) wait until no transaction of their previous owner is pending (an
OffsetFetch with require_stable of their `_tasks` markers), (2) catch the caches up to a snapshot taken
after that, (3) commit an ownership record (`[connection, "_owner"]` in `_offsets`, for `epic-bridge
status`), (4) start their workers. When they are revoked, their workers commit and stop before the
membership lets them go (bounded by `handover_timeout_s`); when they are lost, the membership refuses their
commits first, then their workers stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

from bridge.config.models import ConnectionConfig
from bridge.engine.worker import ConnectionWorker, WorkerParts
from bridge.kafka.context import KafkaContext
from bridge.kafka.feed import PartitionFeed
from bridge.kafka.internal import InternalTables
from bridge.kafka.membership import Membership, MembershipSettings
from bridge.kafka.topics import TopicSpec, ensure_topics, internal_topic_specs, tasks_topic
from bridge.kafka.txn import Committer, Unit
from bridge.metrics import Metrics
from bridge.sink.ledger import DAY_MS
from bridge.sink.service import SinkService
from bridge.source.cursors import CursorStore
from bridge.source.service import SourceService, source_resources
from bridge.supervise import wait_or_stop

log = logging.getLogger(__name__)

Side = Literal["source", "sink"]
T = TypeVar("T")

START_RETRY_MIN_S, START_RETRY_MAX_S = 1.0, 30.0
SETTLE_TIMEOUT_S = 120.0


class _CommitMetrics:
    def __init__(self, metrics: Metrics, prefix: str) -> None:
        self._metrics = metrics
        self._prefix = prefix

    def transaction(self, outcome: str, units: int) -> None:
        self._metrics.commits.labels(self._prefix, outcome).inc(units)


def role_of(sides: frozenset[Side]) -> str | None:
    """Processes running one side only form a group of their own (`--only source|sink`)."""
    return None if len(sides) != 1 else next(iter(sides))


class PrefixEngine:
    def __init__(
        self,
        prefix: str,
        configs: Sequence[ConnectionConfig],
        kafka: KafkaContext,
        *,
        sides: frozenset[Side],
        store: Any,
        metrics: Metrics,
    ) -> None:
        self.prefix = prefix
        self.configs = list(configs)
        self.kafka = kafka
        self.sides = sides
        self.store = store
        self.metrics = metrics
        role = role_of(sides)
        self.group = ".".join(["epic-bridge", prefix, *([role] if role else [])])
        self.owner_key = "_owner" + (f".{role}" if role else "")
        self.transactional_id = kafka.transactional_id(prefix, *([role] if role else []))
        self.workers: dict[str, ConnectionWorker] = {}
        self.tables: InternalTables | None = None
        self.committer: Committer | None = None
        self.membership: Membership | None = None
        self.feed: PartitionFeed | None = None
        self.problem: str | None = "starting"
        self._loop: asyncio.AbstractEventLoop | None = None
        # Blocking Kafka calls of this engine (start-up, settling a handover) run here, never on the loop
        # or asyncio's shared executor.
        self._blocking = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"kafka {prefix}")
        self._wanted: set[str] = set()  # gained and not revoked since, as seen on the loop
        self._takeovers: set[asyncio.Task[None]] = set()
        self._closing = False
        metrics.owned_connections.labels(prefix).set_function(self._owned_connections)
        metrics.owned_tasks.labels(prefix).set_function(self._owned_tasks)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Start (retrying until it works), serve until `stop`, then hand everything over."""
        self._loop = asyncio.get_running_loop()
        try:
            if await self._start_with_retries(stop):
                await stop.wait()
        finally:
            await self._shutdown()

    async def _start_with_retries(self, stop: asyncio.Event) -> bool:
        delay = START_RETRY_MIN_S
        while not stop.is_set():
            try:
                await self._call(self._start)
                self.problem = None
                return True
            except Exception as exc:  # noqa: BLE001 - Kafka, registry, topic settings: say why, retry
                self.problem = f"cannot start: {type(exc).__name__}: {exc}"[:300]
                log.error("%s: %s (retry in %.0fs)", self.prefix, self.problem, delay)
                await self._call(self._close_clients)
                await wait_or_stop(stop, delay)
                delay = min(delay * 2, START_RETRY_MAX_S)
        return False

    def _start(self) -> None:
        settings = self.kafka.settings
        rf, isr = settings.topic_replication_factor, settings.topic_min_insync_replicas
        ensure_topics(
            self.kafka.admin,
            [
                *internal_topic_specs(
                    self.prefix,
                    settings.internal_topic_partitions,
                    rf,
                    isr,
                    results_retention_ms=int(settings.idempotency_window_days * DAY_MS),
                ),
                *(TopicSpec.compacted(tasks_topic(self.prefix, c.name), 1, rf, isr) for c in self.configs),
            ],
        )
        self.tables = tables = InternalTables.open(self.kafka, self.prefix)
        self.membership = membership = Membership(
            self.kafka.config,
            MembershipSettings(
                self.group,
                client_id=f"epic-bridge.{settings.instance_id}",
                session_timeout_s=settings.session_timeout_s,
                heartbeat_interval_s=settings.heartbeat_interval_s,
            ),
            {c.name: tasks_topic(self.prefix, c.name) for c in self.configs},
            self,
        )
        self.committer = committer = Committer(
            self.kafka.config,
            self.transactional_id,
            fencing=membership,
            transaction_timeout_s=settings.transaction_timeout_s,
            on_uncertain=lambda: tables.catch_up(SETTLE_TIMEOUT_S),
            on_fenced=lambda _reason: self._on_loop(self._fenced, []),
            observer=_CommitMetrics(self.metrics, self.prefix),
            name=f"committer {self.prefix}",
        )
        committer.start().result()  # registers the transactional id: aborts what a predecessor left open
        if "sink" in self.sides:
            self.feed = PartitionFeed(self.kafka.config, self.group, name=f"feed {self.prefix}")
            self.feed.start()
        for cfg in self.configs:
            source = None
            if "source" in self.sides and source_resources(cfg):
                source = SourceService.prepare(cfg, self.kafka, tables, committer)
            sink = None
            if self.feed is not None:
                sink = SinkService.prepare(cfg, self.kafka, tables, committer, self.feed, self.metrics)
            parts = WorkerParts(source, sink, self.store, self.metrics)
            self.workers[cfg.name] = ConnectionWorker(cfg, parts)
        membership.start()
        log.info("%s: joining the group %s as %s", self.prefix, self.group, settings.instance_id)

    def _close_clients(self) -> None:
        if self.membership is not None:
            self.membership.stop()
        if self.feed is not None:
            self.feed.stop()
        if self.committer is not None:
            self.committer.close()
        if self.tables is not None:
            self.tables.close()
        self.membership = self.committer = self.tables = self.feed = None

    async def _shutdown(self) -> None:
        self._closing = True
        for task in list(self._takeovers):
            task.cancel()
        await asyncio.gather(*self._takeovers, return_exceptions=True)
        await asyncio.gather(*(w.stop(handover=True) for w in self.workers.values()))
        self._wanted.clear()
        await self._call(self._close_clients)  # leaves the group: the others take over at once
        self._blocking.shutdown(wait=False)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._blocking.submit(fn, *args))

    # -- the membership's listener (called on the membership thread) -------------------------------
    def gained(self, connections: list[str]) -> None:
        self._on_loop(self._gain, connections)

    def revoked(self, connections: list[str]) -> None:
        self.metrics.rebalances.labels(self.prefix, "revoked").inc(len(connections))
        started = time.monotonic()
        timeout = self.kafka.settings.handover_timeout_s
        future = self._on_loop_wait(lambda: self._stop_workers(connections, handover=True))
        if future is None:
            return
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            log.warning(
                "%s: %s did not stop within %.0fs; what they did not commit is dropped",
                self.prefix,
                ", ".join(connections),
                timeout,
            )
        self.metrics.handover_duration.labels(self.prefix).observe(time.monotonic() - started)

    def lost(self, connections: list[str]) -> None:
        self.metrics.rebalances.labels(self.prefix, "lost").inc(len(connections))
        self._on_loop_wait(lambda: self._stop_workers(connections, handover=False))

    def _on_loop(self, fn: Callable[[list[str]], None], connections: list[str]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, connections)

    def _on_loop_wait(self, work: Callable[[], Awaitable[None]]) -> concurrent.futures.Future[None] | None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        return asyncio.run_coroutine_threadsafe(_awaited(work), loop)

    # -- on the loop -------------------------------------------------------------------------------
    def _gain(self, connections: list[str]) -> None:
        if self._closing:
            return
        self.metrics.rebalances.labels(self.prefix, "gained").inc(len(connections))
        self._wanted.update(connections)
        task = asyncio.create_task(self._take_over(connections))
        self._takeovers.add(task)
        task.add_done_callback(self._takeovers.discard)

    async def _take_over(self, connections: list[str]) -> None:
        membership, tables, committer = self.membership, self.tables, self.committer
        assert membership is not None and tables is not None and committer is not None
        delay = START_RETRY_MIN_S
        started = time.monotonic()
        while True:
            wanted = [c for c in connections if c in self._wanted]
            if not wanted or self._closing:
                return
            try:
                await self._call(membership.settle, wanted, SETTLE_TIMEOUT_S)
                await tables.catch_up_async(SETTLE_TIMEOUT_S)
                break
            except Exception as exc:  # noqa: BLE001 - Kafka hiccup during a takeover: retry while owned
                log.warning("%s: taking over %s failed (retry in %.0fs): %s", self.prefix, wanted, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, START_RETRY_MAX_S)
        wanted = [c for c in connections if c in self._wanted]
        await asyncio.gather(*(self._record_owner(c) for c in wanted), return_exceptions=True)
        for name in wanted:
            if name in self._wanted and not self._closing:
                self.workers[name].start()
        log.info(
            "%s: took over %s in %.1fs",
            self.prefix,
            ", ".join(wanted) or "nothing",
            time.monotonic() - started,
        )

    def _fenced(self, _connections: list[str]) -> None:
        """Another process uses this instance id: commit nothing, and leave the group so the connections
        go to processes that can work; stay up (not ready) until stopped, instead of fighting back."""
        if self._closing:
            return
        self._closing = True

        async def step_aside() -> None:
            await asyncio.gather(*(w.stop(handover=False) for w in self.workers.values()))
            self._wanted.clear()
            membership = self.membership
            if membership is not None:
                await self._call(membership.stop)

        task = asyncio.create_task(step_aside())
        self._takeovers.add(task)
        task.add_done_callback(self._takeovers.discard)

    async def _record_owner(self, connection: str) -> None:
        assert self.committer is not None and self.tables is not None
        record = CursorStore(self.tables.offsets).record(
            connection,
            self.owner_key,
            {
                "instance": self.kafka.settings.instance_id,
                "host": socket.gethostname(),
                "since": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )
        await self.committer.commit(Unit([record], owner=connection, label=f"{connection} owner"))

    async def _stop_workers(self, connections: list[str], *, handover: bool) -> None:
        self._wanted.difference_update(connections)
        await asyncio.gather(
            *(self.workers[c].stop(handover=handover) for c in connections if c in self.workers)
        )

    def _owned_connections(self) -> float:
        return float(sum(1 for w in self.workers.values() if w.running))

    def _owned_tasks(self) -> float:
        return float(sum(w.tasks() for w in self.workers.values() if w.running))

    # -- readiness ---------------------------------------------------------------------------------
    def check(self) -> str | None:
        """The membership: started, joined, not fenced."""
        if self.problem is not None:
            raise RuntimeError(self.problem)
        if self.committer is not None and self.committer.fenced is not None:
            raise RuntimeError(
                f"another process uses the instance id {self.kafka.settings.instance_id!r} "
                f"(give each process its own EPIC_BRIDGE_INSTANCE_ID): {self.committer.fenced}"
            )
        membership = self.membership
        if membership is None or not membership.joined:
            reason = "" if membership is None or membership.error is None else f": {membership.error}"
            raise RuntimeError(f"joining the group {self.group}{reason}")
        return f"{len(membership.owned())} of {len(self.configs)} connection(s) owned here"

    def connection_check(self, name: str, loop: asyncio.AbstractEventLoop) -> Callable[[], str | None]:
        def check() -> str | None:
            worker = self.workers.get(name)
            if worker is None or self.membership is None:
                raise RuntimeError(f"not started: {self.problem or 'starting'}")
            return worker.check(loop, owned=self.membership.owns(name))

        return check


async def _awaited(work: Callable[[], Awaitable[None]]) -> None:
    await work()
