"""Cycle cursors, batch overlays and the on-disk roster walk (no Kafka: the cache alone)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from bridge.kafka.table import CompactedTable
from bridge.source.batch import Batch
from bridge.source.cycle import CycleState, iso
from bridge.source.detect import detect_changes
from bridge.source.events import Trigger
from bridge.source.state import Seen, SeenStore, state_key

T0 = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)


def test_a_cycle_round_trips_through_its_cursor_and_resumes_after_the_last_patient() -> None:
    state = CycleState().begin(T0).patient_done("p2")
    cursor = state.to_cursor()
    assert cursor["position"] == "cycle=1;after=p2"
    again = CycleState.from_cursor(cursor).begin(T0 + dt.timedelta(hours=1))
    assert again == state  # a restarted cycle keeps its original start and resume point


def test_the_next_cycle_reads_back_one_overlap_before_this_cycles_start() -> None:
    state = CycleState().begin(T0)
    nxt = state.next_cycle(
        overlap_s=300, uses_since=True, full_every_s=None, moment=T0 + dt.timedelta(minutes=9)
    )
    assert (nxt.cycle, nxt.started, nxt.after, nxt.initial) == (2, None, None, False)
    assert nxt.since == iso(T0 - dt.timedelta(minutes=5))
    assert state.next_cycle(overlap_s=300, uses_since=False, full_every_s=None, moment=T0).since is None


def test_full_scans_come_back_on_their_interval() -> None:
    first = CycleState().begin(T0)  # the initial cycle is a full one
    second = first.next_cycle(
        overlap_s=0, uses_since=False, full_every_s=3600, moment=T0 + dt.timedelta(minutes=1)
    )
    assert (second.full, second.last_full) == (False, iso(T0))
    later = second.begin(T0 + dt.timedelta(minutes=2)).next_cycle(
        overlap_s=0, uses_since=False, full_every_s=3600, moment=T0 + dt.timedelta(minutes=61)
    )
    assert later.full


def test_a_rescan_is_a_fresh_full_cycle_that_keeps_whether_the_initial_sync_finished() -> None:
    midway = CycleState().begin(T0).patient_done("p2")
    done = midway.next_cycle(overlap_s=300, uses_since=True, full_every_s=3600, moment=T0)
    done = done.begin(T0 + dt.timedelta(minutes=5)).patient_done("p7")
    fresh = done.rescan()
    assert (fresh.cycle, fresh.started, fresh.since, fresh.after) == (3, None, None, None)
    assert fresh.full and not fresh.initial and fresh.last_full == done.last_full
    assert midway.rescan().initial  # an unfinished initial sync stays the initial sync


def resource(rid: str, family: str) -> dict[str, object]:
    return {"resourceType": "Patient", "id": rid, "name": [{"family": family}]}


def test_a_silent_baseline_only_ever_silences_first_sights() -> None:
    recorded = detect_changes([resource("a", "Lin")], {}, silent=True)
    assert [c.trigger for c in recorded] == [None]
    known = {"a": recorded[0].seen()}
    changes = detect_changes([resource("a", "Lin-2"), resource("b", "Lopez")], known, silent=True)
    assert [(c.resource_id, c.trigger) for c in changes] == [("a", Trigger.UPDATED), ("b", None)]


def test_the_open_batch_overlays_the_store_so_an_id_seen_twice_before_a_commit_counts_once() -> None:
    batch = Batch()
    batch.add(detect_changes([resource("a", "Lin")], {}))
    # the same content again on a later page, before any commit: nothing new
    again = detect_changes([resource("a", "Lin")], batch.known(["a"], {}))
    assert again == []
    changed = detect_changes([resource("a", "Lin-2")], batch.known(["a"], {}))
    assert [c.trigger for c in changed] == [Trigger.UPDATED]
    stored = {"b": Seen("f" * 64, "b")}
    assert batch.known(["a", "b"], stored)["b"] == stored["b"]


def test_the_seen_patients_roster_walks_the_cache_in_id_order_a_chunk_at_a_time(tmp_path: Path) -> None:
    table = CompactedTable({"bootstrap.servers": "unused:9"}, "t._state", tmp_path / "state.db")
    ids = [f"e{i:03d}.x-{i % 7}" for i in range(250)]
    table.apply([(state_key("c1", "Patient", i), b'{"fp":"x"}', 0, n) for n, i in enumerate(ids)])
    table.apply(
        [
            (state_key("c1", "Encounter", "zz"), b'{"fp":"x"}', 1, 0),
            (state_key("c2", "Patient", "a"), b"{}", 2, 0),
        ]
    )
    seen = SeenStore(table)
    walked: list[str] = []
    after = None
    while True:
        chunk = seen.ids_after("c1", "Patient", after, 100)
        walked += chunk
        if len(chunk) < 100:
            break
        after = chunk[-1]
    assert walked == sorted(ids)
    assert seen.ids_after("c1", "Patient", sorted(ids)[-1], 100) == []
