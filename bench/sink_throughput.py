"""Sink throughput: N commands of a mix of actions through the real `epic-bridge run --only sink` process
against the simulator (its own process), on the real broker and registry.

    .venv/bin/python bench/sink_throughput.py [N] [--concurrency C] [--patients P]

Kafka and the registry come from EPIC_BRIDGE_KAFKA_BOOTSTRAP / EPIC_BRIDGE_SCHEMA_REGISTRY_URL (default:
the local stack). The mix: 40% Patient CREATE, 15% Observation CREATE (blood-pressure panel), 25% Patient
FIND by _id, 10% Patient ENSURE (a new identifier: search, then create), 10% Observation FIND (patient +
category). Prints the machine, commands/s, p50/p99 command-to-result latency (produce -> result readable
by a read_committed consumer), the bridge process's CPU per command, and the simulator-only floor: the
same HTTP calls (create + read-back, searches) made directly with one httpx client at the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from bridge.auth.keys import KeySet, generate_key_pair, load_private_key
from bridge.config import load_connection_file
from bridge.connection import Connection
from bridge.kafka.avro import load_schema
from bridge.sink.service import SinkTopics

BIN = Path(sys.executable).parent
LOINC = "http://loinc.org"
SSN = "urn:oid:2.16.840.1.113883.4.1"
TICKS = os.sysconf("SC_CLK_TCK")
SEQUENTIAL = 30


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the mix ---------------------------------------------------------------------------------------------
def plan(n: int, patients: list[str], rng: random.Random) -> list[tuple[str, bytes, dict[str, Any]]]:
    out: list[tuple[str, bytes, dict[str, Any]]] = []
    for i in range(n):
        patient = rng.choice(patients)
        roll = rng.random()
        cid = f"bench-{uuid.uuid4().hex}"
        if roll < 0.40:
            item = (
                "Patient",
                {"action": "CREATE", "fields": {"family_name": f"Bench{i}", "given_names": ["B"]}},
            )
        elif roll < 0.55:
            at = dt.datetime(2033, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)
            fields = {
                "patient_id": patient,
                "code": {"system": LOINC, "code": "85354-9"},
                "components": [
                    {
                        "code": {"system": LOINC, "code": "8480-6"},
                        "value_quantity": 120.0,
                        "value_unit": "mm[Hg]",
                    },
                    {
                        "code": {"system": LOINC, "code": "8462-4"},
                        "value_quantity": 80.0,
                        "value_unit": "mm[Hg]",
                    },
                ],
                "effective_at": at,
            }
            item = ("Observation", {"action": "CREATE", "fields": fields})
        elif roll < 0.80:
            item = ("Patient", {"action": "FIND", "criteria": {"_id": patient}})
        elif roll < 0.90:
            number = f"800-{i:06d}"
            item = (
                "Patient",
                {
                    "action": "ENSURE",
                    "criteria": {"identifier": f"{SSN}|{number}"},
                    "fields": {
                        "family_name": f"Ensure{i}",
                        "identifiers": [{"system": SSN, "value": number}],
                    },
                },
            )
        else:
            item = (
                "Observation",
                {"action": "FIND", "criteria": {"patient": patient, "category": "vital-signs"}},
            )
        rtype, record = item
        record["command_id"] = cid
        out.append((rtype, f"k{i}".encode(), record))
    return out


# -- set-up ------------------------------------------------------------------------------------------------
def start_simulator(port: int, patients: int, log: Path) -> subprocess.Popen[bytes]:
    args = [str(BIN / "epic-sim"), "serve", "--port", str(port), "--patients", str(patients), "--seed", "1"]
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/admin/stats", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the simulator did not start; see {log}")
        time.sleep(0.3)


def write_config(folder: Path, sim_url: str, name: str, prefix: str, concurrency: int) -> Path:
    kid, pem = generate_key_pair("RS384")
    (folder / f"{name}.pem").write_bytes(pem)
    (folder / f"{name}.pem").chmod(0o600)
    jwks = KeySet([load_private_key(pem, kid=kid, alg="RS384")]).jwks()
    httpx.post(
        f"{sim_url}/admin/clients",
        json={
            "client_id": name,
            "auth_methods": ["private_key_jwt"],
            "jwks": jwks,
            "scopes": ["system/*.crs"],
        },
    ).raise_for_status()
    actions = {"actions": ["create", "find"], "triggers": []}
    raw = {
        "name": name,
        "fhir_base_url": f"{sim_url}/interconnect-fhir-oauth/api/FHIR/R4/",
        "auth": {
            "method": "backend_services",
            "client_id": name,
            "keys": [{"kid": kid, "private_key": {"file": f"{name}.pem"}}],
        },
        "resources": {"Patient": actions, "Observation": actions},
        "topic_prefix": prefix,
        "rate_limit": {"requests_per_second": 1000, "burst": 200},
        "sink": {"concurrency": concurrency},
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


# -- the bridge run ---------------------------------------------------------------------------------------
def run_bridge(
    args: argparse.Namespace, work: Path, sim_url: str, bootstrap: str, registry_url: str
) -> dict[str, Any]:
    name, prefix = "bench", f"bench{uuid.uuid4().hex[:8]}"
    config_path = write_config(work, sim_url, name, prefix, args.concurrency)
    config = load_connection_file(config_path)
    topics = SinkTopics.of(config)
    env = {
        **os.environ,
        "EPIC_BRIDGE_KAFKA_BOOTSTRAP": bootstrap,
        "EPIC_BRIDGE_SCHEMA_REGISTRY_URL": registry_url,
        "EPIC_BRIDGE_INSTANCE_ID": f"bench-{uuid.uuid4().hex[:8]}",
        "EPIC_BRIDGE_HTTP_PORT": "0",  # metrics/health on a free port
    }
    bridge = subprocess.Popen(
        [str(BIN / "epic-bridge"), "--config-dir", str(work), "--state-dir", str(work / "state"),
         "--log-level", "WARNING", "run", "--only", "sink"],
        env=env, stdout=(work / "bridge.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    registry = SchemaRegistryClient({"url": registry_url})
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        while not {*topics.commands, topics.results} <= set(admin.list_topics(timeout=10).topics):
            if bridge.poll() is not None:
                raise SystemExit(f"the bridge exited; see {work / 'bridge.log'}")
            time.sleep(0.2)
        serializers = {
            r: AvroSerializer(registry, load_schema(f"{r.lower()}_command.avsc"))
            for r in ("Patient", "Observation")
        }
        topic_of = {r: t for t, r in topics.commands.items()}
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topics.results])
        deserialize = AvroDeserializer(registry)
        received: dict[str, float] = {}
        statuses: dict[str, int] = {}

        def send(rtype: str, key: bytes, record: dict[str, Any]) -> None:
            value = serializers[rtype](record, SerializationContext(topic_of[rtype], MessageField.VALUE))
            producer.produce(topic_of[rtype], value=value, key=key)
            producer.poll(0)

        def drain(until: set[str], timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while not until <= received.keys():
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(until & received.keys())} of {len(until)} results arrived")
                for message in consumer.consume(500, 0.2):
                    if message.error() is not None:
                        continue
                    now = time.monotonic()
                    result = deserialize(
                        message.value(), SerializationContext(topics.results, MessageField.VALUE)
                    )
                    received.setdefault(result["command_id"], now)
                    statuses[result["status"]] = statuses.get(result["status"], 0) + 1

        patients = [
            str(i)
            for i in httpx.get(f"{sim_url}/admin/resources/Patient", params={"limit": 50}).json()["ids"]
        ]
        warm = {"command_id": f"warm-{uuid.uuid4().hex}", "action": "FIND", "criteria": {"_id": patients[0]}}
        send("Patient", b"warm", warm)
        producer.flush(30)
        drain({warm["command_id"]}, 120)  # group joined, token fetched, capabilities known
        statuses.clear()
        commands = plan(args.n, patients, random.Random(7))
        cpu_before = process_cpu_s(bridge.pid)
        sent_at: dict[str, float] = {}
        started = time.monotonic()
        for rtype, key, record in commands:
            sent_at[record["command_id"]] = time.monotonic()
            send(rtype, key, record)
        producer.flush(30)
        drain(set(sent_at), 600)
        elapsed = max(received[c] for c in sent_at) - started
        cpu = process_cpu_s(bridge.pid) - cpu_before
        latencies = [(received[c] - sent_at[c]) * 1000 for c in sent_at]
        alone: list[float] = []  # one command at a time: no queueing behind others
        for rtype, key, record in plan(SEQUENTIAL, patients, random.Random(9)):
            began = time.monotonic()
            send(rtype, key, record)
            producer.flush(30)
            drain({record["command_id"]}, 60)
            alone.append((received[record["command_id"]] - began) * 1000)
        consumer.close()
        return {
            "commands": len(commands),
            "seconds": elapsed,
            "per_s": len(commands) / elapsed,
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
            "cpu_ms_per_command": cpu * 1000 / len(commands),
            "alone_p50_ms": percentile(alone, 0.50),
            "alone_p99_ms": percentile(alone, 0.99),
            "statuses": statuses,
            "patients": patients,
            "config": config,
            "topics": [*topics.commands, topics.results, topics.dlq],
        }
    finally:
        bridge.send_signal(signal.SIGTERM)
        try:
            bridge.wait(30)
        except subprocess.TimeoutExpired:
            bridge.kill()


# -- the floor: the same HTTP calls, directly --------------------------------------------------------------
async def floor(
    config: Any, commands: list[tuple[str, bytes, dict[str, Any]]], concurrency: int
) -> dict[str, Any]:
    async with await Connection.open(config) as connection:
        token = await connection.tokens.get()
        base = config.fhir_base_url
        headers = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
        headers["Authorization"] = token.authorization_header()
        async with httpx.AsyncClient(
            headers=headers, timeout=30, limits=httpx.Limits(max_connections=20)
        ) as http:
            limit = asyncio.Semaphore(concurrency)
            latencies: list[float] = []

            async def create(rtype: str, resource: dict[str, Any]) -> None:
                answer = await http.post(f"{base}{rtype}", content=json.dumps(resource))
                answer.raise_for_status()
                new_id = answer.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
                (await http.get(f"{base}{rtype}/{new_id}")).raise_for_status()

            async def calls(rtype: str, record: dict[str, Any]) -> None:
                fields, action = record.get("fields") or {}, record["action"]
                if action in ("FIND", "ENSURE"):
                    (await http.get(f"{base}{rtype}", params=record["criteria"])).raise_for_status()
                if action in ("CREATE", "ENSURE"):
                    await create(rtype, _resource(rtype, fields))

            async def one(rtype: str, record: dict[str, Any]) -> None:
                async with limit:
                    await calls(rtype, record)
                latencies.append((time.monotonic() - started) * 1000)  # from submission, like the bridge's

            started = time.monotonic()
            await asyncio.gather(*(one(rtype, dict(record)) for rtype, _, record in commands))
            elapsed = time.monotonic() - started
            alone: list[float] = []
            for rtype, _, record in commands[:SEQUENTIAL]:
                began = time.monotonic()
                await calls(rtype, dict(record))
                alone.append((time.monotonic() - began) * 1000)
    return {
        "per_s": len(commands) / elapsed,
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "alone_p50_ms": percentile(alone, 0.5),
        "alone_p99_ms": percentile(alone, 0.99),
    }


def _resource(rtype: str, fields: dict[str, Any]) -> dict[str, Any]:
    from bridge.sink.builders import build  # the same resources the sink sends

    return build(rtype, fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--patients", type=int, default=50)
    args = parser.parse_args()
    bootstrap = os.environ.get("EPIC_BRIDGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    registry_url = os.environ.get("EPIC_BRIDGE_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sink-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        sim = start_simulator(port, args.patients, work / "sim.log")
        sim_url = f"http://127.0.0.1:{port}"
        try:
            bridge = run_bridge(args, work, sim_url, bootstrap, registry_url)
            commands = plan(args.n, bridge["patients"], random.Random(8))
            direct = asyncio.run(floor(bridge["config"], commands, args.concurrency))
        finally:
            sim.send_signal(signal.SIGTERM)
            sim.wait(30)
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics(bridge["topics"])
    print(f"mix: {args.n} commands (40% Patient CREATE, 15% Observation CREATE, 25% Patient FIND, "
          f"10% Patient ENSURE, 10% Observation FIND), concurrency {args.concurrency}")  # fmt: skip
    print(f"results: {bridge['statuses']}")
    for label, m, extra in (
        ("bridge   ", bridge, f"  CPU {bridge['cpu_ms_per_command']:.2f} ms/command"),
        ("sim floor", direct, "  (the same HTTP calls made directly)"),
    ):
        print(
            f"{label}: {m['per_s']:7.1f} commands/s in {m['seconds']:.1f} s;"
            f" burst latency p50 {m['p50_ms']:.0f} ms p99 {m['p99_ms']:.0f} ms;"
            f" one at a time p50 {m['alone_p50_ms']:.0f} ms p99 {m['alone_p99_ms']:.0f} ms{extra}"
        )
    print(
        "burst: all N sent at once, latency from sending to the result being readable by a read_committed "
        "consumer (the floor: from submission to the last HTTP answer); one at a time: "
        f"{SEQUENTIAL} commands, each sent after the previous one's result"
    )


if __name__ == "__main__":
    main()
