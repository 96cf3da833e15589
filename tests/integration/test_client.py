"""The client library against the real broker, registry, simulator and bridge: events read as typed
objects, request/reply (results topic and a reply topic of the client's own), a timeout, and a dead
letter read, fixed and replayed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from sink_support import kafka_context, start_sink, write_connection
from source_support import SourceRun, connection_config, sim_resources

from bridge.client import (
    CommandClient,
    CommandEncoder,
    DeadLetter,
    Effect,
    EventReader,
    ResultTimeout,
    Status,
    Topics,
    Trigger,
    find,
)

pytestmark = pytest.mark.integration


def test_events_read_as_typed_objects(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    registry_url: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(profile="epic", patients=2, seed=5)
    cfg = connection_config(sim, tmp_path, prefix=unique_name("cl"), resources={"Appointment": {}})
    run = SourceRun(cfg, kafka_context(kafka_bootstrap, registry_url, tmp_path / "state"))
    try:
        run.cycles(1)
    finally:
        run.close()
    expected = set(sim_resources(sim, "Appointment"))
    topics = Topics(cfg.name, cfg.topic_prefix)
    kafka = {"bootstrap.servers": kafka_bootstrap}
    seen: dict[str, Any] = {}
    with EventReader(kafka, schema_registry, topics, unique_name("group")) as reader:
        deadline = time.monotonic() + 60
        while set(seen) != expected and time.monotonic() < deadline:
            event = reader.poll(0.5)
            if event is not None:
                seen[event.resource_id] = event
        reader.commit()
    assert set(seen) == expected
    for event in seen.values():
        assert event.trigger is Trigger.CREATED and event.resource_type == "Appointment"
        assert event.resource["id"] == event.resource_id and event.patient_id
        assert event.fhir().status == event.projection["status"]


async def test_request_reply_reply_topic_timeout_and_a_replayed_dead_letter(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(profile="epic", patients=2, seed=11, short_page_rate=0)
    patient = sim.sim.store.ids("Patient", limit=1)[0]
    # The reply topic must be one the connection allows (sink.reply_topics).
    config = write_connection(sim, tmp_path / "cfg", "client", sink={"reply_topics": ["t.*.replies"]})
    sink = await start_sink(config, kafka_context(kafka_bootstrap, registry_url, tmp_path / "state"))
    kafka = {"bootstrap.servers": kafka_bootstrap}
    topics = Topics(config.name, config.topic_prefix)
    try:

        def round_trips() -> tuple[Any, Any]:
            with CommandClient(kafka, schema_registry, topics) as client:
                plain = client.request(find("Patient", {"_id": patient}, correlation_id="c-1"), timeout_s=60)
            reply = unique_name("replies")
            with CommandClient(
                kafka, schema_registry, topics, reply_topic=reply, create_reply_topic=True
            ) as c:
                replied = c.request(find("Patient", {"_id": "nobody-has-this-id"}), timeout_s=60)
            return plain, replied

        plain, replied = await asyncio.to_thread(round_trips)
        assert (plain.status, plain.effect, plain.resource_ids) == (
            Status.SUCCEEDED,
            Effect.MATCHED,
            (patient,),
        )
        assert plain.correlation_id == "c-1" and plain.resources[0]["id"] == patient
        assert replied.status is Status.NOT_FOUND and replied.ok

        # A record that is no command lands in the DLQ; read it, fix it, replay it to where it came from.
        producer = Producer(kafka)
        producer.produce(topics.commands("Patient"), key=b"k-1", value=b"\x07 not a command")
        producer.flush(10)
        letter = await asyncio.to_thread(read_dead_letter, kafka_bootstrap, topics.dlq)
        assert (letter.reason, letter.source_topic, letter.key) == (
            "undecodable", topics.commands("Patient"), b"k-1",
        )  # fmt: skip
        assert letter.value == b"\x07 not a command" and letter.connection == config.name

        def replay() -> Any:
            fixed = find("Patient", {"_id": patient})
            with CommandClient(kafka, schema_registry, topics) as client:
                letter.replay(producer, value=CommandEncoder(schema_registry, topics)(fixed))
                producer.flush(10)
                client.expect(fixed.command_id)  # sent by the replay, not by this client
                return client.result(fixed.command_id, timeout_s=60)

        replayed = await asyncio.to_thread(replay)
        assert replayed.status is Status.SUCCEEDED and replayed.resource_ids == (patient,)
    finally:
        await sink.close()

    def unanswered() -> None:
        with CommandClient(kafka, schema_registry, topics) as client:
            client.request(find("Patient", {"_id": patient}), timeout_s=3)

    with pytest.raises(ResultTimeout, match="no result for command"):
        await asyncio.to_thread(unanswered)


def read_dead_letter(bootstrap: str, topic: str) -> DeadLetter:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                return DeadLetter.from_message(msg)
        raise AssertionError(f"no dead letter on {topic}")
    finally:
        consumer.close()
