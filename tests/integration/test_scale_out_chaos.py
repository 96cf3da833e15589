"""Three `epic-bridge run` processes share 20 connections x 5 resources while the hospital keeps changing
and commands (creates included) keep coming; for minutes, one process is SIGKILLed, another SIGSTOPped past
its session and woken again, one stopped cleanly, and each is restarted. At the end an independent
read_committed consumer finds every change exactly once and every resource's latest content published,
every command record has exactly one result, and no create happened twice in the simulator."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from process_support import BridgeProcess, delete_topics_of, wait_for
from sink_support import bp_fields
from source_support import (
    OBS_CATEGORIES,
    RESOURCES,
    connection_config,
    read_all_events,
    sim_read,
    sim_resources,
    topic_of,
)

from bridge.config.models import ConnectionConfig
from bridge.kafka.avro import load_schema
from bridge.kafka.topics import commands_topic, results_topic
from bridge.sink.identity import MARKER_SYSTEM, marker_value
from bridge.source.fingerprint import fingerprint
from bridge.source.projection import patient_id_of

pytestmark = pytest.mark.integration

CONNECTIONS = 20
PATIENTS_EACH = 2
CHAOS_S = 105
PROCESSES = 3
SESSION_S = 6


class Commands:
    """Sends a steady stream of commands to every connection and collects their results."""

    def __init__(
        self, bootstrap: str, registry: SchemaRegistryClient, configs: list[ConnectionConfig]
    ) -> None:
        self.configs = configs
        self.sent: collections.Counter[str] = collections.Counter()
        self.creates: dict[str, tuple[str, str]] = {}  # command id -> (connection, resource type)
        self.results: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self._serializers = {
            rtype: AvroSerializer(registry, load_schema(f"{rtype.lower()}_command.avsc"))
            for rtype in ("Patient", "Observation")
        }
        self._deserialize = AvroDeserializer(registry)
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"chaos-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self._consumer.subscribe([results_topic(c.topic_prefix, c.name) for c in configs])
        self._stop = threading.Event()
        self._rng = random.Random(20261130)
        self._thread = threading.Thread(target=self._send_steadily, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert self._producer.flush(30) == 0

    def _send_steadily(self) -> None:
        n = 0
        earlier: list[tuple[ConnectionConfig, str, dict[str, Any]]] = []
        while not self._stop.is_set():
            cfg = self._rng.choice(self.configs)
            patient = self._rng.choice(cfg.roster.patient_ids)  # type: ignore[union-attr]
            kind = n % 5
            if kind == 4 and earlier:  # the same record sent again (a producer's retry, a replay)
                self._send(*self._rng.choice(earlier))
            else:
                rtype, record = self._command(cfg, patient, n, kind)
                earlier.append((cfg, rtype, record))
                self._send(cfg, rtype, record)
            n += 1
            self._producer.poll(0)
            self._stop.wait(0.25)

    @staticmethod
    def _command(cfg: ConnectionConfig, patient: str, n: int, kind: int) -> tuple[str, dict[str, Any]]:
        command_id = uuid.uuid4().hex
        if kind in (0, 1):
            fields = {"family_name": f"Chaos{n}", "given_names": [cfg.name]}
            return "Patient", {"command_id": command_id, "action": "CREATE", "fields": fields}
        if kind == 2:
            at = dt.datetime(2033, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=n)
            return "Observation", {
                "command_id": command_id,
                "action": "CREATE",
                "fields": bp_fields(patient, at),
            }
        return "Patient", {"command_id": command_id, "action": "FIND", "criteria": {"_id": patient}}

    def _send(self, cfg: ConnectionConfig, rtype: str, record: dict[str, Any]) -> None:
        topic = commands_topic(cfg.topic_prefix, cfg.name, rtype.lower())
        value = self._serializers[rtype](record, SerializationContext(topic, MessageField.VALUE))
        self._producer.produce(topic, value=value, key=record["command_id"].encode())
        self.sent[record["command_id"]] += 1
        if record["action"] == "CREATE":
            self.creates[record["command_id"]] = (cfg.name, rtype)

    def collect(self, seconds: float = 0.5) -> None:
        for message in self._consumer.consume(1000, seconds):
            if message.error() is None:
                topic = str(message.topic())
                result = self._deserialize(message.value(), SerializationContext(topic, MessageField.VALUE))
                self.results[result["command_id"]].append(result)

    def answered(self) -> bool:
        self.collect()
        return all(len(self.results.get(c, [])) >= n for c, n in self.sent.items())

    def close(self) -> None:
        self._consumer.close()


def expected_state(sim: Any, configs: list[ConnectionConfig]) -> dict[tuple[str, str, str], str]:
    """(connection, type, id) -> the fingerprint of what the simulator holds now, for each roster."""
    owner = {p: cfg.name for cfg in configs for p in cfg.roster.patient_ids}  # type: ignore[union-attr]
    found: dict[tuple[str, str, str], str] = {}
    for rtype in RESOURCES:
        for rid in sim_resources(sim, rtype):
            resource = sim_read(sim, rtype, rid)
            connection = owner.get(str(patient_id_of(resource)))
            if connection is not None:
                found[(connection, rtype, rid)] = fingerprint(resource)
    return found


def published(
    bootstrap: str, registry: SchemaRegistryClient, configs: list[ConnectionConfig]
) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    topics = {topic_of(cfg, r): cfg.name for cfg in configs for r in RESOURCES}
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for topic, events in read_all_events(bootstrap, registry, list(topics)).items():
        for event in events:
            grouped[(topics[topic], event["resource_type"], event["resource_id"])].append(event)
    return grouped


def with_marker(sim: Any, rtype: str, marker: str) -> int:
    return int(
        sim.sim.store.scalar(
            "SELECT count(*) FROM idents WHERE type=? AND system=? AND value=?",
            (rtype, MARKER_SYSTEM, marker),
        )
    )


@pytest.mark.timeout(600)
def test_three_processes_under_kills_pauses_and_restarts_publish_once_and_answer_once(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    sim = epic_sim_factory(profile="epic", patients=CONNECTIONS * PATIENTS_EACH, seed=31)
    patients = sorted(sim_resources(sim, "Patient"))
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    prefix = unique_name("chaos")
    resources: dict[str, dict[str, Any]] = {r: {} for r in RESOURCES}
    resources["Patient"] = {"actions": ["create", "find"]}
    resources["Observation"] = {"categories": OBS_CATEGORIES, "actions": ["create"]}
    configs = [
        connection_config(
            sim, config_dir, name=f"c{i:02d}", prefix=prefix, initial_sync="snapshot", resources=resources,
            roster={"source": "static", "patient_ids": patients[i * PATIENTS_EACH : (i + 1) * PATIENTS_EACH]},
            poll_interval_s=3, rate=50,
            sink={"command_deadline_s": 10, "ambiguous_settle_s": 0.2, "clock_skew_margin_s": 0.5},
        )
        for i in range(CONNECTIONS)
    ]  # fmt: skip
    bridges = [
        BridgeProcess(
            config_dir,
            {
                **bridge_env,
                "EPIC_BRIDGE_INSTANCE_ID": f"chaos-{n}",
                "EPIC_BRIDGE_STATE_DIR": str(tmp_path / f"state-{n}"),
                "EPIC_BRIDGE_SESSION_TIMEOUT_S": str(SESSION_S),
            },
            tmp_path / f"bridge-{n}.log",
            only=None,
        )
        for n in range(PROCESSES)
    ]
    processes += bridges
    try:
        run_chaos(sim, configs, bridges, kafka_bootstrap, schema_registry)
    finally:
        for bridge in bridges:
            bridge.stop_quietly()
        delete_topics_of(kafka_bootstrap, prefix)


def run_chaos(
    sim: Any,
    configs: list[ConnectionConfig],
    bridges: list[BridgeProcess],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
) -> None:
    for bridge in bridges:
        bridge.start()
    for bridge in bridges:
        wait_for(lambda b=bridge: "joining the group" in b.log.read_text(), 180, "every process to join")
    commands = Commands(kafka_bootstrap, schema_registry, configs)
    sim.admin.put("/admin/activity", json={"rate_per_s": 2}).raise_for_status()
    commands.start()

    rng = random.Random(31)
    done: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    step = 0
    while time.monotonic() - started < CHAOS_S:
        victim = rng.choice(bridges)
        assert victim.proc is not None
        action = ("kill", "pause", "term")[step % 3]
        if action == "kill":
            victim.kill()
            commands.collect(rng.uniform(2, 6))
            victim.start()
        elif action == "pause":
            os.kill(victim.proc.pid, signal.SIGSTOP)
            commands.collect(SESSION_S + rng.uniform(2, 6))  # its connections move to the others
            os.kill(victim.proc.pid, signal.SIGCONT)
        else:
            assert victim.terminate() == 0, victim.log.read_text()[-3000:]
            commands.collect(rng.uniform(1, 3))
            victim.start()
        done[action] += 1
        step += 1
        commands.collect(rng.uniform(8, 14))
    assert (
        done == {"kill": done["kill"], "pause": done["pause"], "term": done["term"]}
        and min(done.values()) >= 2
    )

    # The hospital and the senders stop; the bridges must catch up with all of it.
    sim.admin.put("/admin/activity", json={"rate_per_s": 0}).raise_for_status()
    commands.stop()
    expected = expected_state(sim, configs)

    def caught_up() -> bool:
        if not commands.answered():
            return False
        events = published(kafka_bootstrap, schema_registry, configs)
        return all(events.get(key) and events[key][-1]["fingerprint"] == fp for key, fp in expected.items())

    wait_for(caught_up, 180, "every command answered and every resource's latest content published")
    for bridge in bridges:
        assert bridge.terminate() == 0, bridge.log.read_text()[-3000:]
    commands.collect(2)
    commands.close()

    # 1. every change exactly once, and the latest content of everything
    events = published(kafka_bootstrap, schema_registry, configs)
    assert set(events) == set(expected), set(events) ^ set(expected)
    for key, found in events.items():
        ids = [e["event_id"] for e in found]
        assert len(ids) == len(set(ids)), f"{key}: a change was published twice"
        prints = [e["fingerprint"] for e in found]
        assert all(a != b for a, b in itertools.pairwise(prints)), f"{key}: the same content twice"
        assert [e["trigger"] for e in found].count("CREATED") == 1, key
    # 2. every command record has exactly one result
    got = collections.Counter({c: len(rs) for c, rs in commands.results.items()})
    wrong = {c: (n, got[c]) for c, n in (commands.sent | got).items() if got[c] != commands.sent[c]}
    assert not wrong, wrong
    originals = {c: [r for r in rs if not r["replayed"]] for c, rs in commands.results.items()}
    assert all(len(rs) == 1 for rs in originals.values()), "a command was answered twice"
    # 3. no create happened twice
    for command_id, (connection, rtype) in commands.creates.items():
        [result] = originals[command_id]
        made = with_marker(sim, rtype, marker_value(connection, command_id))
        assert made <= 1, (command_id, made)
        if result["status"] == "SUCCEEDED":
            assert made == 1 and result["effect"] == "CREATED", (command_id, result)
    statuses = collections.Counter(rs[0]["status"] for rs in originals.values())
    print(f"\nchaos: {dict(done)}, {sum(commands.sent.values())} command records, results {dict(statuses)}, "
          f"{sum(len(v) for v in events.values())} events for {len(expected)} resources")  # fmt: skip
