"""One poll task: one connection x one resource type, polling in cycles, publishing exactly once.

Each cycle walks the plan (see bridge.source.plan): one unanchored search, or one set of searches
per roster patient. Every page is classified against the state store as it arrives (nothing beyond
the open batch is held in memory) and the batch is committed, with its fingerprints and the cursor,
in one Kafka transaction whenever it reaches its size or age limit. A patient whose searches fail
(after the FHIR client's own retries) is skipped, retried at the end of the cycle with backoff, and
reported; it never holds up the other patients.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from bridge.config.models import ConnectionConfig
from bridge.fhir.client import FHIRClient, SearchPage
from bridge.fhir.errors import FHIRError, FHIRNotFound
from bridge.kafka.transactions import TransactionAbortedError
from bridge.logs import error_text, pseudonym
from bridge.metrics import Metrics
from bridge.source.batch import Batch
from bridge.source.cycle import CycleState, iso, now_utc, parse_iso
from bridge.source.detect import Change, detect_changes
from bridge.source.plan import PollPlan
from bridge.source.publish import BatchPublisher
from bridge.source.roster import Roster
from bridge.source.state import SeenStore

log = logging.getLogger(__name__)

T = TypeVar("T")


class Interrupted(Exception):
    """The stop event was set; the open batch was committed and the task returns."""


class PartialAnswer(FHIRError):
    """The server answered a search with a warning (e.g. Epic 59204): the page may leave resources out,
    so it is not the truth for the patient, and the scan counts as failed."""


@dataclass
class TaskStats:
    cycles: int = 0
    pages: int = 0
    resources: int = 0
    events: int = 0
    commits: int = 0
    failed_patients: int = 0


class PollTask:
    def __init__(
        self,
        *,
        config: ConnectionConfig,
        plan: PollPlan,
        fhir: FHIRClient,
        roster: Roster | None,
        publisher: BatchPublisher,
        seen: SeenStore,
        interval_s: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.connection = config.name
        self._metrics = metrics
        self.plan = plan
        self._cfg = config
        self._src = config.source
        self._fhir = fhir
        self._roster = roster
        self._publisher = publisher
        self._seen = seen
        self._cursors = publisher.cursors
        rcfg = config.resources[plan.resource_type]  # type: ignore[index]
        self._triggers = set(rcfg.triggers)
        self.interval_s = (
            interval_s if interval_s is not None else (rcfg.poll_interval_s or config.poll_interval_s)
        )
        self.stats = TaskStats()
        self._batch = Batch()
        self._state = CycleState()
        self._stop = asyncio.Event()
        if plan.uses_roster and roster is None:
            raise ValueError(f"{plan.resource_type}: a per-patient plan needs a roster")

    @property
    def name(self) -> str:
        return f"{self.connection}/{self.plan.task}"

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, *, cycles: int | None = None) -> None:
        """Poll until `stop` is set (or `cycles` cycles completed). Fencing errors propagate."""
        self._stop = stop
        done = 0
        while not stop.is_set():
            try:
                await self.cycle()
                done += 1
            except Interrupted:
                return
            except TransactionAbortedError as exc:
                # nothing of the batch became visible and the caches were not touched: redo from the cursor
                log.warning("%s: batch aborted, redoing from the last cursor: %s", self.name, exc)
                if self._metrics is not None:
                    self._metrics.transactions.labels("source", self.connection, "aborted").inc()
                await self._sleep(1.0)
                continue
            except FHIRError as exc:
                # e.g. the Group roster or an unanchored search failed for good: next cycle, from the cursor
                log.warning("%s: cycle did not complete: %s", self.name, error_text(exc))
                if self._metrics is not None:
                    self._metrics.polls.labels(self.connection, self.plan.task, "error").inc()
            if cycles is not None and done >= cycles:
                return
            await self._sleep(self.interval_s)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def cycle(self) -> None:
        """One full pass; resumes a cycle a previous process left half-done."""
        began = time.monotonic()
        self._state = CycleState.from_cursor(self._cursors.get(self.connection, self.plan.task))
        self._state = self._state.begin(now_utc())
        self._batch = Batch()
        log.info("%s: cycle %d (%s)", self.name, self._state.cycle, self._state.position)
        if self.plan.mode == "unanchored":
            await self._unanchored()
        else:
            await self._per_patient()
        finished = self._state.next_cycle(
            overlap_s=self._src.last_updated_overlap_s,
            uses_since=self.plan.mode == "unanchored",
            full_every_s=self._src.full_scan_interval_s if self.plan.date_window else None,
            moment=now_utc(),
        )
        await self._flush(finished)
        if self._metrics is not None and self._state.started is not None:
            m, labels = self._metrics, (self.connection, self.plan.task)
            m.polls.labels(*labels, "ok").inc()
            m.poll_duration.labels(*labels).observe(time.monotonic() - began)
            m.last_poll.labels(*labels).set(time.time())
            m.detection_lag.labels(*labels).set((now_utc() - parse_iso(self._state.started)).total_seconds())
        self._state = finished
        self.stats.cycles += 1

    # -- what one cycle does ---------------------------------------------------------------------
    @property
    def _silent(self) -> bool:
        return self._state.initial and self._cfg.initial_sync == "from-now"

    def _date_from(self) -> str | None:
        if not self.plan.date_window or self._state.full or self._src.date_window_days is None:
            return None
        return (now_utc() - dt.timedelta(days=self._src.date_window_days)).date().isoformat()

    async def _unanchored(self) -> None:
        for variant in self.plan.variants:
            params = self.plan.params(variant, None, self._state.since, None)
            async for page in self._pages(params):
                self._check_complete(page)
                await self._take(page.resources)
                await self._checkpoint()

    async def _per_patient(self) -> None:
        assert self._roster is not None
        failed: list[str] = []
        patients = 0
        async for pid in self._roster.patient_ids(self._state.after):
            patients += 1
            if not await self._patient(pid):
                failed.append(pid)
            else:
                self._state = self._state.patient_done(pid)
            await self._checkpoint()
        if patients == 0 and self._state.after is None:
            log.warning(
                "%s: the patient roster is empty (%s); nothing to poll", self.name, self._cfg.roster.source
            )
        delay = self._src.patient_retry_delay_s
        for attempt in range(self._src.patient_retries):
            if not failed:
                break
            log.info("%s: retrying %d failed patient(s) in %.1fs", self.name, len(failed), delay)
            await self._flush(self._state)
            await self._sleep(delay)
            if self._stop.is_set():
                raise Interrupted
            failed = [pid for pid in failed if not await self._patient(pid, attempt=attempt + 2)]
            delay *= 2
        if failed:
            self.stats.failed_patients += len(failed)
            log.warning(
                "%s: %d patient(s) still failing after %d retries, left for the next cycle: %s",
                self.name,
                len(failed),
                self._src.patient_retries,
                ", ".join(pseudonym(pid) for pid in failed[:20]) + (" ..." if len(failed) > 20 else ""),
            )

    def _mark_name(self, pid: str) -> str:
        return f"{self.plan.task}:patient:{pid}"

    async def _patient(self, pid: str, attempt: int = 1) -> bool:
        """Scan one patient; False if a search failed (what was read so far is kept)."""
        started = now_utc()
        since: str | None = None
        if self.plan.last_updated:
            mark = self._cursors.get(self.connection, self._mark_name(pid))
            if mark is not None and isinstance(mark.get("at"), str):
                overlap = dt.timedelta(seconds=self._src.last_updated_overlap_s)
                since = iso(parse_iso(mark["at"]) - overlap)
        try:
            if self.plan.mode == "read":
                await self._read_patient(pid)
            else:
                date_from = self._date_from()
                for variant in self.plan.variants:
                    params = self.plan.params(variant, pid, since, date_from)
                    async for page in self._pages(params):
                        self._check_complete(page)
                        await self._take(page.resources)
                        if self._stop.is_set():
                            await self._flush(self._state)
                            raise Interrupted
        except FHIRError as exc:
            log.warning(
                "%s: patient %s failed (attempt %d): %s", self.name, pseudonym(pid), attempt, error_text(exc)
            )
            if self._metrics is not None:
                self._metrics.poll_errors.labels(self.connection, self.plan.task, type(exc).__name__).inc()
            return False
        if self.plan.last_updated:
            self._batch.marks[self._mark_name(pid)] = {"at": iso(started)}
        return True

    async def _pages(self, params: list[tuple[str, str]]) -> AsyncIterator[SearchPage]:
        """The search's pages; a stop request does not wait for a slow or retrying request (reads are
        idempotent, so an abandoned one costs nothing): the open batch is committed and the task ends."""
        pages = self._fhir.search_pages(self.plan.resource_type, params)
        try:
            while True:
                page = await self._unless_stopped(anext(pages))
                if page is None:
                    return
                yield page
        finally:
            # An async generator: release its open response. `_unless_stopped` never leaves a step of it
            # running, so closing it cannot meet "aclose(): asynchronous generator is already running".
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _unless_stopped(self, step: Awaitable[T]) -> T | None:
        """`step`'s result (None at the end of an iteration); Interrupted once the stop event is set.

        However this returns (a result, Interrupted, or this task being cancelled by a second signal),
        `step` is finished first: it is cancelled and awaited, never left running in the background."""
        work: asyncio.Future[T] = asyncio.ensure_future(step)
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not work.done():
                work.cancel()
                await asyncio.wait([work])
        if work.cancelled() or isinstance(work.exception(), asyncio.CancelledError):
            await self._flush(self._state)
            raise Interrupted
        try:
            return work.result()
        except StopAsyncIteration:
            return None

    def _check_complete(self, page: SearchPage) -> None:
        """Raise PartialAnswer for a page the server said may be incomplete, before anything on it counts:
        no event, no fingerprint, no per-patient mark and no cursor moves on a partial answer."""
        if not page.warnings:
            return
        codes = sorted({m.code or "none" for m in page.warnings})
        rtype = self.plan.resource_type
        for code in codes:
            # The code and type only: the server's text can name what it withheld.
            log.warning("%s: partial answer to a %s search (server warning %s)", self.name, rtype, code)
            if self._metrics is not None:
                self._metrics.partial_answers.labels(self.connection, "source", rtype.lower(), code).inc()
        raise PartialAnswer(f"partial answer (server warning {', '.join(codes)}) to a {rtype} search")

    async def _read_patient(self, pid: str) -> None:
        try:
            resource = await self._unless_stopped(self._fhir.read(self.plan.resource_type, pid))
        except FHIRNotFound:
            log.info("%s: patient %s no longer exists", self.name, pseudonym(pid))
            return
        if resource is not None:
            await self._take([resource])

    # -- detection and batches -------------------------------------------------------------------
    def _filter_triggers(self, changes: Iterable[Change]) -> list[Change]:
        out: list[Change] = []
        for change in changes:
            trigger = change.trigger
            if trigger is not None and trigger.value.lower() not in self._triggers:
                change = replace(change, trigger=None)  # recorded, not announced
            out.append(change)
        return out

    async def _take(self, resources: list[dict[str, Any]]) -> None:
        rtype = self.plan.resource_type
        mine = [r for r in resources if r.get("resourceType") == rtype and isinstance(r.get("id"), str)]
        self.stats.pages += 1
        self.stats.resources += len(mine)
        if self._metrics is not None and mine:
            self._metrics.resources_scanned.labels(self.connection, self.plan.task).inc(len(mine))
        if not mine:
            return
        ids = [str(r["id"]) for r in mine]
        known = self._batch.known(ids, self._seen.lookup(self.connection, rtype, ids))
        changes = detect_changes(mine, known, silent=self._silent)
        self._batch.add(self._filter_triggers(changes))
        if len(self._batch) >= self._src.batch_max_resources:
            await self._flush(self._state)

    async def _checkpoint(self) -> None:
        """Between patients/pages: commit when the batch is full or old; stop when asked."""
        if (
            len(self._batch) >= self._src.batch_max_resources
            or self._batch.age_s() >= self._src.batch_max_seconds
        ):
            await self._flush(self._state)
        if self._stop.is_set():
            await self._flush(self._state)
            raise Interrupted

    async def _flush(self, state: CycleState) -> None:
        """Commit the open batch with `state` as the cursor (one transaction)."""
        batch, self._batch = self._batch, Batch()
        published = await self._publisher.publish_async(
            self.plan.task,
            self.plan.resource_type,
            batch.changes,
            state.to_cursor(),
            extra_cursors=batch.marks,
            position=self._state.position,  # the cycle that found the changes (state may be the next one)
        )
        self.stats.commits += 1
        self.stats.events += published.events
        if self._metrics is not None:
            self._metrics.transactions.labels("source", self.connection, "committed").inc()
            for change in batch.changes:
                if change.trigger is not None:
                    self._metrics.events.labels(self.connection, self.plan.task, change.trigger.value).inc()
        if published.events or published.recorded:
            log.info(
                "%s: committed %d event(s), %d fingerprint(s) at %s",
                self.name,
                published.events,
                published.recorded,
                self._state.position,
            )
