"""Hostile commands against the real sink, broker, registry and simulator: reply topics aimed at the
bridge's own topics, oversized results, undecodable and schema-mismatched values, and the registry going
away in the middle of a batch. Through all of it the sink keeps running, every command gets exactly one
result (or one dead letter), and the internal topics and their subjects stay untouched.

The shared registry is never stopped: the sink reaches it through a loopback TCP proxy the test cuts.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from kafka_support import read_topic
from sink_support import RunningSink, kafka_context, start_sink, write_connection
from tcp_proxy import TcpProxy

from bridge.kafka.avro import load_schema
from bridge.kafka.topics import (
    TopicSpec,
    command_results_topic,
    commands_topic,
    ensure_topics,
    events_topic,
    offsets_topic,
    results_topic,
    state_topic,
)
from bridge.sink.service import SinkTopics

pytestmark = pytest.mark.integration


@dataclass
class Hostile:
    sim: Any
    sink: RunningSink
    proxy: TcpProxy
    admin: AdminClient
    registry: SchemaRegistryClient  # direct, for the test's own look-ups
    bootstrap: str
    patient: str

    @property
    def prefix(self) -> str:
        return self.sink.harness.config.topic_prefix

    @property
    def name(self) -> str:
        return self.sink.harness.config.name

    def compatibility(self, subject: str) -> str:
        try:
            return str(self.registry.get_compatibility(subject))
        except SchemaRegistryError as exc:
            return f"unset ({exc.http_status_code})"

    def versions(self, subject: str) -> list[int]:
        try:
            return list(self.registry.get_versions(subject))
        except SchemaRegistryError:
            return []

    def end_offsets(self, topic: str) -> list[int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"t-{uuid.uuid4().hex}"})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            return [
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
            ]
        finally:
            consumer.close()

    async def results_for(self, records: list[dict[str, Any]], timeout_s: float = 60) -> dict[str, Any]:
        """The one result of each command (fails if any command has none, or more than one)."""
        harness = self.sink.harness
        ids = [r["command_id"] for r in records]
        await harness.wait_for(lambda: all(i in harness.results for i in ids), timeout_s, self.sink.task)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(harness.collect, 1.0)  # anything that would be a second result
        assert all(len(harness.results[i]) == 1 for i in ids), {i: harness.results[i] for i in ids}
        return {i: harness.results[i][0] for i in ids}


@pytest.fixture
async def make_hostile(
    epic_sim_factory: Any, tmp_path: Path, kafka_bootstrap: str, registry_url: str, kafka_admin: AdminClient
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Hostile] = []

    async def make(results_max_bytes: int | None = None, **over: Any) -> Hostile:
        sim = epic_sim_factory(profile="epic", patients=2, seed=9, short_page_rate=0)
        config = write_connection(sim, tmp_path / f"cfg{len(started)}", "hostile", **over)
        if results_max_bytes is not None:  # an operator's smaller limit on the results topic
            limit = {"max.message.bytes": str(results_max_bytes)}
            ensure_topics(kafka_admin, [TopicSpec(SinkTopics.of(config).results, 3, config=limit)])
        proxy = TcpProxy.for_url(registry_url)
        kafka = kafka_context(kafka_bootstrap, proxy.url_for(registry_url), tmp_path / f"state{len(started)}")
        sink = await start_sink(config, kafka)
        env = Hostile(
            sim,
            sink,
            proxy,
            kafka_admin,
            SchemaRegistryClient({"url": registry_url}),
            kafka_bootstrap,
            sim.sim.store.ids("Patient", limit=1)[0],
        )
        started.append(env)
        return env

    yield make
    for env in started:
        await env.sink.close()
        env.proxy.close()


# -- reply topics ------------------------------------------------------------------------------------
async def test_reply_topics_aimed_at_internal_and_foreign_topics_are_refused_and_leave_them_untouched(
    make_hostile: Callable[..., Any],
) -> None:
    env: Hostile = await make_hostile()
    prefix, name = env.prefix, env.name
    events = events_topic(prefix, name, "patient")
    other_results = results_topic(prefix, "another-connection")
    ensure_topics(
        env.admin,
        [
            TopicSpec.compacted(state_topic(prefix)),
            TopicSpec.compacted(offsets_topic(prefix)),
            TopicSpec(events),
            TopicSpec(other_results),
        ],
    )
    # The events topic's subject as the source side leaves it, with a level an operator chose.
    env.registry.set_compatibility(f"{events}-value", "FULL")
    env.registry.register_schema(f"{events}-value", Schema(load_schema("patient_event.avsc").strip(), "AVRO"))
    targets = {
        "state": state_topic(prefix),
        "offsets": offsets_topic(prefix),
        "command-results": command_results_topic(prefix),
        "events": events,
        "dlq": env.sink.harness.topics.dlq,
        "commands": commands_topic(prefix, name, "patient"),
        "other connection": other_results,
        "kafka internal": "__consumer_offsets",
    }
    # The test's own producer registers the command schema: let it do so before the snapshot.
    await env.sink.run("Patient", "FIND", criteria={"_id": env.patient})
    untouched = [
        state_topic(prefix),
        offsets_topic(prefix),
        events,
        other_results,
        env.sink.harness.topics.dlq,
    ]
    ends_before = {t: env.end_offsets(t) for t in untouched}
    subjects = [f"{t}-value" for t in targets.values()]
    levels_before = {s: env.compatibility(s) for s in subjects}
    versions_before = {s: env.versions(s) for s in subjects}

    records = {
        label: env.sink.send("Patient", "FIND", criteria={"_id": env.patient}, reply_topic=topic)
        for label, topic in targets.items()
    }
    results = await env.results_for(list(records.values()))

    for label, record in records.items():
        result = results[record["command_id"]]
        assert result["status"] == "REJECTED", (label, result)
        assert targets[label] in result["error"]["message"], (label, result["error"])
        assert result["attempts"] == 0
    assert {t: env.end_offsets(t) for t in untouched} == ends_before
    commands = read_topic(env.bootstrap, commands_topic(prefix, name, "patient"))
    assert len(commands) == len(records) + 1  # what the test sent, nothing else
    for message in read_topic(env.bootstrap, command_results_topic(prefix)):
        assert json.loads(message.key())[0] == name  # only the ledger's own JSON records
        json.loads(message.value())
    assert {s: env.compatibility(s) for s in subjects} == levels_before
    assert {s: env.versions(s) for s in subjects} == versions_before
    assert env.sink.task.done() is False


async def test_reply_topics_the_config_lists_get_results_and_no_other_subject_is_touched(
    make_hostile: Callable[..., Any], new_topic: Callable[..., str]
) -> None:
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    allowed = new_topic("replies")
    taken = new_topic("taken.replies")  # listed, but its subject is another team's
    unlisted = new_topic("unlisted")
    env: Hostile = await make_hostile(sink={"reply_topics": ["t.*.replies"]})
    env.registry.set_compatibility(f"{taken}-value", "FULL")
    env.registry.register_schema(f"{taken}-value", Schema(load_schema("patient_event.avsc").strip(), "AVRO"))
    taken_versions = env.versions(f"{taken}-value")

    ok = env.sink.send(
        "Patient", "FIND", criteria={"_id": env.patient}, reply_topic=allowed, correlation_id="r1"
    )
    refused = {
        taken: env.sink.send("Patient", "FIND", criteria={"_id": env.patient}, reply_topic=taken),
        unlisted: env.sink.send("Patient", "FIND", criteria={"_id": env.patient}, reply_topic=unlisted),
        "t.absent.replies": env.sink.send(
            "Patient", "FIND", criteria={"_id": env.patient}, reply_topic="t.absent.replies"
        ),
    }
    results = await env.results_for(list(refused.values()))
    messages = await asyncio.to_thread(read_topic, env.bootstrap, allowed, "read_committed", 1)
    assert len(messages) == 1
    result = AvroDeserializer(env.registry)(
        messages[0].value(), SerializationContext(allowed, MessageField.VALUE)
    )
    assert (result["command_id"], result["status"], result["correlation_id"]) == (
        ok["command_id"],
        "SUCCEEDED",
        "r1",
    )
    assert ok["command_id"] not in env.sink.harness.results  # not also on the shared results topic
    assert env.compatibility(f"{allowed}-value") == "BACKWARD"  # a subject the bridge created
    for topic, record in refused.items():
        outcome = results[record["command_id"]]
        assert outcome["status"] == "REJECTED" and topic in outcome["error"]["message"], outcome
    assert "another schema" in results[refused[taken]["command_id"]]["error"]["message"]
    assert "does not exist" in results[refused["t.absent.replies"]["command_id"]]["error"]["message"]
    assert "sink.reply_topics" in results[refused[unlisted]["command_id"]]["error"]["message"]
    assert env.compatibility(f"{taken}-value") == "FULL"
    assert env.versions(f"{taken}-value") == taken_versions
    assert read_topic(env.bootstrap, taken) == [] and read_topic(env.bootstrap, unlisted) == []


# -- oversized results ---------------------------------------------------------------------------------
def _big_patient(sim: Any, family: str, text_bytes: int) -> str:
    resource = {
        "resourceType": "Patient",
        "id": sim.sim.new_id("Patient"),
        "name": [{"family": family, "given": ["Big"]}],
        "birthDate": "1970-01-01",
        "gender": "female",
        # random text: the producer compresses, and the broker's limit applies to what it receives
        "text": {
            "status": "generated",
            "div": f"<div>{secrets.token_urlsafe(text_bytes)[:text_bytes]}</div>",
        },
    }
    sim.sim.store.insert(resource)
    return str(resource["id"])


async def test_a_result_larger_than_the_topic_accepts_is_answered_smaller_not_retried_forever(
    make_hostile: Callable[..., Any],
) -> None:
    env: Hostile = await make_hostile(results_max_bytes=200_000)
    big = _big_patient(env.sim, "Oversized", 400_000)
    small = env.sink.send("Patient", "FIND", criteria={"_id": env.patient})
    record = env.sink.send("Patient", "FIND", criteria={"_id": big})
    results = await env.results_for([small, record])

    result = results[record["command_id"]]
    assert (result["status"], result["resource_ids"], result["resources_json"]) == ("SUCCEEDED", [big], [])
    assert result["truncated"] is True
    assert any("read the resources by id" in w for w in result["warnings"]), result["warnings"]
    assert len(results[small["command_id"]]["resources_json"]) == 1  # a result that fits is left alone
    assert not env.sink.task.done()


# -- poison input --------------------------------------------------------------------------------------
async def test_undecodable_and_schema_mismatched_values_are_dead_lettered_and_the_loop_moves_on(
    make_hostile: Callable[..., Any], schema_registry: SchemaRegistryClient, unique_name: Callable[[str], str]
) -> None:
    env: Hostile = await make_hostile()
    harness = env.sink.harness
    string_id = schema_registry.register_schema(unique_name("string-value"), Schema('"string"', "AVRO"))
    other_record = json.dumps(
        {"type": "record", "name": "NotACommand", "fields": [{"name": "command_id", "type": "long"}]}
    )
    other_id = schema_registry.register_schema(unique_name("other-value"), Schema(other_record, "AVRO"))
    poison = [
        b"not avro at all",
        b"\x00" + struct.pack(">I", 2_000_000_000) + b"\x02",  # a schema id the registry never issued
        b"\x00" + struct.pack(">I", string_id) + b"\x06abc",  # a string, not a command
        b"\x00" + struct.pack(">I", other_id) + b"\x02",  # a record of another schema
        harness.encode("Patient", {"command_id": "x", "action": "FIND"})[:5] + b"\xff",  # cut short
        b"",
    ]
    for value in poison:
        harness.send_raw("Patient", value, key=b"poison")
    after = env.sink.send("Patient", "FIND", criteria={"_id": env.patient}, key=b"poison")
    results = await env.results_for([after])
    await harness.wait_for(lambda: len(harness.dead) >= len(poison), 60, env.sink.task)
    await asyncio.to_thread(harness.collect, 1.0)
    assert len(harness.dead) == len(poison)
    reasons = [dict(m.headers())["dlq.error.reason"].decode() for m in harness.dead]
    assert set(reasons) <= {"undecodable", "unknown-schema", "missing-field", "empty"}, reasons
    assert results[after["command_id"]]["status"] == "SUCCEEDED"
    assert not env.sink.task.done()


# -- the registry going away ---------------------------------------------------------------------------
def _variant_command_schema() -> str:
    """The Patient command schema with one more optional field: same commands, a new writer schema id."""
    schema = json.loads(load_schema("patient_command.avsc"))
    schema["fields"].append({"name": "x_extra", "type": ["null", "string"], "default": None})
    return json.dumps(schema)


async def test_the_registry_going_down_mid_batch_delays_the_batch_and_loses_or_repeats_nothing(
    make_hostile: Callable[..., Any], new_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    reply = new_topic("replies")
    env: Hostile = await make_hostile(sink={"reply_topics": ["t.*.replies"]})
    await env.sink.run("Patient", "FIND", criteria={"_id": env.patient})  # results codec ready
    variant = AvroSerializer(
        env.registry, _variant_command_schema(), conf={"subject.name.strategy": lambda *_: unique_name("v")}
    )
    topic = env.sink.harness.topic_of("Patient")
    create = {
        "command_id": f"cr-{uuid.uuid4().hex}",
        "action": "CREATE",
        "fields": {
            "family_name": "Outage",
            "given_names": ["Reg"],
            "birth_date": "1980-02-03",
            "gender": "male",
        },
    }
    variant_value = variant(create, SerializationContext(topic, MessageField.VALUE))

    patients = env.sim.sim.store.count("Patient")
    env.proxy.cut()
    records = [env.sink.send("Patient", "FIND", criteria={"_id": env.patient}) for _ in range(3)]
    records.append(env.sink.send("Patient", "FIND", criteria={"_id": env.patient}, reply_topic=reply))
    env.sink.harness.send_raw("Patient", variant_value, key=b"variant")
    records.append(create)
    env.sink.harness.flush()
    await asyncio.sleep(8)  # the sink keeps retrying the batch while the registry is away
    assert not env.sink.task.done(), env.sink.task.exception()
    assert (
        env.sim.sim.store.count("Patient") == patients
    )  # nothing was created while the batch could not finish
    env.proxy.restore()

    others = [r for r in records if r.get("reply_topic") is None]
    results = await env.results_for(others, timeout_s=120)
    assert all(results[r["command_id"]]["status"] == "SUCCEEDED" for r in others), results
    created = results[create["command_id"]]
    assert created["effect"] == "CREATED" and created["replayed"] is False
    outage = env.sim.sim.store.query(
        "SELECT seq, type, id, version, last_updated, json FROM resources "
        "WHERE type='Patient' AND json LIKE ?",
        ("%Outage%",),
    )
    assert [r.id for r in outage] == created["resource_ids"]  # created once
    replies = await asyncio.to_thread(read_topic, env.bootstrap, reply, "read_committed", 1)
    assert len(replies) == 1
    assert not env.sink.task.done()
