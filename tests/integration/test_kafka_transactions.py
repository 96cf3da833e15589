"""The transactional producer wrapper, the transaction helper and the compacted table, on the real
broker."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from kafka_support import Owner, read_topic

from bridge.kafka.membership import Membership, MembershipSettings
from bridge.kafka.table import CompactedTable, TableReader
from bridge.kafka.transactions import (
    ProducerFencedError,
    TransactionAbortedError,
    TransactionalProducer,
    TransactionTimedOutError,
)
from bridge.kafka.txn import Committer, Record, Unit


@pytest.mark.integration
def test_transaction_block_aborts_on_error_and_commits_otherwise(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = new_topic("events")
    producer = TransactionalProducer({"bootstrap.servers": kafka_bootstrap}, unique_name("tx"))
    producer.init()
    with pytest.raises(RuntimeError), producer.transaction():
        producer.produce(topic, b"lost", key=b"a")
        raise RuntimeError("the poll failed half way")
    assert not producer.in_transaction
    with producer.transaction():
        producer.produce(topic, b"kept", key=b"b")
    producer.close()
    assert [m.value() for m in read_topic(kafka_bootstrap, topic, expect=1)] == [b"kept"]


@pytest.mark.integration
def test_fenced_producer_gets_a_typed_error_and_its_batch_stays_invisible(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    topic = new_topic("events")
    txid = unique_name("tx")
    zombie = TransactionalProducer({"bootstrap.servers": kafka_bootstrap}, txid)
    zombie.init()
    zombie.begin()
    zombie.produce(topic, b"from the zombie")
    successor = TransactionalProducer({"bootstrap.servers": kafka_bootstrap}, txid)
    successor.init()
    with successor.transaction():
        successor.produce(topic, b"from the successor")
    with pytest.raises(ProducerFencedError, match="now used by another worker"):
        zombie.commit()
    zombie.close()
    successor.close()
    assert [m.value() for m in read_topic(kafka_bootstrap, topic, expect=1)] == [b"from the successor"]


@pytest.mark.integration
def test_table_catches_up_from_the_topic_and_resumes_from_its_position(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = new_topic("_state", partitions=3, compacted=True)
    config = {"bootstrap.servers": kafka_bootstrap}
    producer = TransactionalProducer(config, unique_name("tx"))
    producer.init()
    with producer.transaction():
        for i in range(300):
            producer.produce(topic, b"v1", key=f"k{i:04d}".encode())
    with pytest.raises(RuntimeError), producer.transaction():
        producer.produce(topic, b"aborted", key=b"k0000")
        raise RuntimeError
    with producer.transaction():
        producer.produce(topic, b"v2", key=b"k0001")
        producer.produce(topic, None, key=b"k0002")  # tombstone

    table = CompactedTable(config, topic, tmp_path / "state.db")
    assert table.catch_up(timeout_s=60) == 302
    assert len(table) == 299
    assert table.get(b"k0000") == b"v1"  # the aborted write never counts
    assert table.get(b"k0001") == b"v2"
    assert table.get(b"k0002") is None
    assert table.get_many([b"k0003", b"k0004", b"nope"]) == {b"k0003": b"v1", b"k0004": b"v1"}
    assert [k for k, _ in table.scan_prefix(b"k000")] == [b"k0000", b"k0001"] + [
        f"k000{i}".encode() for i in range(3, 10)
    ]
    table.close()

    # A restart reads only what was written since.
    with producer.transaction():
        producer.produce(topic, b"v3", key=b"k0005")
    producer.close()
    reopened = CompactedTable(config, topic, tmp_path / "state.db")
    assert reopened.catch_up(timeout_s=60) == 1
    assert reopened.get(b"k0005") == b"v3"
    assert len(reopened) == 299
    reopened.close()


@pytest.mark.integration
def test_table_of_an_empty_topic_catches_up_at_once(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic("_empty", partitions=2, compacted=True)
    table = CompactedTable({"bootstrap.servers": kafka_bootstrap}, topic, tmp_path / "t.db")
    assert table.catch_up(timeout_s=30) == 0
    assert len(table) == 0


@pytest.mark.integration
def test_a_transaction_timeout_is_told_from_a_fence_and_a_new_producer_carries_on(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """librdkafka reports the coordinator's abort of a timed-out transaction exactly like a fence
    (`_FENCED` after INVALID_PRODUCER_EPOCH). Nobody took the id over: it is a timeout, the batch is to
    be redone, and a new producer with the same id works."""
    topic = new_topic("events")
    txid = unique_name("tx")
    config = {"bootstrap.servers": kafka_bootstrap, "transaction.timeout.ms": 1000}
    slow = TransactionalProducer(config, txid)
    slow.init()
    slow.begin()
    slow.produce(topic, b"too late")
    time.sleep(12)  # past the timeout and the broker's abort scan (every 10 s)
    with pytest.raises(TransactionAbortedError) as raised:
        slow.commit()
    assert isinstance(raised.value, TransactionTimedOutError) and not slow.usable
    slow.close()
    again = TransactionalProducer(config, txid)
    again.init()
    with again.transaction():
        again.produce(topic, b"redone")
    again.close()
    assert [m.value() for m in read_topic(kafka_bootstrap, topic, expect=1)] == [b"redone"]


class Held:
    """Fencing for a committer without a group: its guard is a lock the test holds to queue units up."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.outcomes: list[tuple[str, int]] = []

    def guard(self) -> threading.RLock:
        return self.lock

    def owns(self, connection: str) -> bool:
        return True

    def marker(self, connection: str) -> TopicPartition:
        raise AssertionError("units without an owner send no marker")

    def group_metadata(self) -> None:
        return None

    def transaction(self, outcome: str, units: int) -> None:
        self.outcomes.append((outcome, units))


@pytest.mark.integration
def test_units_share_a_transaction_and_a_poison_unit_fails_alone(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """Units that queue up while a transaction runs share the next one; one whose record the client
    refuses (above message.max.bytes) makes that transaction fail, each unit is then tried alone, and only
    the poison unit fails, with the reason. The table cache learns exactly what committed."""
    events, state = new_topic("events"), new_topic("_state", partitions=3, compacted=True)
    table = CompactedTable({"bootstrap.servers": kafka_bootstrap}, state, tmp_path / "state.db")
    held = Held()
    committer = Committer(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 200_000},
        unique_name("tx"),
        fencing=held,
        observer=held,
        max_record_bytes=10_000_000,  # let the client's own limit catch it inside the transaction
    )
    committer.start().result()

    def unit(key: bytes, size: int = 10) -> Unit:
        return Unit([Record(events, key, key * size), Record(state, b"s" + key, b"fp" + key, table=table)])

    try:
        with held.lock:
            futures = [committer.submit(unit(b"first"))]
            time.sleep(0.5)  # the committer took it and waits for the guard; the others queue up
            futures += [committer.submit(unit(b"k%d" % i)) for i in range(4)]
            futures.insert(3, committer.submit(unit(b"big", 300_000)))
        outcomes = [f.exception(timeout=60) for f in futures]
    finally:
        committer.close()
    assert [type(e).__name__ if e else None for e in outcomes] == [
        None, None, None, "RecordTooLargeError", None, None,
    ]  # fmt: skip
    assert held.outcomes[:2] == [("committed", 1), ("aborted", 5)]
    assert sorted(held.outcomes[2:]) == [("committed", 1)] * 4 + [("failed", 1)]
    keys = [b"first", b"k0", b"k1", b"k2", b"k3"]
    assert sorted(m.key() for m in read_topic(kafka_bootstrap, events, expect=5)) == sorted(keys)
    assert table.get(b"sbig") is None
    assert table.get_many([b"s" + k for k in keys]) == {b"s" + k: b"fp" + k for k in keys}
    assert table.catch_up(30) == 5  # the cache already had them, at the same offsets
    table.close()


@pytest.mark.integration
def test_a_catch_up_running_while_the_process_commits_never_moves_a_key_back(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    state = new_topic("_state", partitions=2, compacted=True)
    config = {"bootstrap.servers": kafka_bootstrap}
    table = CompactedTable(config, state, tmp_path / "state.db")
    committer = Committer(config, unique_name("tx"))
    committer.start().result()
    reader = TableReader(config, [table])
    seen: list[int] = []
    done = threading.Event()

    def catch_up_and_watch() -> None:
        while not done.is_set():
            reader.catch_up(30)
            value = table.get(b"counter")
            if value is not None:
                seen.append(int(value))

    watcher = threading.Thread(target=catch_up_and_watch)
    watcher.start()
    try:
        for n in range(1, 151):
            committer.commit_sync(Unit([Record(state, b"counter", str(n).encode(), table=table)]), 30)
            value = table.get(b"counter")
            assert value is not None
            seen.append(int(value))
    finally:
        done.set()
        watcher.join(60)
        committer.close()
        reader.close()
    assert table.get(b"counter") == b"150"
    assert all(later >= earlier for earlier, later in itertools.pairwise(seen)), "a key moved backwards"
    table.close()


@pytest.mark.integration
def test_a_paused_member_cannot_commit_after_its_connection_moved(
    kafka_bootstrap: str, new_topic: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """A member is SIGSTOPped between flushing a unit's records and sending its offsets. Its session
    expires and the other member takes the connection over; its settle and catch-up wait for the paused
    transaction, then it commits. SIGCONT: the zombie's offsets carry a stale generation, the coordinator
    refuses them, the transaction aborts, and nothing it staged ever becomes visible."""
    tasks, events = new_topic("_tasks.x"), new_topic("events")
    state = new_topic("_state", compacted=True)
    group = unique_name("group")
    config = {"bootstrap.servers": kafka_bootstrap}
    zombie = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("zombie_member.py")), kafka_bootstrap, group, tasks,
         events, state, unique_name("zombie")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert zombie.stdout is not None and zombie.stdin is not None
    owner = Owner()
    membership = Membership(
        config,
        MembershipSettings(group, "successor", session_timeout_s=6, heartbeat_interval_s=2),
        {"x": tasks},
        owner,
    )
    committer = Committer(config, unique_name("successor"), fencing=membership)
    table = CompactedTable(config, state, tmp_path / "state.db")
    try:
        assert zombie.stdout.readline().strip() == "STAGED"
        os.kill(zombie.pid, signal.SIGSTOP)
        paused = time.monotonic()
        membership.start()
        committer.start().result()
        assert owner.owned.wait(30), "the connection never moved to the live member"
        assert time.monotonic() - paused >= 5  # not before the paused member's session expired
        membership.settle(["x"], 60)
        catching_up = threading.Thread(target=table.catch_up, args=(120,))
        catching_up.start()
        time.sleep(2)
        assert catching_up.is_alive(), "the catch-up must wait for the paused member's open transaction"
        os.kill(zombie.pid, signal.SIGCONT)
        zombie.stdin.write("go\n")
        zombie.stdin.flush()
        outcome = next(line for line in zombie.stdout if line.startswith("OUTCOME"))
        assert outcome.startswith("OUTCOME OwnershipRefusedError"), outcome
        catching_up.join(60)
        assert not catching_up.is_alive()
        records = [Record(events, b"x", b"from the new owner"), Record(state, b"x", b"fp", table=table)]
        committer.commit_sync(Unit(records, owner="x"), 30)
        assert table.get(b"x") == b"fp"
    finally:
        if zombie.poll() is None:
            os.kill(zombie.pid, signal.SIGCONT)
            zombie.kill()
        zombie.wait(30)
        committer.close()
        membership.stop()
        table.close()
    assert [m.value() for m in read_topic(kafka_bootstrap, events, expect=1)] == [b"from the new owner"]
    assert len(read_topic(kafka_bootstrap, events, isolation="read_uncommitted", expect=2)) == 2
