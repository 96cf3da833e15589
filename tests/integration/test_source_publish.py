"""One batch of changes — events, fingerprints, cursor — is published exactly once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafka_support import read_topic

from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.table import CompactedTable
from bridge.kafka.txn import Committer
from bridge.source.cursors import CursorStore
from bridge.source.detect import detect_changes
from bridge.source.publish import BatchPublisher
from bridge.source.state import SeenStore


def patient(pid: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["Test"]}]}


@dataclass
class Source:
    publisher: BatchPublisher
    seen: SeenStore
    cursors: CursorStore
    committer: Committer


@pytest.fixture
def topics(new_topic: Callable[..., str]) -> dict[str, str]:
    return {
        "events": new_topic("patient.events", partitions=3),
        "state": new_topic("_state", compacted=True),
        "offsets": new_topic("_offsets", compacted=True),
    }


@pytest.fixture
def start_source(
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    topics: dict[str, str],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Callable[[], Source]]:
    """Starts a source the way a process (re)starts: register its transactional id (which fences the
    previous run), then rebuild the caches from the topics."""
    config = {"bootstrap.servers": kafka_bootstrap}
    txid = unique_name("poll-task")
    started: list[Source] = []

    def start() -> Source:
        committer = Committer(config, txid)
        committer.start().result()
        state_table = CompactedTable(config, topics["state"], tmp_path / f"state-{len(started)}.db")
        offsets_table = CompactedTable(config, topics["offsets"], tmp_path / f"offsets-{len(started)}.db")
        state_table.catch_up(60)
        offsets_table.catch_up(60)
        seen, cursors = SeenStore(state_table), CursorStore(offsets_table)
        codec = TopicCodec(schema_registry, topics["events"], load_schema("patient_event.avsc"))
        publisher = BatchPublisher(
            connection="sim", committer=committer, codecs={"Patient": codec}, seen=seen, cursors=cursors
        )
        source = Source(publisher, seen, cursors, committer)
        started.append(source)
        return source

    yield start
    for source in started:
        source.committer.close()


def poll_once(source: Source, resources: list[dict[str, Any]], position: int) -> int:
    known = source.seen.lookup("sim", "Patient", [r["id"] for r in resources])
    changes = detect_changes(resources, known)
    return source.publisher.publish("patient", "Patient", changes, {"position": position}).events


@pytest.mark.integration
def test_changes_are_published_once_and_survive_a_restart(
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    topics: dict[str, str],
    start_source: Callable[[], Source],
) -> None:
    source = start_source()
    page = [patient("p1", "Lin"), patient("p2", "Lopez"), patient("p2", "Lopez")]
    assert poll_once(source, page, 1) == 2
    assert poll_once(source, page, 2) == 0  # nothing changed
    page[0] = patient("p1", "Lin-Changed")
    assert poll_once(source, page, 3) == 1

    restarted = start_source()  # fences the first worker, rebuilds caches from Kafka
    assert restarted.cursors.get("sim", "patient") == {"position": 3}
    assert poll_once(restarted, page, 4) == 0
    assert sorted(restarted.seen.ids("sim", "Patient")) == ["p1", "p2"]

    deserialize = AvroDeserializer(schema_registry)
    events = [
        deserialize(m.value(), SerializationContext(topics["events"], MessageField.VALUE))
        for m in read_topic(kafka_bootstrap, topics["events"], expect=3)
    ]
    assert sorted((e["resource_id"], e["trigger"]) for e in events) == [
        ("p1", "CREATED"),
        ("p1", "UPDATED"),
        ("p2", "CREATED"),
    ]
    updated = next(e for e in events if e["trigger"] == "UPDATED")
    assert updated["patient"]["family_name"] == "Lin-Changed"


@pytest.mark.integration
def test_a_batch_that_fails_half_way_leaves_no_trace(
    kafka_bootstrap: str, topics: dict[str, str], start_source: Callable[[], Source]
) -> None:
    source = start_source()
    resources = [patient(f"p{i}", "Kim") for i in range(5)]
    changes = detect_changes(resources, {})
    broken = [*changes[:3], None]  # the 4th "change" blows up after 3 events were produced
    with pytest.raises(AttributeError):
        source.publisher.publish("patient", "Patient", broken, {"position": 1})  # type: ignore[list-item]
    assert source.seen.lookup("sim", "Patient", [r["id"] for r in resources]) == {}
    assert source.cursors.get("sim", "patient") is None
    assert read_topic(kafka_bootstrap, topics["events"]) == []

    assert poll_once(source, resources, 1) == 5  # the retry publishes all of them, once
    restarted = start_source()
    assert poll_once(restarted, resources, 2) == 0
    assert len(read_topic(kafka_bootstrap, topics["events"], expect=5)) == 5


@pytest.mark.integration
def test_from_now_baseline_records_without_events(
    kafka_bootstrap: str, topics: dict[str, str], start_source: Callable[[], Source]
) -> None:
    source = start_source()
    existing = [patient("p1", "A"), patient("p2", "B")]
    baseline = detect_changes(existing, {}, silent=True)
    assert source.publisher.publish("patient", "Patient", baseline, {"position": 0}).events == 0
    assert poll_once(source, [*existing, patient("p3", "C")], 1) == 1
    assert [m.key() for m in read_topic(kafka_bootstrap, topics["events"], expect=1)] == [b"p3"]
