"""The command loop on the real broker and registry, with the engine's Kafka pieces (group membership,
partition feed, transaction helper) and a small in-memory stand-in for Epic.

The stand-in only counts and records calls; what the loop guarantees is under test: one result per
command, no second execution of a command id, intents before creates, dead letters for bad records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafka_support import Owner, read_topic

from bridge.kafka.avro import load_schema
from bridge.kafka.feed import PartitionFeed
from bridge.kafka.membership import Membership, MembershipSettings
from bridge.kafka.table import CompactedTable
from bridge.kafka.txn import Committer, Record, Unit
from bridge.sink.ledger import CommandLedger
from bridge.sink.model import Command, Effect, Outcome, Status
from bridge.sink.worker import SinkSettings, SinkWorker


@dataclass
class StandInEhr:
    """Creates resources in memory; remembers every call."""

    calls: list[tuple[str, bool]] = field(default_factory=list)
    started: list[float] = field(default_factory=list)  # wall-clock time of each call
    created: list[str] = field(default_factory=list)
    running: int = 0
    max_running: int = 0
    delays: dict[str, float] = field(default_factory=dict)  # command id -> how long Epic takes for it

    async def execute(self, command: Command, *, recovering: bool, not_after: float | None = None) -> Outcome:
        self.calls.append((command.command_id, recovering))
        self.started.append(time.time())
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.delays.get(command.command_id, 0.05))
        finally:
            self.running -= 1
        new_id = f"P{len(self.created) + 1}"
        self.created.append(new_id)
        return Outcome(Status.SUCCEEDED, Effect.CREATED, (new_id,), attempts=1)


class CountingOwner(Owner):
    def __init__(self) -> None:
        super().__init__()
        self.handed_over = 0

    def revoked(self, connections: list[str]) -> None:
        self.handed_over += 1
        super().revoked(connections)

    def lost(self, connections: list[str]) -> None:
        self.handed_over += 1
        super().lost(connections)


@dataclass
class Harness:
    bootstrap: str
    registry: SchemaRegistryClient
    commands: str
    results: str
    dlq: str
    ledger_topic: str
    tasks_topic: str
    tmp: Path
    txid: str
    group: str
    ehr: StandInEhr = field(default_factory=StandInEhr)
    max_poll_interval_ms: int | None = None  # of the group membership's consumer; None: Kafka's default
    handed_over: int = 0  # times the membership revoked or lost the connection during a run

    def send(self, records: list[tuple[bytes | None, bytes | None]], partition: int | None = None) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap})
        for key, value in records:
            if partition is None:
                producer.produce(self.commands, key=key, value=value)
            else:
                producer.produce(self.commands, key=key, value=value, partition=partition)
        assert producer.flush(30) == 0

    def command(self, command_id: str, **overrides: Any) -> bytes:
        serializer = AvroSerializer(self.registry, load_schema("patient_command.avsc"))
        record = {
            "command_id": command_id,
            "action": "CREATE",
            "resource_json": json.dumps({"resourceType": "Patient", "name": [{"family": "Lin"}]}),
            **overrides,
        }
        value = serializer(record, SerializationContext(self.commands, MessageField.VALUE))
        assert value is not None
        return value

    async def run_until(
        self, results: int, dead: int = 0, timeout_s: float = 60, crash_after_s: float | None = None
    ) -> None:
        """Run the loop until `results` results and `dead` dead letters are readable, then stop it; or,
        with `crash_after_s`, cancel it after that long, as a crash would end it (nothing more commits)."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        settings = MembershipSettings(self.group, "test")
        if self.max_poll_interval_ms is not None:
            config["max.poll.interval.ms"] = self.max_poll_interval_ms
            config["session.timeout.ms"] = 6000  # no longer than max.poll.interval.ms
            settings = MembershipSettings(self.group, "test", session_timeout_s=6, heartbeat_interval_s=1)
        owner = CountingOwner()
        membership = Membership(config, settings, {"sim": self.tasks_topic}, owner)
        membership.start()
        committer = Committer(config, self.txid, fencing=membership)
        committer.start().result()
        feed = PartitionFeed(config, self.group)
        feed.start()
        table = CompactedTable(config, self.ledger_topic, self.tmp / f"ledger-{uuid.uuid4().hex}.db")
        table.catch_up(60)
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        try:
            assert await asyncio.to_thread(owner.owned.wait, 30), "the harness never owned the connection"
            route = await feed.open("sim", "commands", [self.commands])
            worker = SinkWorker(
                SinkSettings(
                    "sim",
                    {self.commands: "Patient"},
                    self.results,
                    self.dlq,
                    concurrency=4,
                    retry_pause_s=0.1,
                ),
                route=route,
                committer=committer,
                ledger=CommandLedger(table, "sim"),
                registry=self.registry,
                executor=self.ehr,
                topic_exists=lambda topic: topic in (self.results, self.dlq),
            )
            task = asyncio.create_task(worker.run(stop))
            if crash_after_s is not None:
                await asyncio.sleep(crash_after_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return
            deadline = asyncio.get_running_loop().time() + timeout_s
            while len(self.read_results()) < results or len(read_topic(self.bootstrap, self.dlq)) < dead:
                assert asyncio.get_running_loop().time() < deadline, "results did not arrive in time"
                assert not task.done(), task.exception()
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            if task is not None and not task.done():
                await task
            await feed.close("sim")
            feed.stop()
            committer.close()
            membership.stop()
            table.close()
            self.handed_over += owner.handed_over

    def read_results(self) -> list[dict[str, Any]]:
        deserialize = AvroDeserializer(self.registry)
        return [
            deserialize(m.value(), SerializationContext(self.results, MessageField.VALUE))
            for m in read_topic(self.bootstrap, self.results)
        ]


@pytest.fixture
def harness(
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Harness]:
    yield Harness(
        kafka_bootstrap,
        schema_registry,
        new_topic("patient.commands", partitions=2),
        new_topic("results"),
        new_topic("dlq"),
        new_topic("_command-results", compacted=True),
        new_topic("_tasks.sim", compacted=True),
        tmp_path,
        unique_name("sink"),
        unique_name("group"),
    )


@pytest.mark.integration
async def test_each_command_gets_one_result_and_a_resend_is_answered_from_the_ledger(
    harness: Harness,
) -> None:
    harness.send(
        [
            (b"patient-1", harness.command("c1")),
            (b"patient-2", harness.command("c2")),
            (b"patient-1", harness.command("c1")),
        ]
    )  # c1 twice in one batch
    await harness.run_until(results=3)
    results = harness.read_results()
    assert sorted((r["command_id"], r["status"], r["replayed"]) for r in results) == [
        ("c1", "SUCCEEDED", False),
        ("c1", "SUCCEEDED", True),
        ("c2", "SUCCEEDED", False),
    ]
    assert sorted(c for c, _ in harness.ehr.calls) == ["c1", "c2"]

    harness.send([(b"patient-1", harness.command("c1"))])  # re-sent later, after a restart
    await harness.run_until(results=4)
    replay = harness.read_results()[-1]
    assert (replay["command_id"], replay["replayed"], replay["attempts"]) == ("c1", True, 0)
    first = next(r for r in results if r["command_id"] == "c1" and not r["replayed"])
    assert replay["resource_ids"] == first["resource_ids"]
    assert len(harness.ehr.calls) == 2  # Epic was not called again


@pytest.mark.integration
async def test_bad_records_go_to_the_dlq_and_the_partition_keeps_moving(harness: Harness) -> None:
    other_schema = AvroSerializer(
        harness.registry,
        json.dumps({"type": "record", "name": "NotACommand", "fields": [{"name": "x", "type": "string"}]}),
    )
    harness.send(
        [
            (b"k", b"not avro at all"),
            (b"k", b"\x00\x00\x0f\x42\x3f\x02"),  # wire format, but schema id 999999 does not exist
            (b"k", other_schema({"x": "y"}, SerializationContext(harness.commands, MessageField.VALUE))),
            (b"k", None),
            (b"k", harness.command("good")),
        ]
    )
    await harness.run_until(results=1, dead=4)
    dead = read_topic(harness.bootstrap, harness.dlq, expect=4)
    reasons = [dict(m.headers() or [])["dlq.error.reason"] for m in dead]
    assert reasons == [b"undecodable", b"unknown-schema", b"missing-field", b"empty"]
    headers = dict(dead[0].headers() or [])
    assert headers["dlq.source.topic"] == harness.commands.encode()
    assert headers["dlq.source.offset"] == b"0"
    assert dead[0].value() == b"not avro at all"  # the original bytes, untouched
    assert [r["command_id"] for r in harness.read_results()] == ["good"]


@pytest.mark.integration
async def test_invalid_command_is_rejected_with_the_reason(harness: Harness) -> None:
    harness.send(
        [
            (b"k", harness.command("bad-json", resource_json="{not json")),
            (b"k", harness.command("wrong-type", resource_json=json.dumps({"resourceType": "Encounter"}))),
            (b"k", harness.command("find-without-criteria", action="FIND", resource_json=None)),
            (b"k", harness.command("no-reply-topic", reply_topic="does.not.exist")),
        ]
    )
    await harness.run_until(results=4)
    results = {r["command_id"]: r for r in harness.read_results()}
    assert {r["status"] for r in results.values()} == {"REJECTED"}
    assert "not valid JSON" in results["bad-json"]["error"]["message"]
    assert "Encounter" in results["wrong-type"]["error"]["message"]
    assert "needs search criteria" in results["find-without-criteria"]["error"]["message"]
    assert "does.not.exist" in results["no-reply-topic"]["error"]["message"]
    assert harness.ehr.calls == []


@pytest.mark.integration
async def test_an_intent_without_a_result_makes_the_next_attempt_recover(harness: Harness) -> None:
    # What a crash between "Epic created it" and "the result was committed" leaves behind.
    crashed = Committer({"bootstrap.servers": harness.bootstrap}, harness.txid + "-crashed")
    crashed.start().result()
    crashed.commit_sync(
        Unit([Record(harness.ledger_topic, b'["sim","c-crashed"]', b'{"state":"intent","at":0}')])
    )
    crashed.close()
    harness.send([(b"k", harness.command("c-crashed")), (b"k", harness.command("c-new"))])
    await harness.run_until(results=2)
    assert sorted(harness.ehr.calls) == [("c-crashed", True), ("c-new", False)]


@pytest.mark.integration
async def test_same_key_runs_in_order_and_different_keys_concurrently(harness: Harness) -> None:
    records = [(f"patient-{i % 4}".encode(), harness.command(f"c{i:02d}")) for i in range(16)]
    harness.send(records)
    await harness.run_until(results=16)
    order = [c for c, _ in harness.ehr.calls]
    for k in range(4):
        same_key = [f"c{i:02d}" for i in range(16) if i % 4 == k]
        assert [c for c in order if c in same_key] == same_key
    assert 1 < harness.ehr.max_running <= 4


@pytest.mark.integration
async def test_a_create_waits_out_the_previous_owners_promise_before_it_runs(harness: Harness) -> None:
    """The previous owner committed an intent promising no create after `until`, then vanished: this owner
    runs the command (recovering) only once `until` plus the settle time and the clock-skew margin passed."""
    until_ms = int(time.time() * 1000) + 3000
    crashed = Committer({"bootstrap.servers": harness.bootstrap}, harness.txid + "-crashed")
    crashed.start().result()
    intent = json.dumps({"state": "intent", "at": until_ms - 60_000, "until": until_ms}).encode()
    crashed.commit_sync(Unit([Record(harness.ledger_topic, b'["sim","c-in-flight"]', intent)]))
    crashed.close()
    harness.send([(b"k", harness.command("c-in-flight"))])
    await harness.run_until(results=1)
    assert harness.ehr.calls == [("c-in-flight", True)]
    # SinkSettings defaults: settle 1 s, clock-skew margin 2 s
    assert harness.ehr.started[0] >= until_ms / 1000 + 3.0


@pytest.mark.integration
async def test_a_record_read_again_after_its_result_was_committed_gets_no_second_result(
    harness: Harness,
) -> None:
    """What a handover can leave: the result of a record is committed but the record is read again (its
    offset not yet committed for the reader). It is recognised by the ledger's source and skipped; the
    same command id sent again later is still answered, as a replay."""
    harness.send([(b"k", harness.command("c-once"))])
    [sent] = read_topic(harness.bootstrap, harness.commands, expect=1)
    source = [harness.commands, sent.partition(), sent.offset()]
    result = {"command_id": "c-once", "status": "SUCCEEDED"}  # what the ledger kept of its result
    answered = json.dumps({"state": "done", "result": result, "source": source}).encode()
    earlier = Committer({"bootstrap.servers": harness.bootstrap}, harness.txid + "-earlier")
    earlier.start().result()
    earlier.commit_sync(Unit([Record(harness.ledger_topic, b'["sim","c-once"]', answered)]))
    earlier.close()
    harness.send([(b"k", harness.command("c-after"))])
    await harness.run_until(results=1)
    assert [r["command_id"] for r in harness.read_results()] == ["c-after"]
    assert [c for c, _ in harness.ehr.calls] == ["c-after"]


@pytest.mark.integration
async def test_a_slow_command_holds_back_no_other_result(harness: Harness) -> None:
    harness.ehr.delays["c-slow"] = 3.0
    records = [(b"slow", harness.command("c-slow"))]
    records += [(f"k{i}".encode(), harness.command(f"c{i}")) for i in range(3)]
    harness.send(records, partition=0)
    await harness.run_until(results=4)
    order = [r["command_id"] for r in harness.read_results()]
    assert sorted(order[:3]) == ["c0", "c1", "c2"] and order[3] == "c-slow"  # published as each was done


@pytest.mark.integration
async def test_commands_without_a_key_run_concurrently(harness: Harness) -> None:
    harness.ehr.delays = {f"c{i}": 0.5 for i in range(8)}
    harness.send([(None, harness.command(f"c{i}")) for i in range(8)], partition=0)
    await harness.run_until(results=8)
    assert harness.ehr.max_running > 1


@pytest.mark.integration
async def test_answers_without_a_ledger_entry_of_their_own_are_not_repeated_after_a_crash(
    harness: Harness,
) -> None:
    """A dead letter and a replay are not recorded in the ledger under their record, so nothing would tell
    a reader after a crash that they were answered: they commit with their own record's offset, once every
    record before them on the partition is answered. Here the run ends like a crash while a slow command
    before them runs; the next run answers each record once."""
    harness.send([(b"c", harness.command("c-old"))], partition=1)
    await harness.run_until(results=1)  # c-old has its result in the ledger
    harness.ehr.delays["c-slow"] = 30.0
    # a FIND: no intent, so the next run need not wait out a create's promise
    slow = harness.command("c-slow", action="FIND", resource_json=None, criteria={"_id": "P1"})
    harness.send([(b"a", slow), (b"b", b"not avro at all"), (b"c", harness.command("c-old"))], partition=0)
    await harness.run_until(results=0, crash_after_s=4.0)
    harness.ehr.delays.clear()
    await harness.run_until(results=3, dead=1)
    assert sorted(r["command_id"] for r in harness.read_results()) == ["c-old", "c-old", "c-slow"]
    assert len(read_topic(harness.bootstrap, harness.dlq)) == 1


@pytest.mark.integration
async def test_a_command_slower_than_max_poll_interval_costs_no_rebalance(harness: Harness) -> None:
    """The group membership polls on a thread of its own, whatever the commands do: a command that runs
    longer than max.poll.interval.ms neither gets the process evicted nor its result refused."""
    harness.max_poll_interval_ms = 6000
    harness.ehr.delays["c-slow"] = 10.0
    slow = harness.command("c-slow", action="FIND", resource_json=None, criteria={"_id": "P1"})
    harness.send([(b"a", slow), (b"b", harness.command("c-fast"))], partition=0)
    await harness.run_until(results=2, timeout_s=90)
    assert sorted(r["command_id"] for r in harness.read_results()) == ["c-fast", "c-slow"]
    assert harness.handed_over == 1  # once, when the run ended


@pytest.mark.integration
async def test_a_find_commits_no_intent_and_a_create_commits_one_before_it_runs(harness: Harness) -> None:
    find = harness.command("c-find", action="FIND", resource_json=None, criteria={"_id": "P1"})
    harness.send([(b"a", find), (b"b", harness.command("c-create"))], partition=0)
    await harness.run_until(results=2)
    states: dict[str, list[str]] = {}
    for message in read_topic(harness.bootstrap, harness.ledger_topic):
        key = json.loads(message.key() or b"[]")
        states.setdefault(key[-1], []).append(json.loads(message.value() or b"{}")["state"])
    assert states == {"c-find": ["done"], "c-create": ["intent", "done"]}
