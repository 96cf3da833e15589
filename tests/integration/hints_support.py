"""Helpers for the hints integration tests: a connection config with hints on, HL7v2 messages, a real MLLP
client (the `hl7` package's asyncio streams) and a reader of the hints topic."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import hl7
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hl7.mllp import HL7StreamReader, HL7StreamWriter, open_hl7_connection
from kafka_support import read_topic

from bridge.config.models import ConnectionConfig

MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"
AUTHORITY = "EPIC"
LIN = ("203711", "eq081-VQEgP8drUUqCWzHfw3")  # (MRN, FHIR id) of Epic's public sandbox patients
LOPEZ = ("203713", "erXuFYUfucBZaryVksYEcMg3")


def hints_config(
    prefix: str, *, base_url: str = "https://epic.example.org/api/FHIR/R4/", **hints: Any
) -> ConnectionConfig:
    mllp = {"enabled": True, "port": 0, **hints.pop("mllp", {})}
    doc = {
        "name": "sim",
        "fhir_base_url": base_url,
        "auth": {
            "method": "backend_services",
            "client_id": "bridge",
            "keys": [{"private_key": {"file": "unused.pem"}}],
        },
        "resources": {
            "Patient": {},
            "Encounter": {},
            "Observation": {"categories": ["vital-signs"]},
            "DocumentReference": {},
        },
        "topic_prefix": prefix,
        "hints": {
            "enabled": True,
            "mllp": mllp,
            "patient_identifiers": {"mrn_assigning_authority": AUTHORITY, "mrn_system": MRN_SYSTEM},
            **hints,
        },
    }
    return ConnectionConfig.model_validate(doc)


def hl7_message(
    mrn: str = LIN[0],
    type_: str = "ADT^A08^ADT_A01",
    control: str | None = None,
    authority: str = AUTHORITY,
    padding: int = 0,
) -> str:
    control = control or uuid.uuid4().hex[:20]
    segments = [
        f"MSH|^~\\&|EPIC|HOSP|BRIDGE|HOSP|20260102030405||{type_}|{control}|P|2.5.1",
        "EVN|A08|20260102030405",
        f"PID|1||{mrn}^^^{authority}^MR||Patient^Test",
    ]
    if padding:
        segments.append("NTE|1||" + "x" * padding)
    return "\r".join(segments) + "\r"


@dataclass
class MLLPClient:
    reader: HL7StreamReader
    writer: HL7StreamWriter

    async def send(self, text: str) -> hl7.Message:
        self.writer.writemessage(hl7.parse(text))
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readmessage(), 30)

    async def send_raw(self, block: bytes) -> hl7.Message:
        self.writer.writeblock(block)
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readmessage(), 30)

    async def closed_by_peer(self, timeout_s: float = 10.0) -> bool:
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout_s)
        except ConnectionError:
            return True
        return rest == b"" and self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def mllp_client(port: int) -> AsyncIterator[MLLPClient]:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    client = MLLPClient(reader, writer)
    try:
        yield client
    finally:
        client.close()


def ack_code(ack: hl7.Message) -> str:
    return str(ack["MSA.F1"])


def read_hints(
    bootstrap: str, registry: SchemaRegistryClient, topic: str, expect: int = 0
) -> list[dict[str, Any]]:
    """Every record of the hints topic, decoded."""
    deserialize = AvroDeserializer(registry)
    context = SerializationContext(topic, MessageField.VALUE)
    return [deserialize(m.value(), context) for m in read_topic(bootstrap, topic, expect=expect)]
