"""The client library for downstream teams: typed events, commands and their results, dead letters.

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from bridge.client import CommandClient, EventReader, Topics, find

    kafka = {"bootstrap.servers": "127.0.0.1:9092"}
    registry = SchemaRegistryClient({"url": "http://127.0.0.1:8081/apis/ccompat/v7"})
    topics = Topics("local-sim")                     # prefix "epic" unless given
    with EventReader(kafka, registry, topics, "my-team", resource_types=["Appointment"]) as events:
        event = next(iter(events))                   # Event: envelope, projection, resource, fhir()
    with CommandClient(kafka, registry, topics) as client:
        result = client.request(find("Patient", {"_id": event.patient_id}), timeout_s=30)

It needs only confluent-kafka (with its Avro and schema-registry extras) at import time, and
fhir.resources for `Event.fhir()`; see README.md beside this file.
"""

from bridge.client.codecs import CommandEncoder, EventDecoder, ResultDecoder
from bridge.client.commands import Action, Command, command_id_for, create, ensure, find
from bridge.client.dlq import DeadLetter
from bridge.client.errors import (
    ClientError,
    FhirModelsUnavailable,
    NotADeadLetter,
    NotAnEvent,
    RegistryUnavailable,
    ResultTimeout,
    UndecodableRecord,
)
from bridge.client.events import Event, Trigger
from bridge.client.reader import EventReader
from bridge.client.request_reply import CommandClient
from bridge.client.results import CommandResult, Effect, ResultError, Status
from bridge.client.topics import RESOURCE_TYPES, Topics, resource_type_of

__all__ = [
    "RESOURCE_TYPES",
    "Action",
    "ClientError",
    "Command",
    "CommandClient",
    "CommandEncoder",
    "CommandResult",
    "DeadLetter",
    "Effect",
    "Event",
    "EventDecoder",
    "EventReader",
    "FhirModelsUnavailable",
    "NotADeadLetter",
    "NotAnEvent",
    "RegistryUnavailable",
    "ResultDecoder",
    "ResultError",
    "ResultTimeout",
    "Status",
    "Topics",
    "Trigger",
    "UndecodableRecord",
    "command_id_for",
    "create",
    "ensure",
    "find",
    "resource_type_of",
]
