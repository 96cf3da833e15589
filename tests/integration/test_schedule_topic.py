"""The schedule through its compacted topic on the real broker: writes committed with the scans' unit,
applied by the transaction helper after the commit, and a new owner of the connection rebuilding the same
queue from the topic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge.kafka.errors import RecordTooLargeError
from bridge.kafka.txn import Committer, Record, Unit
from bridge.source.schedule.codec import UnitKind
from bridge.source.schedule.policy import Policy, ScanOutcome
from bridge.source.schedule.scheduler import Scheduler
from bridge.source.schedule.store import ScheduleStore

KINDS = (UnitKind("Patient"), UnitKind("Observation", "vital-signs"), UnitKind("Encounter"))


async def roster(n: int) -> AsyncIterator[str]:
    for i in range(n):
        yield f"p{i:03d}"


def scheduler(store: ScheduleStore) -> Scheduler:
    return Scheduler(store, "c1", KINDS, Policy(units_per_patient=3, min_interval_s=1), lambda: 5.0)


@pytest.mark.integration
async def test_a_new_owner_rebuilds_the_same_queue_from_the_topic(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    config = {"bootstrap.servers": kafka_bootstrap}
    topic = new_topic("_schedule", partitions=3, compacted=True)
    committer = Committer(config, unique_name("tx"), max_record_bytes=100_000)
    committer.start().result()
    first = ScheduleStore.open(config, topic, tmp_path / "first.db")
    owner = scheduler(first)

    async for writes in owner.sync_roster(roster(40), 0.0, batch=50):
        await committer.commit(Unit(owner.records(writes)))
        owner.committed(writes)
    for t in range(30):  # batches of scans, each committed with its schedule writes
        writes = []
        for i, scan in enumerate(owner.next_due(float(t), 4)):
            outcome = ScanOutcome(changed=scan.patient in {"p003", "p017"} and t > 5)
            writes += owner.record(scan, outcome, t + i / 4)
        await committer.commit(Unit(owner.records(writes)))
        owner.committed(writes)

    # a batch whose transaction fails (here: with a record too large to send) leaves no trace
    taken = owner.next_due(30.0, 4)
    lost = [w for scan in taken for w in owner.record(scan, ScanOutcome(changed=True), 30.0)]
    with pytest.raises(RecordTooLargeError):
        await committer.commit(Unit([*owner.records(lost), Record(topic, b"too large", b"x" * 200_000)]))
    owner.aborted()
    committer.close()

    expected = [scan.key for scan in owner.next_due(40.0, 200)]
    assert [s.key for s in taken] == expected[:4]  # handed out again
    assert len(expected) == 120

    successor_store = ScheduleStore.open(config, topic, tmp_path / "successor.db")
    assert successor_store.catch_up(60) > 0
    successor = scheduler(successor_store)
    assert [scan.key for scan in successor.next_due(40.0, 200)] == expected
    assert successor.scale.u == pytest.approx(scheduler(first).scale.u, rel=1e-6)
    assert list(successor_store.units_of("c1")) == list(first.units_of("c1"))
    first.close()
    successor_store.close()
