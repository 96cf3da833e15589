"""The `epic-bridge run` process: an engine per topic prefix (bridge.engine.prefix), health and signals.

Every process started with the same configs joins the same group and gets a share of the connections;
the rest wait as standbys and take over when an owner stops or dies (see bridge.kafka.membership).
Nothing that Kafka, the registry or Epic does makes the process exit: start-up, connections and tasks are
retried with backoff and /readyz says what is wrong.

SIGTERM/SIGINT set one stop event: each connection's tasks commit the batch they hold (or, if a commit
fails, nothing of it becomes visible) and return, then the process leaves the group, so the others take
its connections over at once. A second signal cancels what is left (uncommitted work is aborted, never
half published) — unless it arrives within a second of the first: a terminal's Ctrl-C reaches the whole
process group and a supervising script often forwards its own stop right after; that is one request.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

from bridge.config.models import ConnectionConfig
from bridge.engine.prefix import PrefixEngine, Side
from bridge.health import Check, Heartbeat, add_health_routes, kafka_check, registry_check
from bridge.kafka.context import KafkaContext
from bridge.metrics import Metrics
from bridge.web import WebServer

log = logging.getLogger(__name__)

SAME_STOP_WINDOW_S = 1.0

__all__ = ["Runtime", "Side", "run_bridge"]


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
        self.kafka = kafka
        self.sides = sides
        self.stop = asyncio.Event()
        self._stop_requested = 0.0
        for cfg in self.configs:
            if cfg.hints.enabled:
                log.warning(
                    "%s: hints are configured, but this version of `epic-bridge run` starts neither the "
                    "HL7v2 listener nor the hint reader; changes are found by polling alone",
                    cfg.name,
                )
        prefixes = sorted({c.topic_prefix for c in self.configs})
        self.engines = {
            prefix: PrefixEngine(
                prefix,
                [c for c in self.configs if c.topic_prefix == prefix],
                kafka,
                sides=sides,
                store=credential_store,
                metrics=self.metrics,
            )
            for prefix in prefixes
        }
        # read by /readyz at request time
        self.checks: dict[str, Check] = {
            "kafka": kafka_check(kafka.admin.list_topics),
            "registry": registry_check(kafka.registry.get_subjects),
        }

    def _add_checks(self, loop: asyncio.AbstractEventLoop) -> None:
        for prefix, engine in self.engines.items():
            self.checks[f"membership:{prefix}"] = engine.check
            for cfg in engine.configs:
                self.checks[f"connection:{cfg.name}"] = engine.connection_check(cfg.name, loop)

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        heartbeat = asyncio.create_task(self.heartbeat.run(self.stop))
        self._add_checks(asyncio.get_running_loop())
        try:
            if self.web is not None:
                add_health_routes(
                    self.web, metrics=self.metrics, heartbeat=self.heartbeat, checks=self.checks
                )
                self.web.start()  # the JWK Set Epic fetches, /metrics, /healthz, /readyz
                log.info("serving %s", self.web.url)
            await asyncio.gather(*(engine.run(self.stop) for engine in self.engines.values()))
        finally:
            if self.web is not None:
                self.web.stop()
            self.stop.set()
            await heartbeat
        return 0

    # -- signals -----------------------------------------------------------------------------------
    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop, main: asyncio.Task[int]) -> None:
        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            now = time.monotonic()
            if not self.stop.is_set():
                log.warning("%s: finishing the open batches, then stopping", name)
                self._stop_requested = now
                self.stop.set()
            elif now - self._stop_requested < SAME_STOP_WINDOW_S:
                log.info("%s: already stopping", name)
            else:
                log.warning("second %s: cancelling; open transactions are aborted", name)
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
