"""The schedule's store and scheduler on the on-disk cache (no Kafka: writes are applied as if committed)."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest

from bridge.metrics import Metrics
from bridge.source.schedule.codec import UnitKind, decode_member, decode_unit, member_key
from bridge.source.schedule.policy import Policy, ScanOutcome
from bridge.source.schedule.scheduler import DueScan, Scheduler
from bridge.source.schedule.store import ScheduleStore

PATIENT, LABS, ENCOUNTER = UnitKind("Patient"), UnitKind("Observation", "laboratory"), UnitKind("Encounter")
KINDS = (PATIENT, LABS)


async def ids(values: Iterable[str]) -> AsyncIterator[str]:
    for value in values:
        yield value


def open_store(path: Path) -> ScheduleStore:
    return ScheduleStore.open({}, "test._schedule", path / "schedule.db")


def scheduler(
    store: ScheduleStore, policy: Policy | None = None, rate: Callable[[], float] = lambda: 1.0, kinds=KINDS
) -> Scheduler:
    return Scheduler(store, "c", kinds, policy or Policy(units_per_patient=len(kinds)), rate)


async def sync(s: Scheduler, patients: Iterable[str], now: float) -> None:
    async for writes in s.sync_roster(ids(patients), now, batch=7):
        s.applied(writes)


def units(store: ScheduleStore) -> dict[tuple[str, str], dict[str, float]]:
    return {
        (json.loads(k)[3], "/".join(json.loads(k)[1:3]).strip("/")): json.loads(v)
        for k, v in store.units_of("c")
    }


def step(
    s: Scheduler, now: float, n: int, changed: Callable[[DueScan], bool] = lambda d: False
) -> list[DueScan]:
    """One batch: take n units, scan them at now, now + 1/n..., apply (as after a commit)."""
    taken = s.next_due(now, n)
    writes = []
    for i, scan in enumerate(taken):
        writes += s.record(scan, ScanOutcome(changed=changed(scan)), now + i / n)
    s.applied(writes)
    return taken


async def test_the_roster_is_merged_in_new_patients_due_now_departed_ones_removed(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    s = scheduler(store)
    await sync(s, ["a", "b", "c"], 100.0)
    assert set(units(store)) == {(p, k) for p in "abc" for k in ("Patient", "Observation/laboratory")}
    assert all(u["d"] == 100.0 for u in units(store).values())
    assert store.members_after("c", None, 10) == ["a", "b", "c"]
    step(s, 200.0, 6)
    before = units(store)
    await sync(s, ["b", "c", "d"], 300.0)
    after = units(store)
    assert {p for p, _ in after} == {"b", "c", "d"} and store.members_after("c", None, 10) == ["b", "c", "d"]
    assert after[("b", "Patient")] == before[("b", "Patient")]  # stayed: untouched
    assert after[("d", "Patient")]["d"] == 300.0  # joined: due now
    totals = store.totals("c")
    assert s.scale.u == pytest.approx(totals.load / (1.0 - totals.cost / Policy().max_staleness_s), rel=1e-4)

    # the searches changed: labs are no longer scanned, encounters are
    s2 = scheduler(store, kinds=(PATIENT, ENCOUNTER))
    await sync(s2, ["b", "c", "d"], 400.0)
    assert {k for _, k in units(store)} == {"Patient", "Encounter"}
    assert units(store)[("b", "Encounter")]["d"] == 400.0
    assert units(store)[("b", "Patient")] == before[("b", "Patient")]

    await sync(s2, [], 500.0)
    assert units(store) == {} and store.members_after("c", None, 10) == [] and store.totals("c").units == 0


async def test_a_roster_out_of_order_is_refused(tmp_path: Path) -> None:
    s = scheduler(open_store(tmp_path))
    with pytest.raises(ValueError, match="ascending"):
        await sync(s, ["b", "a"], 0.0)


async def test_uniform_is_round_robin(tmp_path: Path) -> None:
    s = scheduler(open_store(tmp_path), Policy(mode="uniform", min_interval_s=1), rate=lambda: 4.0)
    await sync(s, [f"p{i:02d}" for i in range(20)], 0.0)
    order = [scan.key for t in range(30) for scan in step(s, float(t), 4, changed=lambda d: True)]
    cycles = [order[i : i + 40] for i in range(0, 120, 40)]
    assert all(len(set(c)) == 40 for c in cycles)  # every unit once per cycle
    assert cycles[1] == cycles[2]  # in the same order every cycle


async def test_the_bounds_hold_and_busy_patients_get_the_scans(tmp_path: Path) -> None:
    policy = Policy(units_per_patient=2, min_interval_s=20, max_staleness_s=400)
    s = scheduler(open_store(tmp_path), policy, rate=lambda: 1.0)
    patients = [f"p{i:02d}" for i in range(30)]
    await sync(s, patients, 0.0)
    busy = {"p03", "p11", "p27"}
    scans: dict[bytes, list[float]] = defaultdict(list)
    for t in range(6000):
        for scan in step(s, float(t), 1, changed=lambda d: d.patient in busy):
            scans[scan.key].append(float(t))
    assert len(scans) == 60
    for times in scans.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= policy.min_interval_s
        assert max(gaps) <= policy.max_staleness_s + 1  # + the batch of one second
    per_patient = defaultdict(int)
    for key, times in scans.items():
        per_patient[json.loads(key)[3]] += len(times)
    quiet = [n for p, n in per_patient.items() if p not in busy]
    assert min(per_patient[p] for p in busy) > 3 * max(quiet)


async def test_a_restart_from_the_stored_state_gives_the_same_queue(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    s = scheduler(store, rate=lambda: 2.0)
    await sync(s, [f"p{i:02d}" for i in range(25)], 0.0)
    for t in range(40):
        step(s, float(t), 2, changed=lambda d: d.patient in {"p02", "p07"})
    queue = [scan.key for scan in s.next_due(40.0, 50)]
    scale = s.scale.u
    store.close()

    again = scheduler(open_store(tmp_path), rate=lambda: 2.0)
    assert [scan.key for scan in again.next_due(40.0, 50)] == queue
    assert again.scale.u == pytest.approx(scale, rel=1e-4)

    with sqlite3.connect(tmp_path / "schedule.db") as db:  # an old cache without the index
        db.executescript(
            "DROP TABLE schedule_index; DROP TRIGGER schedule_index_insert; "
            "DROP TRIGGER schedule_index_update; DROP TRIGGER schedule_index_delete;"
        )
    rebuilt = scheduler(open_store(tmp_path), rate=lambda: 2.0)
    assert [scan.key for scan in rebuilt.next_due(40.0, 50)] == queue


async def test_the_scale_tracks_the_budget(tmp_path: Path) -> None:
    budget = [10.0]
    s = scheduler(open_store(tmp_path), Policy(units_per_patient=2, min_interval_s=1), rate=lambda: budget[0])
    await sync(s, [f"p{i:03d}" for i in range(200)], 0.0)
    full = s.scale.u
    budget[0] = 5.0  # a 429 halved the rate
    assert s.scale.u == pytest.approx(2 * full, rel=0.01)
    [first] = step(s, 1.0, 1)
    budget[0] = 10.0
    [second] = step(s, 1.0, 1)
    due = {k: decode_unit(v).due for k, v in s._store.get_many([first.key, second.key]).items()}
    assert (due[first.key] - 1.0) == pytest.approx(2 * (due[second.key] - 1.0), rel=0.01)


async def test_units_handed_out_stay_leased_until_their_writes_are_applied(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    s = scheduler(store, Policy(units_per_patient=2, min_interval_s=1))
    await sync(s, ["a", "b"], 0.0)
    step(s, 0.0, 4)  # first scans: the baseline
    cost, load = store.totals("c").cost, store.totals("c").load
    taken = s.next_due(100.0, 2)
    rest = s.next_due(100.0, 4)
    assert len(taken) == 2 and len(rest) == 2
    assert not {d.key for d in rest} & {d.key for d in taken}  # not handed out twice
    assert s.next_due(100.0, 4) == []
    writes = []
    for scan in rest + taken:
        if scan.patient == "a":
            writes += s.record(scan, ScanOutcome(changed=True), 200.0)
    members = [decode_member(v) for k, v in writes if k == member_key("c", "a") and v is not None]
    assert [round(m.changes) for m in members] == [1, 2]  # the second scan saw the first one's write
    s.aborted()  # the transaction failed: nothing was stored, everything is handed out again
    assert len(s.next_due(200.0, 10)) == 4
    assert (store.totals("c").cost, store.totals("c").load) == (cost, load)


async def test_stats_report_depth_overdue_and_staleness(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    s = scheduler(store, Policy(units_per_patient=2, min_interval_s=1), rate=lambda: 0.01)
    await sync(s, ["a", "b", "c"], 1000.0)
    step(s, 1000.0, 2)
    stats = s.stats(1600.0)
    assert stats.queue.units == 6 and stats.queue.overdue == 4
    assert stats.queue.most_overdue_s == 600.0 and stats.queue.stalest_s == 600.0
    assert stats.budget_rate == 0.01 and stats.scale_s == s.scale.u
    metrics = Metrics()
    stats.record(metrics, "c")
    sample = metrics.registry.get_sample_value
    assert sample("epic_bridge_schedule_overdue_units", {"connection": "c"}) == 4
    assert sample("epic_bridge_schedule_stalest_seconds", {"connection": "c"}) == 600.0
    assert sample("epic_bridge_schedule_overcommitted", {"connection": "c"}) == 0
