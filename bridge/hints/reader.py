"""The hint reader of one connection: records of the hints topic in, scan requests out.

    records ──▶ decode ──▶ resolve MRN ──▶ roster policy ──▶ coalesce ──▶ async for request in reader
       │          └─ bad record: staged for the DLQ        └─ outside the roster: add, or drop

The reader's only output is `ScanRequest`s (and, for its owner's next transaction, the dead letters and
offsets of `checkpoint()`): it holds no producer and cannot publish an event. A hint can therefore only
ever make the scanner read FHIR sooner; what is published still comes from those reads and their
fingerprints, so a wrong or forged hint costs requests and publishes nothing.

Usage by the connection's owner (the scheduler consumes the requests):

    reader = HintReader(settings, deserialize=..., resolver=..., roster=..., metrics=...)
    intake = asyncio.create_task(reader.run(records))        # records: AsyncIterable[RawHint]
    async for request in reader:                             # ends once `records` ended and all is handed
        scheduler.hint(request)
    ... each transaction of the owner: cp = reader.checkpoint(); write cp.dead_letters, commit
        cp.offsets (next offset to read per partition); then reader.committed(cp)

Records are processed one at a time and in order; when `max_pending` requests wait, intake pauses (the
topic keeps the rest). A request is "handed over" once the reader yielded it; `checkpoint().offsets`
never passes a record whose requests have not all been handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bridge.config.hints import HintsConfig
from bridge.config.models import RESOURCE_TYPES
from bridge.fhir.errors import FHIRError
from bridge.hints.coalesce import Coalescer
from bridge.hints.decode import (
    BadHint,
    HintRules,
    RawHint,
    RegistryUnavailable,
    dead_letter_headers,
    decode_hint,
)
from bridge.hints.model import Hint, ScanRequest
from bridge.hints.mrn import Miss, MRNResolver
from bridge.metrics import Metrics

log = logging.getLogger(__name__)

STAGE = "reader"


class RosterMembership(Protocol):
    """The connection's roster, as the scheduler keeps it."""

    async def contains(self, patient_id: str) -> bool: ...

    async def add(self, patient_id: str) -> None: ...


@dataclass(frozen=True)
class ReaderSettings:
    connection: str
    dlq_topic: str
    enabled_resources: tuple[str, ...]
    default_mrn_system: str | None = None
    outside_roster: Literal["add", "drop"] = "drop"
    coalesce_window_s: float = 2.0
    max_pending: int = 100_000
    max_hint_bytes: int = 100_000
    registry_retry_s: float = 2.0

    @classmethod
    def from_config(
        cls, connection: str, cfg: HintsConfig, *, dlq_topic: str, enabled_resources: Collection[str]
    ) -> ReaderSettings:
        return cls(
            connection=connection,
            dlq_topic=dlq_topic,
            enabled_resources=tuple(r for r in RESOURCE_TYPES if r in enabled_resources),
            default_mrn_system=cfg.patient_identifiers.mrn_system,
            outside_roster=cfg.outside_roster,
            coalesce_window_s=cfg.coalesce_window_s,
            max_pending=cfg.max_pending,
            max_hint_bytes=cfg.max_hint_bytes,
        )


@dataclass(frozen=True)
class DeadLetterRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Checkpoint:
    """What the owner commits in its next transaction: these dead letters, and per partition of the
    hints topic the next offset to read (every record before it is handed over or dead-lettered)."""

    dead_letters: tuple[DeadLetterRecord, ...]
    offsets: dict[int, int]


class HintReader:
    def __init__(
        self,
        settings: ReaderSettings,
        *,
        deserialize: Callable[[bytes], Any],
        resolver: MRNResolver,
        roster: RosterMembership,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._deserialize = deserialize
        self._resolver = resolver
        self._roster = roster
        self._metrics = metrics if metrics is not None else Metrics()
        self._clock = clock
        self._rules = HintRules(settings.max_hint_bytes, settings.default_mrn_system, RESOURCE_TYPES)
        self._pending = Coalescer(settings.coalesce_window_s, clock)
        self._changed = asyncio.Event()  # a request was queued, or intake ended
        self._room = asyncio.Event()  # fewer than max_pending requests wait
        self._room.set()
        self._ended = False
        self._next_offsets: dict[int, int] = {}
        self._dead: list[DeadLetterRecord] = []

    # -- intake ------------------------------------------------------------------------------------
    async def run(self, records: AsyncIterable[RawHint]) -> None:
        """Take records until `records` ends (or this task is cancelled)."""
        try:
            async for raw in records:
                await self._room.wait()
                await self._take(raw)
                self._next_offsets[raw.partition] = raw.offset + 1
        finally:
            self._ended = True
            self._changed.set()

    async def _take(self, raw: RawHint) -> None:
        name = self.settings.connection
        self._metrics.hints_received.labels(name, STAGE).inc()
        hint = await self._decode(raw)
        if hint is None:
            return
        resources = self._resources(hint)
        if not resources:
            self._reject("no-enabled-resource")
            return
        patient_id = await self._patient(hint)
        if patient_id is None or not await self._in_roster(patient_id):
            return
        for resource in resources:
            request = ScanRequest(patient_id, resource, hint.received_at, hint.reason)
            if self._pending.add(request, (raw.partition, raw.offset)):
                self._metrics.hints_coalesced.labels(name).inc()
        self._metrics.hints_accepted.labels(name, STAGE).inc()
        if len(self._pending) >= self.settings.max_pending:
            self._room.clear()
        self._changed.set()

    async def _decode(self, raw: RawHint) -> Hint | None:
        while True:
            try:
                return decode_hint(raw, self._deserialize, self._rules)
            except RegistryUnavailable as exc:
                log.warning("%s: schema registry unavailable, hint read again: %s", raw.topic, exc)
                await asyncio.sleep(self.settings.registry_retry_s)
            except BadHint as bad:
                self._reject(bad.reason.value)
                headers = dead_letter_headers(raw, bad, self.settings.connection)
                self._dead.append(
                    DeadLetterRecord(self.settings.dlq_topic, raw.key, raw.value, tuple(headers))
                )
                log.info("%s: hint at offset %d dead-lettered: %s", raw.topic, raw.offset, bad)
                return None

    def _resources(self, hint: Hint) -> tuple[str, ...]:
        enabled = self.settings.enabled_resources
        if not hint.resource_types:
            return enabled
        return tuple(r for r in hint.resource_types if r in enabled)

    async def _patient(self, hint: Hint) -> str | None:
        if hint.patient_id is not None:
            return hint.patient_id
        assert hint.mrn is not None and hint.mrn_system is not None  # decode_hint guarantees it
        try:
            found = await self._resolver.resolve(hint.mrn_system, hint.mrn)
        except FHIRError as exc:
            # the error's type only: a server's message could quote the identifier searched for
            log.warning(
                "%s: MRN lookup failed (%s), hint dropped", self.settings.connection, type(exc).__name__
            )
            self._reject("mrn-lookup-failed")
            return None
        if isinstance(found, Miss):
            self._reject(found.value)
            return None
        return found

    async def _in_roster(self, patient_id: str) -> bool:
        if await self._roster.contains(patient_id):
            return True
        if self.settings.outside_roster == "add":
            await self._roster.add(patient_id)
            return True
        self._reject("outside-roster")
        return False

    def _reject(self, reason: str) -> None:
        self._metrics.hints_rejected.labels(self.settings.connection, STAGE, reason).inc()

    # -- output ------------------------------------------------------------------------------------
    def __aiter__(self) -> HintReader:
        return self

    async def __anext__(self) -> ScanRequest:
        while True:
            request = self._pending.pop_ready()
            if request is not None:
                if len(self._pending) < self.settings.max_pending:
                    self._room.set()
                return request
            if self._ended and len(self._pending) == 0:
                raise StopAsyncIteration
            ready_at = self._pending.next_ready_at()
            self._changed.clear()
            timeout = None if ready_at is None else max(0.0, ready_at - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    # -- progress ----------------------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        offsets = dict(self._next_offsets)
        for partition, lowest in self._pending.lowest_offsets().items():
            offsets[partition] = min(lowest, offsets.get(partition, lowest))
        return Checkpoint(tuple(self._dead), offsets)

    def committed(self, checkpoint: Checkpoint) -> None:
        """The owner committed `checkpoint`: its dead letters are written."""
        del self._dead[: len(checkpoint.dead_letters)]
