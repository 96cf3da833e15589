"""One connection's adaptive schedule: what to scan next, and what a scan changes, exactly once.

The poll loop asks ``next_due(now, n)`` for the units to scan (earliest due first, and when nothing is
due, the earliest due anyway: the budget is never left idle while there is work), scans each, and
hands the outcome to ``record()``, which returns the schedule writes of that scan. The loop stages
them (``stage()``) in the Kafka transaction that carries the scan's events, fingerprints and cursors,
and after the commit calls ``applied()``; after an abort, ``aborted()``. Until then the writes are
kept in a small overlay (so a patient's next scan in the same batch sees the previous one) and the
units handed out stay leased (so no unit is handed out twice before its new due time is stored).
Memory is bounded by the open batch, never by the roster.

``sync_roster()`` merges the roster into the schedule by streaming both in patient-id order: units of
new patients are inserted due now, units of patients who left are removed, units of kinds no longer
scanned are dropped.

The scale U (see ``policy``) comes from running totals Σ k and Σ k·w, read from the index once and then
kept up to date with each write, and from the budget's current rate for scheduled scans, so U tracks
the budget (a 429 that halves the rate doubles U for the scans that follow).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from bridge.kafka.table import Write
from bridge.kafka.txn import Record
from bridge.metrics import Metrics
from bridge.source.schedule.codec import (
    Keys,
    UnitKind,
    decode_member,
    decode_unit,
    encode_member,
    encode_unit,
    parse_key,
)
from bridge.source.schedule.policy import (
    PatientState,
    Policy,
    Scale,
    ScanOutcome,
    UnitState,
    after_scan,
    counts_as_change,
    date_window,
    new_unit,
    patient_rate,
    pulled_in,
    scale,
    with_change,
)
from bridge.source.schedule.store import QueueStats, ScheduleStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DueScan:
    """A unit to scan now. `date_from`: the `date` lower bound (Unix seconds) of an incremental scan;
    None for a full scan."""

    key: bytes
    patient: str
    kind: UnitKind
    unit: UnitState
    date_from: float | None


@dataclass(frozen=True)
class ScheduleStats:
    queue: QueueStats
    scale_s: float
    overcommitted: bool
    budget_rate: float

    def record(self, metrics: Metrics, connection: str) -> None:
        metrics.schedule_units.labels(connection).set(self.queue.units)
        metrics.schedule_overdue.labels(connection).set(self.queue.overdue)
        metrics.schedule_most_overdue.labels(connection).set(self.queue.most_overdue_s)
        metrics.schedule_stalest.labels(connection).set(self.queue.stalest_s)
        metrics.schedule_overcommitted.labels(connection).set(1 if self.overcommitted else 0)


class Scheduler:
    def __init__(
        self,
        store: ScheduleStore,
        connection: str,
        kinds: Sequence[UnitKind],
        policy: Policy,
        budget_rate: Callable[[], float],
        *,
        windowed: Collection[UnitKind] = (),
    ) -> None:
        """`kinds`: the searches made per patient; `windowed`: those whose resource supports `date`;
        `budget_rate`: requests/s available to scheduled scans now."""
        if not kinds:
            raise ValueError("a schedule needs at least one kind of unit")
        self.connection = connection
        self._keys = Keys(connection)
        self.kinds = tuple(sorted(set(kinds)))
        self.policy = policy
        self._store = store
        self._budget_rate = budget_rate
        self._windowed = frozenset(windowed)
        self._pending: dict[bytes, bytes | None] = {}  # staged, not yet applied
        self._leased: set[bytes] = set()
        self._cost, self._load = 0.0, 0.0
        self._reload_totals()

    def _reload_totals(self) -> None:
        totals = self._store.totals(self.connection)
        self._cost, self._load = totals.cost, totals.load

    # -- the queue -------------------------------------------------------------------------------
    @property
    def scale(self) -> Scale:
        return scale(self.policy, self._load, self._cost, self._budget_rate())

    def next_due(self, now: float, limit: int) -> list[DueScan]:
        """Up to `limit` units to scan now, earliest due first (work-conserving); each is leased until
        its scan's writes are applied (or it is released)."""
        keys = self._store.next_keys(
            self.connection, limit + len(self._leased), scanned_before=now - self.policy.min_interval_s
        )
        keys = [k for k in keys if k not in self._leased][:limit]
        values = self._read(keys)
        out: list[DueScan] = []
        for key in keys:
            raw = values.get(key)
            if raw is None:  # removed by a staged roster sync
                continue
            unit, parsed = decode_unit(raw), parse_key(key)
            since = date_window(self.policy, unit, parsed.kind in self._windowed, now)
            out.append(DueScan(key, parsed.patient, parsed.kind, unit, since))
            self._leased.add(key)
        return out

    def release(self, scans: Iterable[DueScan]) -> None:
        """Give back units handed out but not scanned (e.g. the loop stopped)."""
        for scan in scans:
            self._leased.discard(scan.key)

    def record(self, scan: DueScan, outcome: ScanOutcome, now: float) -> list[Write]:
        """The schedule writes of one finished scan: the unit's new state and, when it found a change,
        its patient's pooled count and the patient's other units pulled in (an episode touches several
        resources). Stage them with the scan's events."""
        member = self._keys.member(scan.patient)
        values = self._read([scan.key, member])
        if scan.key not in values or member not in values:  # left the roster meanwhile
            return []
        unit, patient = decode_unit(values[scan.key]), decode_member(values[member])
        writes: list[Write] = []
        changed = counts_as_change(unit, outcome)
        if changed:
            patient = with_change(self.policy, patient, now)
            writes.append((member, encode_member(patient)))
        pooled = patient_rate(self.policy, patient, now)
        u = self.scale.u
        updates = [(scan.key, unit, after_scan(self.policy, unit, outcome, pooled, u, now))]
        if changed and self.policy.mode == "adaptive":
            updates += self._pull_in(scan, pooled, u, now)
        for key, old, new in updates:
            self._cost += new.cost - old.cost
            self._load += new.cost * new.weight - old.cost * old.weight
            writes.append((key, encode_unit(new)))
        self._stage_local(writes)
        return writes

    def _pull_in(
        self, scan: DueScan, pooled: float, u: float, now: float
    ) -> list[tuple[bytes, UnitState, UnitState]]:
        keys = [k for kind in self.kinds if (k := self._keys.unit(kind, scan.patient)) != scan.key]
        out: list[tuple[bytes, UnitState, UnitState]] = []
        for key, raw in self._read([k for k in keys if k not in self._leased]).items():
            sibling = decode_unit(raw)
            if (sooner := pulled_in(self.policy, sibling, pooled, u, now)) is not None:
                out.append((key, sibling, sooner))
        return out

    # -- exactly once ----------------------------------------------------------------------------
    def records(self, writes: Iterable[Write]) -> list[Record]:
        """Schedule writes as records of the transaction carrying the scans' events (bridge.kafka.txn)."""
        return self._store.records(writes)

    def committed(self, writes: Sequence[Write]) -> None:
        """The transaction that carried `writes` committed (the helper updated the cache): free their
        units."""
        for key, value in writes:
            if key in self._pending and self._pending[key] is value:
                del self._pending[key]
            self._leased.discard(key)

    def applied(self, writes: Sequence[Write]) -> None:
        """Without Kafka (models, tools): store `writes` as if committed, and free their units."""
        self._store.apply(writes)
        self.committed(writes)

    def aborted(self) -> None:
        """The open transaction was aborted: forget its writes (the units are scanned again)."""
        self._pending.clear()
        self._leased.clear()
        self._reload_totals()

    def _stage_local(self, writes: Iterable[Write]) -> None:
        for key, value in writes:
            self._pending[key] = value

    def _read(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Values as the open batch sees them: staged writes over the cache."""
        found = self._store.get_many(k for k in keys if k not in self._pending)
        for key in keys:
            if key in self._pending:
                value = self._pending[key]
                if value is not None:
                    found[key] = value
        return found

    # -- the roster ------------------------------------------------------------------------------
    async def sync_roster(
        self, patients: AsyncIterable[str], now: float, *, batch: int = 2000
    ) -> AsyncIterator[list[Write]]:
        """Merge the roster (patient ids, ascending) into the schedule. Yields batches of writes: stage
        each in a transaction, commit it and call ``applied()`` before asking for the next batch."""
        out: list[Write] = []
        members: list[str] = []
        position: str | None = None  # every id <= position is settled
        members_done = False

        def next_member() -> str | None:
            nonlocal members_done
            if not members and not members_done:
                members.extend(self._store.members_after(self.connection, position, batch))
                members_done = len(members) < batch
            return members[0] if members else None

        async for pid in patients:
            if position is not None and pid <= position:
                raise ValueError(f"the roster is not in ascending order at {pid!r}")
            while (member := next_member()) is not None and member < pid:
                out += self._leave(member)
                members.pop(0)
                position = member
            if member == pid:
                members.pop(0)
                out += self._complete(pid, now)
            else:
                out += self._join(pid, now)
            position = pid
            if len(out) >= batch:
                yield self._flushed(out)
                out = []
        while (member := next_member()) is not None:
            out += self._leave(member)
            members.pop(0)
            position = member
            if len(out) >= batch:
                yield self._flushed(out)
                out = []
        if out:
            yield self._flushed(out)
        while stale := self._store.keys_of_other_kinds(self.connection, self.kinds, batch):
            yield self._flushed(self._removals(stale))
            if self._store.keys_of_other_kinds(self.connection, self.kinds, 1) == stale[:1]:
                raise RuntimeError("schedule writes of the roster sync were not applied before continuing")
        if not self._pending:
            self._reload_totals()  # the running totals drift by rounding; the index has the exact sums

    def _flushed(self, writes: list[Write]) -> list[Write]:
        self._stage_local(writes)
        return writes

    def _join(self, pid: str, now: float) -> list[Write]:
        unit = new_unit(self.policy, now)
        self._cost += unit.cost * len(self.kinds)
        self._load += unit.cost * unit.weight * len(self.kinds)
        value = encode_unit(unit)
        writes: list[Write] = [(self._keys.member(pid), encode_member(PatientState(now, 0.0, now)))]
        return writes + [(self._keys.unit(kind, pid), value) for kind in self.kinds]

    def _complete(self, pid: str, now: float) -> list[Write]:
        """A patient already in the schedule: add units of kinds added since."""
        keys = [self._keys.unit(kind, pid) for kind in self.kinds]
        present = self._read(keys)
        missing = [k for k in keys if k not in present]
        if not missing:
            return []
        unit = new_unit(self.policy, now)
        self._cost += unit.cost * len(missing)
        self._load += unit.cost * unit.weight * len(missing)
        value = encode_unit(unit)
        return [(k, value) for k in missing]

    def _leave(self, pid: str) -> list[Write]:
        keys = [self._keys.unit(kind, pid) for kind in self.kinds]
        return [(self._keys.member(pid), None), *self._removals(keys)]

    def _removals(self, keys: Sequence[bytes]) -> list[Write]:
        found = self._read(keys)
        for raw in found.values():
            unit = decode_unit(raw)
            self._cost -= unit.cost
            self._load -= unit.cost * unit.weight
        return [(k, None) for k in keys if k in found]

    # -- the operator's view ---------------------------------------------------------------------
    def stats(self, now: float) -> ScheduleStats:
        current = self.scale
        return ScheduleStats(
            self._store.stats(self.connection, now), current.u, current.overcommitted, self._budget_rate()
        )
