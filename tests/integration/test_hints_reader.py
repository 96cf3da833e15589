"""Hints end to end up to the scheduler's door: HL7v2 messages over MLLP and records produced straight to
the hints topic, read back from the real topic, MRNs resolved against the real simulator (once, thanks to
the cache), the roster policy applied, bad records staged for the DLQ, and scan requests out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hints_support import LIN, LOPEZ, MRN_SYSTEM, ack_code, hints_config, hl7_message, mllp_client
from kafka_support import read_topic
from source_support import connection_config, sim_create

from bridge.config.models import ConnectionConfig
from bridge.connection import Connection
from bridge.hints.consume import hint_records
from bridge.hints.model import ScanRequest
from bridge.hints.mrn import Miss, MRNResolver
from bridge.hints.service import build_listener, build_reader, open_writer, prepare_hints
from bridge.kafka.avro import load_schema
from bridge.kafka.context import KafkaContext, KafkaSettings
from bridge.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from bridge.metrics import Metrics

pytestmark = pytest.mark.integration


class Roster:
    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)

    async def contains(self, patient_id: str) -> bool:
        return patient_id in self.ids

    async def add(self, patient_id: str) -> None:
        self.ids.add(patient_id)


def sim_config(sim: Any, tmp_path: Path, prefix: str) -> ConnectionConfig:
    base = connection_config(
        sim, tmp_path, prefix=prefix, roster={"source": "static", "patient_ids": [LIN[1]]}
    )
    return base.model_copy(update={"hints": hints_config(prefix).hints})


def identifier_searches(sim: Any) -> list[str]:
    """The Patient identifier searches the simulator has served (nothing else in these tests sends one)."""
    return [
        r["query"]["identifier"][0]
        for r in sim.requests(0)
        if r["path"].endswith("/Patient") and "identifier" in r["query"]
    ]


async def test_hints_from_mllp_and_kafka_become_scan_requests(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(profile="epic", patients=6, seed=13)
    other = next(p for p in _patient_ids(sim) if p not in (LIN[1], LOPEZ[1]))
    cfg = sim_config(sim, tmp_path, unique_name("hr"))
    kafka = KafkaContext(KafkaSettings(kafka_bootstrap=kafka_bootstrap, schema_registry_url=registry_url))
    topic = await asyncio.to_thread(prepare_hints, kafka, cfg)
    dlq = dlq_topic(cfg.topic_prefix, cfg.name)
    await asyncio.to_thread(ensure_topics, kafka.admin, [TopicSpec(dlq)])

    # 1. the feed: over MLLP (three messages about one patient, one unknown MRN) and straight to Kafka
    writer = await asyncio.to_thread(open_writer, kafka, cfg)
    listener = build_listener(cfg, writer)
    await listener.start()
    try:
        async with mllp_client(listener.port) as client:
            for type_ in ("ADT^A04^ADT_A01", "ADT^A08^ADT_A01", "ADT^A08^ADT_A01"):
                assert ack_code(await client.send(hl7_message(mrn=LIN[0], type_=type_))) == "AA"
            assert ack_code(await client.send(hl7_message(mrn=LOPEZ[0], type_="ORU^R01^ORU_R01"))) == "AA"
            assert ack_code(await client.send(hl7_message(mrn="999999"))) == "AA"
    finally:
        await listener.stop()
        writer.close()
    serializer = AvroSerializer(
        schema_registry,
        load_schema("hint.avsc"),
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    context = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for record in (
        {"patient_id": other, "resource_types": ["DocumentReference"], "reason": "note signed"},
        {"patient_id": "not-on-the-roster", "resource_types": ["Patient"]},
    ):
        producer.produce(topic, serializer(record, context), record["patient_id"].encode())
    producer.produce(topic, b"junk", b"bad-key")
    assert producer.flush(10) == 0

    # 2. the owner's side: consume the topic, resolve through the real simulator, hand out requests
    roster = Roster(LIN[1], LOPEZ[1], other)
    metrics = Metrics()
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    stop = asyncio.Event()
    got: list[ScanRequest] = []
    wanted = {
        (LIN[1], "Patient"),
        (LIN[1], "Encounter"),
        (LOPEZ[1], "Observation"),
        (other, "DocumentReference"),
    }
    async with await Connection.open(cfg) as connection:
        reader = build_reader(cfg, schema_registry, connection.fhir, roster, metrics)
        intake = asyncio.create_task(reader.run(hint_records(consumer, stop, poll_s=0.2)))

        async def collect() -> None:
            async for request in reader:
                got.append(request)
                if {
                    (q.patient_id, q.resource_type) for q in got
                } >= wanted and reader.checkpoint().offsets.get(0) == 8:
                    return

        await asyncio.wait_for(collect(), 60)
        stop.set()
        await intake
    consumer.close()

    pairs = [(q.patient_id, q.resource_type) for q in got]
    assert set(pairs) == wanted
    assert pairs.count((LIN[1], "Patient")) <= 2  # three messages, coalesced (at most one trailing scan)
    assert {q.reason for q in got if q.patient_id == LIN[1]} <= {"ADT^A04", "ADT^A08"}
    assert [q.reason for q in got if q.patient_id == other] == ["note signed"]
    # one identifier search per distinct MRN, however many hints named it
    assert sorted(identifier_searches(sim)) == sorted(
        f"{MRN_SYSTEM}|{m}" for m in (LIN[0], LOPEZ[0], "999999")
    )

    def count(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, {"connection": cfg.name, **labels}) or 0.0

    assert count("epic_bridge_hints_received_total", stage="reader") == 8
    assert count("epic_bridge_hints_accepted_total", stage="reader") == 5
    for reason in ("mrn-unknown", "outside-roster", "undecodable"):
        assert count("epic_bridge_hints_rejected_total", stage="reader", reason=reason) == 1
    assert count("epic_bridge_hint_mrn_lookups_total", result="miss") == 3
    assert count("epic_bridge_hint_mrn_lookups_total", result="hit") == 2

    # 3. the checkpoint the owner commits: every record handed over, the junk record for the DLQ
    checkpoint = reader.checkpoint()
    assert checkpoint.offsets == {0: 8}
    [dead] = checkpoint.dead_letters
    assert (dead.topic, dead.key, dead.value) == (dlq, b"bad-key", b"junk")
    dlq_producer = Producer({"bootstrap.servers": kafka_bootstrap})
    dlq_producer.produce(dead.topic, dead.value, dead.key, headers=list(dead.headers))
    assert dlq_producer.flush(10) == 0
    reader.committed(checkpoint)
    [record] = read_topic(kafka_bootstrap, dlq, expect=1)
    headers = {k: v for k, v in record.headers() or []}
    assert headers["dlq.error.reason"] == b"undecodable"
    assert (headers["dlq.source.topic"], headers["dlq.source.offset"]) == (topic.encode(), b"7")


def _patient_ids(sim: Any) -> list[str]:
    response = sim.admin.get("/admin/resources/Patient", params={"limit": 100})
    response.raise_for_status()
    ids: list[str] = response.json()["ids"]
    return ids


async def test_mrn_resolution_against_the_simulator_caches_hits_and_retries_misses_after_the_ttl(
    epic_sim_factory: Callable[..., Any], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    sim = epic_sim_factory(profile="epic", patients=4, seed=14)
    cfg = sim_config(sim, tmp_path, unique_name("mrn"))
    now = [0.0]
    async with await Connection.open(cfg) as connection:
        resolver = MRNResolver(
            connection.fhir, connection="sim", ttl_s=3600, miss_ttl_s=60, clock=lambda: now[0]
        )
        for _ in range(5):
            assert await resolver.resolve(MRN_SYSTEM, LIN[0]) == LIN[1]
        assert await resolver.resolve(MRN_SYSTEM, "777777") is Miss.UNKNOWN
        assert len(identifier_searches(sim)) == 2  # five hints for Lin: one request

        def patient(mrn: str) -> dict[str, Any]:
            return {
                "resourceType": "Patient",
                "identifier": [{"use": "usual", "system": MRN_SYSTEM, "value": mrn}],
                "name": [{"family": "Hint", "given": ["Test"]}],
            }

        created = sim_create(sim, patient("777777"))
        now[0] = 59.0  # the miss is still trusted: no request
        assert await resolver.resolve(MRN_SYSTEM, "777777") is Miss.UNKNOWN
        assert len(identifier_searches(sim)) == 2
        now[0] = 61.0  # expired: asked again, and now found
        assert await resolver.resolve(MRN_SYSTEM, "777777") == created["id"]
        assert len(identifier_searches(sim)) == 3

        sim_create(sim, patient("888888"))
        sim_create(sim, patient("888888"))
        assert await resolver.resolve(MRN_SYSTEM, "888888") is Miss.AMBIGUOUS
