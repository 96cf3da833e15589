"""The work of one connection while this process owns it: its poll tasks and its sink.

The unit of ownership is the connection (see bridge.kafka.membership): Epic's request budget is per
connection and shared by the source, the sink and roster reads, so all of a connection's work runs in the
process that owns it, behind one rate limiter. A worker starts when its connection is gained (after the
handover settled and the caches caught up, see bridge.engine.prefix) and stops when it is handed over
(each task commits what it holds) or lost (nothing can commit any more).

Opening the connection (discovery, a token) is retried with backoff; until it opens, /readyz shows why.
The source and the sink each run supervised (bridge.supervise): an unexpected failure restarts that part
with backoff and is reported, never stopping the other part or another connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.health import token_check
from bridge.logs import log_context
from bridge.metrics import Metrics
from bridge.sink.service import SinkService
from bridge.source.service import SourceService, restarts_counter
from bridge.supervise import Health, supervise, wait_or_stop

log = logging.getLogger(__name__)

OPEN_RETRY_MIN_S, OPEN_RETRY_MAX_S = 1.0, 60.0


@dataclass
class WorkerParts:
    """What a worker runs, built by the engine from the process's helpers."""

    source: SourceService | None
    sink: SinkService | None
    store: Any  # the credential store, for authorization-code connections
    metrics: Metrics


class ConnectionWorker:
    def __init__(self, cfg: ConnectionConfig, parts: WorkerParts) -> None:
        self.config = cfg
        self.parts = parts
        self.health = Health()
        self.problem: str | None = None  # why the connection is not open, while it is not
        self.connection: Connection | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def tasks(self) -> int:
        """Poll tasks running now."""
        source = self.parts.source
        return len(source.tasks) if source is not None and self.connection is not None else 0

    # -- one period of ownership -------------------------------------------------------------------
    def start(self) -> None:
        if self.running:
            return
        self._stop = asyncio.Event()
        self.health = Health()
        self.problem = "opening the connection"
        self._task = asyncio.create_task(self._run(self._stop), name=f"connection {self.name}")

    async def stop(self, *, handover: bool) -> None:
        """Handover: every task commits what it holds, then returns. Otherwise (lost): stop at once; the
        membership already refuses this connection's commits."""
        task = self._task
        if task is None:
            return
        self._stop.set()
        if not handover:
            task.cancel()
        await asyncio.wait([task])
        self._task = None

    async def _run(self, stop: asyncio.Event) -> None:
        with log_context(connection=self.name):
            connection = await self._open(stop)
            if connection is None:
                return
            self.connection = connection
            self.problem = None
            sink = self.parts.sink
            parts: dict[str, Callable[[], Awaitable[None]]] = {}
            if self.parts.source is not None:
                parts["source"] = lambda: self._source(connection, stop)
            if sink is not None:
                parts["sink"] = lambda: sink.run(connection, stop)
            counter = restarts_counter(self.parts.metrics, self.name)
            try:
                await asyncio.gather(
                    *(
                        supervise(name, run, stop, health=self.health, on_failure=counter)
                        for name, run in parts.items()
                    )
                )
            finally:
                self.connection = None
                await connection.aclose()

    async def _open(self, stop: asyncio.Event) -> Connection | None:
        delay = OPEN_RETRY_MIN_S
        while not stop.is_set():
            try:
                return await Connection.open(self.config, store=self.parts.store, metrics=self.parts.metrics)
            except Exception as exc:  # noqa: BLE001 - any failure to open is retried, and shown on /readyz
                self.problem = f"cannot open the connection: {type(exc).__name__}: {exc}"[:300]
                log.warning("%s: %s (retry in %.0fs)", self.name, self.problem, delay)
                await wait_or_stop(stop, delay)
                delay = min(delay * 2, OPEN_RETRY_MAX_S)
        return None

    async def _source(self, connection: Connection, stop: asyncio.Event) -> None:
        source = self.parts.source
        assert source is not None
        await source.run(connection, stop, metrics=self.parts.metrics, health=self.health)

    # -- readiness ---------------------------------------------------------------------------------
    def check(self, loop: asyncio.AbstractEventLoop, owned: bool, timeout_s: float = 10.0) -> str | None:
        """For /readyz, from the web thread: None (ready), a note, or an exception with the reason."""
        if not owned:
            return "standby: another instance owns this connection"
        if self.problem is not None:
            raise RuntimeError(self.problem)
        connection = self.connection
        if connection is None:
            raise RuntimeError("starting")
        token_check(loop, connection.tokens.get, timeout_s)()
        problems = self.health.problems()
        if problems:
            raise RuntimeError("; ".join(problems))
        return None
