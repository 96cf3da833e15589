"""MLLP listener throughput: C concurrent HL7v2 senders, each sending M ADT messages and waiting for each
ACK (as an interface engine does), against the real listener storing every hint in the real broker.

    .venv/bin/python bench/hints_listener.py [--clients C] [--messages M]

Kafka and the registry come from EPIC_BRIDGE_KAFKA_BOOTSTRAP / EPIC_BRIDGE_SCHEMA_REGISTRY_URL (default:
the local stack). Prints the machine, messages/s acknowledged AA (each stored with acks=all before its
ACK), and the ACK latency p50/p95/p99 seen by the senders.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import uuid

import hl7
from hl7.mllp import open_hl7_connection
from sim_page_throughput import cpu_model

from bridge.config.models import ConnectionConfig
from bridge.hints.service import build_listener, open_writer, prepare_hints
from bridge.kafka.context import KafkaContext, KafkaSettings

MESSAGE = (
    "MSH|^~\\&|EPIC|HOSP|BRIDGE|HOSP|20260102030405||ADT^A08^ADT_A01|{control}|P|2.5.1\r"
    "EVN|A08|20260102030405\rPID|1||{mrn}^^^EPIC^MR||Patient^Bench\rPV1|1|I|WARD^101^1\r"
)


def config(prefix: str) -> ConnectionConfig:
    return ConnectionConfig.model_validate(
        {
            "name": "bench",
            "fhir_base_url": "https://epic.example.org/api/FHIR/R4/",
            "auth": {
                "method": "backend_services",
                "client_id": "b",
                "keys": [{"private_key": {"file": "x"}}],
            },
            "resources": {"Patient": {}, "Encounter": {}},
            "topic_prefix": prefix,
            "hints": {
                "enabled": True,
                "mllp": {
                    "enabled": True,
                    "port": 0,
                    "messages_per_second": 1_000_000,
                    "connection_messages_per_second": 1_000_000,
                },
                "patient_identifiers": {"mrn_assigning_authority": "EPIC", "mrn_system": "urn:mrn"},
            },
        }
    )


async def sender(port: int, n: int, messages: int, latencies: list[float]) -> int:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    accepted = 0
    try:
        for m in range(messages):
            text = MESSAGE.format(control=f"B{n}-{m}", mrn=300000 + (n * messages + m) % 5000)
            started = time.perf_counter()
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            ack = await reader.readmessage()
            latencies.append(time.perf_counter() - started)
            accepted += str(ack["MSA.F1"]) == "AA"
    finally:
        writer.close()
    return accepted


async def main(clients: int, messages: int) -> None:
    kafka = KafkaContext(KafkaSettings())
    cfg = config(f"bench-{uuid.uuid4().hex[:8]}")
    await asyncio.to_thread(prepare_hints, kafka, cfg)
    writer = await asyncio.to_thread(open_writer, kafka, cfg)
    listener = build_listener(cfg, writer)
    await listener.start()
    latencies: list[float] = []
    try:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(sender(listener.port, n, messages, latencies) for n in range(clients))
        )
        elapsed = time.perf_counter() - started
    finally:
        await listener.stop()
        writer.close()
    accepted = sum(results)
    q = statistics.quantiles(latencies, n=100)
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    print(f"senders: {clients} x {messages} messages; AA: {accepted} of {clients * messages}")
    print(f"throughput: {accepted / elapsed:.0f} messages/s stored and acknowledged ({elapsed:.1f} s)")
    print(f"ACK latency: p50 {q[49] * 1000:.1f} ms, p95 {q[94] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.clients, args.messages))
