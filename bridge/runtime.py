"""The `epic-bridge run` process: every configured connection's source poll tasks and sink.

Start-up: create topics, register schemas and fence older workers (every producer's
`init_transactions()`), then rebuild the local caches from the compacted topics, then open the
connections and poll. SIGTERM/SIGINT set one stop event: each task commits the batch it holds (or,
if a commit fails, nothing of it becomes visible) and returns; producers are closed, aborting
anything still open. A second signal cancels what is left; uncommitted work is aborted, never half
published. A connection that cannot be opened (server down, auth refused) is retried with backoff
without holding up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.health import Check, Heartbeat, add_health_routes, kafka_check, registry_check, token_check
from bridge.kafka.context import KafkaContext
from bridge.metrics import Metrics
from bridge.source.service import InternalTables, SourceService, source_resources
from bridge.web import WebServer

log = logging.getLogger(__name__)

Side = Literal["source", "sink"]
SinkRunner = Callable[[Connection, ConnectionConfig, KafkaContext, asyncio.Event], Awaitable[None]]

RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0


def sink_runner() -> SinkRunner | None:
    """`bridge.sink.service.run_sink` when the sink side is installed in this build."""
    if importlib.util.find_spec("bridge.sink.service") is None:
        return None
    module = importlib.import_module("bridge.sink.service")
    runner: SinkRunner | None = getattr(module, "run_sink", None)
    return runner


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class Runtime:
    def __init__(
        self,
        configs: Sequence[ConnectionConfig],
        kafka: KafkaContext,
        *,
        sides: frozenset[Side] = frozenset({"source", "sink"}),
        credential_store: Any = None,
        web: WebServer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.configs = list(configs)
        self.web = web
        self.metrics = metrics if metrics is not None else Metrics()
        self.heartbeat = Heartbeat()
        # read by /readyz at request time; a connection adds its token check once it is open
        self.checks: dict[str, Check] = {
            "kafka": kafka_check(kafka.admin.list_topics),
            "registry": registry_check(kafka.registry.get_subjects),
        }
        self.kafka = kafka
        self.sides = sides
        self.store = credential_store
        self.stop = asyncio.Event()
        self.tables: dict[str, InternalTables] = {}
        self.sources: dict[str, SourceService] = {}
        self.failed = False

    # -- start-up ----------------------------------------------------------------------------------
    def _prepare_sources(self) -> None:
        """Topics, schemas, producers (fencing), then the caches — blocking; runs in a thread."""
        for cfg in self.configs:
            if not source_resources(cfg):
                continue
            tables = self.tables.get(cfg.topic_prefix)
            if tables is None:
                tables = self.tables[cfg.topic_prefix] = InternalTables.open(self.kafka, cfg.topic_prefix)
            self.sources[cfg.name] = SourceService.prepare(cfg, self.kafka, tables)
        for prefix, tables in self.tables.items():
            tables.catch_up()
            keys = len(tables.state)
            self.metrics.state_store_keys.labels(tables.state.topic).set(keys)
            log.info("caches of %s caught up (%d fingerprints)", prefix, keys)

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        sink = sink_runner() if "sink" in self.sides else None
        if "sink" in self.sides and sink is None:
            log.info("the sink side is not part of this build; running the source side only")
        heartbeat = asyncio.create_task(self.heartbeat.run(self.stop))
        try:
            if self.web is not None:
                add_health_routes(
                    self.web, metrics=self.metrics, heartbeat=self.heartbeat, checks=self.checks
                )
                self.web.start()  # the JWK Set Epic fetches, /metrics, /healthz, /readyz
                log.info("serving %s", self.web.url)
            if "source" in self.sides:
                try:
                    await asyncio.to_thread(self._prepare_sources)
                except Exception as exc:  # noqa: BLE001 - Kafka, registry or topic settings: say why, exit 1
                    log.error("the source side cannot start: %s: %s", type(exc).__name__, exc)
                    self.failed = True
                    return 1
            jobs = [self._connection(cfg, sink) for cfg in self.configs]
            await asyncio.gather(*jobs)
        finally:
            for service in self.sources.values():
                service.close()
            for tables in self.tables.values():
                tables.close()
            if self.web is not None:
                self.web.stop()
            self.stop.set()
            await heartbeat
        return 1 if self.failed else 0

    # -- one connection ----------------------------------------------------------------------------
    async def _connection(self, cfg: ConnectionConfig, sink: SinkRunner | None) -> None:
        source = self.sources.get(cfg.name)
        if source is None and sink is None:
            return
        delay = RETRY_MIN_S
        while not self.stop.is_set():
            try:
                connection = await Connection.open(cfg, store=self.store, metrics=self.metrics)
            except Exception as exc:  # noqa: BLE001 - any failure to open is retried, not fatal
                log.warning("%s: cannot open the connection (retry in %.0fs): %s", cfg.name, delay, exc)
                await _wait(self.stop, delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self.checks[f"connection:{cfg.name}"] = token_check(
                asyncio.get_running_loop(), connection.tokens.get
            )
            if source is not None:
                self.checks[f"source:{cfg.name}"] = source.check_not_fenced
            try:
                await self._serve(cfg, connection, source, sink)
                return
            except Exception:
                log.exception("%s: stopped by an unexpected error; the bridge shuts down", cfg.name)
                self.failed = True
                self.stop.set()
                return
            finally:
                self.checks.pop(f"connection:{cfg.name}", None)
                await connection.aclose()

    async def _serve(
        self,
        cfg: ConnectionConfig,
        connection: Connection,
        source: SourceService | None,
        sink: SinkRunner | None,
    ) -> None:
        jobs: list[Awaitable[None]] = []
        if source is not None:
            jobs.append(self._source(cfg, connection, source))
        if sink is not None:
            if "metrics" in inspect.signature(sink).parameters:
                jobs.append(sink(connection, cfg, self.kafka, self.stop, metrics=self.metrics))  # type: ignore[call-arg]
            else:
                jobs.append(sink(connection, cfg, self.kafka, self.stop))
        await asyncio.gather(*jobs)

    async def _source(self, cfg: ConnectionConfig, connection: Connection, source: SourceService) -> None:
        from bridge.fhir.errors import FHIRError

        delay = RETRY_MIN_S
        while not self.stop.is_set():
            try:
                await source.run(connection, self.stop, metrics=self.metrics)
                if source.fenced and not self.stop.is_set():
                    # another instance took these tasks over: stay up, not ready, until told to stop;
                    # exiting would make a supervisor restart this one and fence the other in turn
                    await self.stop.wait()
                return
            except FHIRError as exc:  # e.g. /metadata unreachable: plan again later
                log.warning("%s: source cannot start (retry in %.0fs): %s", cfg.name, delay, exc)
                await _wait(self.stop, delay)
                delay = min(delay * 2, RETRY_MAX_S)

    # -- signals -----------------------------------------------------------------------------------
    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop, main: asyncio.Task[int]) -> None:
        def on_signal(signum: int) -> None:
            if not self.stop.is_set():
                log.warning("%s: finishing the open batches, then stopping", signal.Signals(signum).name)
                self.stop.set()
            else:
                log.warning(
                    "second %s: cancelling; open transactions are aborted", signal.Signals(signum).name
                )
                main.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)


async def _main(runtime: Runtime) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    runtime.install_signal_handlers(loop, main)
    try:
        return await runtime.run()
    except asyncio.CancelledError:
        return 130


def run_bridge(
    configs: Sequence[ConnectionConfig],
    kafka: KafkaContext,
    *,
    sides: frozenset[Side] = frozenset({"source", "sink"}),
    credential_store: Any = None,
    web: WebServer | None = None,
) -> int:
    """Blocking entry point for `epic-bridge run`."""
    runtime = Runtime(configs, kafka, sides=sides, credential_store=credential_store, web=web)
    return asyncio.run(_main(runtime))
