"""The four example apps (examples/, Quix Streams in their own environment) end to end against the real
Kafka, registry, simulator and `epic-bridge run`: every matching event in, exactly one command out per
event (with the id derived from the event), one result per command, printed by the app — and nothing
sent twice although the app is SIGKILLed in the middle of its first transaction and started again.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apps_support import App, BridgeRun, Records, wait_until
from confluent_kafka import Producer

from bridge.client import Effect, Event, Status, Trigger, command_id_for

pytestmark = pytest.mark.integration

MIRROR_SYSTEM = "urn:epic-kafka-bridge:examples:mirror-of"


@dataclass(frozen=True)
class Case:
    folder: str  # examples/<folder>
    name: str  # the workflow's name, the prefix of its command ids
    resource_type: str
    trigger: Trigger
    action: str
    effect: Effect


CASES = [
    Case("appointment_find", "appointment-find", "Appointment", Trigger.CREATED, "FIND", Effect.MATCHED),
    Case("patient_create", "patient-create", "Patient", Trigger.CREATED, "ENSURE", Effect.CREATED),
    Case("encounter_find", "encounter-find", "Encounter", Trigger.UPDATED, "FIND", Effect.MATCHED),
    Case("documentreference_find", "documentreference-find", "DocumentReference", Trigger.CREATED, "FIND",
         Effect.MATCHED),
]  # fmt: skip


def mirrored(event: Event) -> bool:
    return any(i.get("system") == MIRROR_SYSTEM for i in event.projection.get("identifiers") or [])


def update_encounters(run: BridgeRun, count: int) -> None:
    """Change some encounters in the simulator, so the bridge publishes UPDATED events."""
    admin = run.sim.admin
    ids = admin.get("/admin/resources/Encounter", params={"limit": count}).json()["ids"][:count]
    for rid in ids:
        resource = admin.get(f"/admin/resources/Encounter/{rid}").json()
        resource["status"] = "in-progress" if resource.get("status") != "in-progress" else "finished"
        resource.setdefault("period", {})["end"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        admin.put(f"/admin/resources/Encounter/{rid}", json=resource).raise_for_status()


@pytest.mark.timeout(420)
@pytest.mark.parametrize("case", CASES, ids=[c.folder for c in CASES])
def test_workflow_end_to_end_with_a_restart_mid_transaction(
    case: Case, bridge_run: BridgeRun, records: Records, apps_python: Path, tmp_path: Path,
    kafka_bootstrap: str, registry_url: str,
) -> None:  # fmt: skip
    topics = bridge_run.topics
    events_topic, commands_topic = topics.events(case.resource_type), topics.commands(case.resource_type)
    if case.trigger is Trigger.UPDATED:
        update_encounters(bridge_run, 3)

    def inputs() -> list[Event]:
        return [
            e for e in records.events(events_topic)
            if e.trigger is case.trigger and not (case.resource_type == "Patient" and mirrored(e))
        ]  # fmt: skip

    wait_until(lambda: len(inputs()) >= 3, f"{case.trigger} events", 120, bridge_run.log_tail)
    expected = {command_id_for(case.name, e): e for e in inputs()}
    group = f"t-{case.name}-{uuid.uuid4().hex[:6]}"
    app = App(apps_python, case.folder, output=tmp_path / "app.out", args=[
        "--bootstrap", kafka_bootstrap, "--registry", registry_url, "--connection", topics.connection,
        "--prefix", topics.prefix, "--group", group, "--instance", "test",
    ])  # fmt: skip

    def mine(committed: bool) -> list[dict[str, Any]]:
        return [
            c for c in records.commands(commands_topic, committed) if c["command_id"].startswith(case.name)
        ]

    # A record on the event topic that is no bridge event: the app skips it with a warning.
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(events_topic, key=b"junk", value=b"\x07 not an event")
    assert producer.flush(10) == 0
    try:
        # First run: a long transaction, killed as soon as its first commands are in the log.
        app.start("--commit-interval", "60")
        wait_until(lambda: bool(mine(committed=False)), "the app's first commands", 120, app.text)
        assert mine(committed=True) == [], "the first transaction committed before the kill"
        app.kill()
        killed_uncommitted = len(mine(committed=False))

        # Second run: the same instance fences the killed one (its transaction is aborted) and
        # processes the events again from the last committed offsets.
        app.start("--commit-interval", "1")

        def answered() -> set[str]:
            return {r.command_id for r in records.results(topics.results)} & set(expected)

        wait_until(lambda: answered() == set(expected), "a result for every command", 180,
                   lambda: f"{app.text()[-3000:]}\n{bridge_run.log_tail()}")  # fmt: skip
        wait_until(lambda: all(f"RESULT {e.reference}" in app.text() for e in expected.values()),
                   "the app printing every result", 60, app.text)  # fmt: skip
        assert app.stop() == 0, app.text()[-2000:]
        assert "skipped a record that does not decode" in app.text()

        # Third run: it continues where it stopped, so it sends nothing again.
        before = len(app.text())
        app.start("--commit-interval", "1")
        wait_until(lambda: "reading" in app.text()[before:], "the app's start", 60, app.text)
        time.sleep(8)
        assert app.stop() == 0
        assert " ->  " not in app.text()[before:], app.text()[before:]
    finally:
        app.stop()

    committed = mine(committed=True)
    counts = Counter(c["command_id"] for c in committed)
    assert set(counts) == set(expected), "one command per matching event, ids derived from the events"
    assert max(counts.values()) == 1, f"commands sent twice: {[i for i, n in counts.items() if n > 1]}"
    assert len(mine(committed=False)) >= killed_uncommitted + len(expected), (
        "the kill hit no open transaction"
    )
    for command in committed:
        event = expected[command["command_id"]]
        assert command["action"] == case.action and command["correlation_id"] == event.reference

    results = [r for r in records.results(topics.results) if r.command_id in expected]
    assert Counter(r.command_id for r in results) == Counter(set(expected)), "exactly one result per command"
    for result in results:
        event = expected[result.command_id]
        assert (result.status, result.effect, result.replayed) == (Status.SUCCEEDED, case.effect, False), (
            result
        )
        if case.effect is Effect.MATCHED:
            assert event.resource_id in result.resource_ids
        else:  # a mirror of the new patient, pointing back at it
            mirror = result.resources[0]
            assert {"system": MIRROR_SYSTEM, "value": event.resource_id} in mirror["identifier"]
            assert mirror["name"][0]["family"] == event.resource["name"][0]["family"]


def test_an_app_refuses_to_start_before_the_bridge_created_its_topics(
    apps_python: Path, kafka_bootstrap: str, registry_url: str, tmp_path: Path
) -> None:
    prefix = f"none{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        [str(apps_python), "-m", "examples", "appointment_find", "--bootstrap", kafka_bootstrap,
         "--registry", registry_url, "--prefix", prefix],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.returncode == 1
    assert f"missing topics ['{prefix}.local-sim.appointment.events'" in started.stderr
    assert "start the bridge first" in started.stderr
