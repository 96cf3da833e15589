"""The transactional producer wrapper and the compacted table, on the real broker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kafka_support import read_topic

from bridge.kafka.table import CompactedTable
from bridge.kafka.transactions import ProducerFencedError, TransactionalProducer


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
