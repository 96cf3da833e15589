"""The client library's typed records against what the bridge really writes: events built by the source
side, results built by the sink, dead-letter headers written by the sink, all through the real schemas."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest

from bridge.client import (
    RESOURCE_TYPES,
    Action,
    Command,
    CommandResult,
    DeadLetter,
    Effect,
    Event,
    NotADeadLetter,
    NotAnEvent,
    Status,
    Topics,
    Trigger,
    command_id_for,
    create,
    ensure,
    find,
)
from bridge.hints.decode import BadHint, BadHintReason, RawHint
from bridge.hints.decode import dead_letter_headers as dead_letter_headers_of_hints
from bridge.kafka import topics as names
from bridge.sink.decode import DeadLetter as SinkDeadLetter
from bridge.sink.decode import DeadLetterReason
from bridge.sink.dlq import dead_letter_headers
from bridge.sink.model import Command as SinkCommand
from bridge.sink.model import ErrorInfo, Outcome, Source, result_record
from bridge.source.events import Trigger as SourceTrigger
from bridge.source.events import build_event
from bridge.source.fingerprint import fingerprint
from epic_sim.seed import patient_bundle

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
NOW = dt.datetime(2026, 11, 25, 8, 57, 20, 424000, tzinfo=dt.UTC)


def schema(name: str) -> Any:
    return fastavro.parse_schema(json.loads((SCHEMAS / f"{name}.avsc").read_text()))


def through_avro(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Write with the schema and read back, as a consumer decodes it."""
    parsed = schema(name)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    buffer.seek(0)
    decoded: dict[str, Any] = fastavro.schemaless_reader(buffer, parsed, None)
    return decoded


def seeded() -> dict[str, dict[str, Any]]:
    """One resource of each type from the simulator's seed data (Epic-shaped)."""
    found: dict[str, dict[str, Any]] = {}
    for resource in patient_bundle(7, 3, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)):
        found.setdefault(resource["resourceType"], resource)
    return found


def event_record(resource: dict[str, Any], trigger: SourceTrigger = SourceTrigger.CREATED) -> dict[str, Any]:
    record = build_event(
        connection="local-sim",
        resource=resource,
        fingerprint=fingerprint(resource),
        trigger=trigger,
        detected_at=NOW,
        cursor="cycle=1",
    )
    return through_avro(f"{resource['resourceType'].lower()}_event", record)


@pytest.mark.parametrize("rtype", RESOURCE_TYPES)
def test_an_event_written_by_the_source_reads_as_a_typed_event(rtype: str) -> None:
    resource = seeded()[rtype]
    record = event_record(resource, SourceTrigger.UPDATED)
    event = Event.from_record(record)
    assert event.trigger is Trigger.UPDATED
    assert (event.resource_type, event.resource_id, event.connection) == (rtype, resource["id"], "local-sim")
    assert event.event_id == str(record["event_id"]) and len(event.event_id) == 36
    assert event.detected_at == NOW
    assert event.projection == record[rtype.lower()] and event.projection
    assert event.resource == resource
    assert event.reference == f"{rtype}/{resource['id']}"
    assert event.extra == {} and event.snapshot is False
    expected_patient = (
        resource["id"]
        if rtype == "Patient"
        else resource["subject" if rtype != "Appointment" else "participant"]
    )
    assert event.patient_id and event.patient_id in json.dumps(expected_patient)


@pytest.mark.parametrize("rtype", RESOURCE_TYPES)
def test_fhir_models_read_epic_shaped_resources(rtype: str) -> None:
    resource = seeded()[rtype]
    model = Event.from_record(event_record(resource)).fhir()
    assert type(model).__name__ == rtype
    assert model.id == resource["id"]
    assert model.model_dump(mode="json", exclude_none=True)["resourceType"] == rtype


def test_without_fhir_resources_the_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['fhir'] = None; sys.modules['fhir.resources'] = None\n"
        "from bridge.client import Event, FhirModelsUnavailable\n"
        "from bridge.client.fhir_models import fhir_model\n"
        "try:\n    fhir_model({'resourceType': 'Patient', 'id': 'x'})\n"
        "except FhirModelsUnavailable as exc:\n    print('refused:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "refused:" in out and "pip install" in out and "fhir.resources" in out


def test_fields_of_a_later_schema_version_land_in_extra_and_a_foreign_record_is_refused() -> None:
    record = {**event_record(seeded()["Encounter"]), "priority": "urgent"}
    assert Event.from_record(record).extra == {"priority": "urgent"}
    broken = dict(record)
    del broken["resource_json"]
    with pytest.raises(NotAnEvent, match="resource_json"):
        Event.from_record(broken)
    with pytest.raises(NotAnEvent, match="unknown resource type"):
        Event.from_record({**record, "resource_type": "Medication"})


@pytest.mark.parametrize(
    "command",
    [
        find("Appointment", {"patient": "p1", "identifier": "urn:x|1"}, correlation_id="c-1"),
        create({"resourceType": "Patient", "name": [{"family": "Rivera"}]}, deadline_ms=5000),
        ensure({"resourceType": "Observation", "status": "final"}, {"patient": "p1", "code": "85354-9"}),
        Command("documentreference", "FIND", criteria={"patient": "p"}, reply_topic="team.replies"),
    ],
    ids=["find", "create", "ensure", "lowercase-type"],
)
def test_commands_encode_with_the_command_schemas(command: Command) -> None:
    record = command.to_record()
    decoded = through_avro(f"{command.resource_type.lower()}_command", record)
    assert decoded["command_id"] == command.command_id
    assert decoded["action"] == command.action.value
    assert decoded["criteria"] == dict(command.criteria)
    assert decoded["reply_topic"] == command.reply_topic
    if command.resource is not None:
        assert json.loads(decoded["resource_json"]) == dict(command.resource)
    assert command.resource_type in RESOURCE_TYPES


def test_derived_command_ids_are_stable_per_cause_and_workflow() -> None:
    event = Event.from_record(event_record(seeded()["Appointment"]))
    first = command_id_for("appointment-find", event)
    assert (
        first
        == command_id_for("appointment-find", event)
        == command_id_for("appointment-find", event.event_id)
    )
    assert first.startswith("appointment-find/") and len(first) < 200
    assert first != command_id_for("appointment-audit", event)
    other = Event.from_record(event_record(seeded()["Patient"]))
    assert first != command_id_for("appointment-find", other)
    assert find("Patient", {"_id": "x"}).command_id != find("Patient", {"_id": "x"}).command_id


def test_a_result_written_by_the_sink_reads_as_a_typed_result() -> None:
    command = SinkCommand("cmd-1", Action.FIND, "Patient", Source("t", 0, 5, b"k"), correlation_id="c")
    found = {"resourceType": "Patient", "id": "p1"}
    outcome = Outcome(Status.SUCCEEDED, Effect.MATCHED, resource_ids=("p1",), resources=(found,))
    record = result_record(command, "local-sim", outcome, NOW, NOW + dt.timedelta(seconds=1))
    result = CommandResult.from_record(through_avro("command_result", record))
    assert (result.command_id, result.status, result.effect, result.action) == (
        "cmd-1", Status.SUCCEEDED, Effect.MATCHED, Action.FIND,
    )  # fmt: skip
    assert result.ok and result.resources == [found] and result.resource("p1") == found
    assert result.resource("other") is None and result.error is None
    failed = Outcome(
        Status.FAILED, Effect.NONE, error=ErrorInfo("Epic said no", http_status=400, epic_code="59159")
    )
    record = result_record(command, "local-sim", failed, NOW, NOW)
    result = CommandResult.from_record(through_avro("command_result", record))
    assert not result.ok and result.error is not None
    assert (result.error.message, result.error.http_status, result.error.epic_code) == (
        "Epic said no",
        400,
        "59159",
    )


def test_dead_letter_headers_are_the_ones_the_sink_writes() -> None:
    from bridge.client import dlq

    error = SinkDeadLetter(DeadLetterReason.UNDECODABLE, "not in Confluent wire format")
    headers = dead_letter_headers(error, Source("epic.c.patient.commands", 2, 41, b"key"), "c")
    assert [name for name, _ in headers] == list(dlq.HEADERS)
    bad_hint = dead_letter_headers_of_hints(
        RawHint("h", 0, 1, None, None), BadHint(BadHintReason.EMPTY, "x"), "c"
    )
    assert [name for name, _ in bad_hint] == list(dlq.HEADERS)
    assert {r.value for r in DeadLetterReason} | {r.value for r in BadHintReason} == set(dlq.REASONS)
    letter = DeadLetter.from_parts(b"key", b"\x01garbage", [*headers, ("trace-id", b"abc")])
    assert (letter.reason, letter.source_topic, letter.source_partition, letter.source_offset) == (
        "undecodable", "epic.c.patient.commands", 2, 41,
    )  # fmt: skip
    assert letter.message == "not in Confluent wire format" and letter.connection == "c"
    assert letter.at is not None and letter.at.tzinfo is not None
    assert "trace-id" not in letter.headers and letter.value == b"\x01garbage"
    with pytest.raises(NotADeadLetter):
        DeadLetter.from_parts(b"k", b"v", [("trace-id", b"abc")])


def test_a_dead_letter_replays_to_the_topic_it_came_from() -> None:
    sent: list[tuple[str, Any, Any]] = []

    class Recorder:
        def produce(self, topic: str, value: Any = None, key: Any = None) -> None:
            sent.append((topic, key, value))

    error = SinkDeadLetter(DeadLetterReason.EMPTY, "the record has no value")
    letter = DeadLetter.from_parts(b"k", None, dead_letter_headers(error, Source("src", 0, 1, b"k"), "c"))
    letter.replay(Recorder(), value=b"fixed")
    assert sent == [("src", b"k", b"fixed")]


def test_topic_names_are_the_bridges_own() -> None:
    topics = Topics("local-sim", "epic")
    for rtype in RESOURCE_TYPES:
        assert topics.events(rtype) == names.events_topic("epic", "local-sim", rtype.lower())
        assert topics.commands(rtype.upper()) == names.commands_topic("epic", "local-sim", rtype.lower())
    assert topics.results == names.results_topic("epic", "local-sim")
    assert topics.dlq == names.dlq_topic("epic", "local-sim")
    pattern = re.compile(topics.events_pattern())
    assert all(pattern.match(t) for t in topics.all_events())
    others = ["epic.local-sim.results", "epic.local-simX.patient.events", "xepic.local-sim.patient.events"]
    for other in [*others, "epic.other.patient.events", "epic.local-sim.patient.commands"]:
        assert not pattern.match(other), other
    with pytest.raises(ValueError, match="unknown resource type"):
        topics.events("Medication")


def test_the_client_imports_none_of_the_bridge_runtime() -> None:
    """Downstream apps (e.g. examples/, in their own environment) import only confluent-kafka's parts."""
    code = (
        "import sys, bridge.client\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('bridge') or m.split('.')[0] in "
        "('pydantic', 'pydantic_settings', 'prometheus_client', 'rich', 'fhir'))))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    bridge_modules = {m for m in loaded if m.startswith("bridge.") and not m.startswith("bridge.client")}
    glue = {
        "bridge.kafka",
        "bridge.kafka.topics",
        "bridge.kafka.avro",
        "bridge.kafka.registry",
        "bridge.kafka.errors",
        "bridge.errors",  # the root exception class, a leaf module
    }
    assert bridge_modules <= glue | {"bridge.sink", "bridge.sink.model"}, bridge_modules
    assert not {m for m in loaded if not m.startswith("bridge")}, loaded
