"""Sink latency and throughput: commands through the real `epic-bridge run --only sink` process against the
simulator (its own process), on the real broker and registry, each figure next to the simulator-only floor
(the same HTTP calls made directly with one httpx client, with the bridge's pool limit).

    .venv/bin/python bench/sink_throughput.py [N] [--concurrency C] [--patients P] [--slow-ms MS]

Kafka and the registry come from EPIC_BRIDGE_KAFKA_BOOTSTRAP / EPIC_BRIDGE_SCHEMA_REGISTRY_URL (default:
the local stack). One bridge process serves one connection per sink concurrency measured (1, C and 64). In
one run it prints:
- one at a time (each command sent once the previous result is readable): 30 commands of the mix, 30 lone
  Patient FINDs and 30 lone Patient CREATEs, p50/p99 against the floor's;
- bursts of N commands of the mix (40% Patient CREATE, 15% Observation CREATE blood-pressure panels, 25%
  Patient FIND by _id, 10% Patient ENSURE: search, then create, 10% Observation FIND by patient + category),
  all sent at once, at concurrency 1, C and 64: commands/s and latency against the floor's, and the bridge
  process's CPU per command (at C);
- the effect of one slow command: 200 Patient commands sent at once, without and then right after one
  Observation search the simulator answers MS late.
Latency is from producing the command to its result being readable by a read_committed consumer.
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
from sim_process import start_simulator

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
SLOW_OTHERS = 200


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
            number = (
                f"800-{rng.randrange(10**9):09d}"  # a person of its own: runs and the floor share a server
            )
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
class BridgeRun:
    """One `epic-bridge run --only sink` process serving one connection per sink concurrency measured."""

    def __init__(self, args: argparse.Namespace, work: Path, sim_url: str, bootstrap: str, registry_url: str):
        self.sim_url = sim_url
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        self.levels = sorted({1, args.concurrency, 64})
        self.configs = {
            c: load_connection_file(write_config(work, sim_url, f"bench{c}", prefix, c)) for c in self.levels
        }
        self.topics = {c: SinkTopics.of(config) for c, config in self.configs.items()}
        env = {
            **os.environ,
            "EPIC_BRIDGE_KAFKA_BOOTSTRAP": bootstrap,
            "EPIC_BRIDGE_SCHEMA_REGISTRY_URL": registry_url,
            "EPIC_BRIDGE_INSTANCE_ID": f"bench-{uuid.uuid4().hex[:8]}",
            "EPIC_BRIDGE_HTTP_PORT": "0",  # metrics/health on a free port
        }
        self.log = work / "bridge.log"
        self.process = subprocess.Popen(
            [str(BIN / "epic-bridge"), "--config-dir", str(work), "--state-dir", str(work / "state"),
             "--log-level", "WARNING", "run", "--only", "sink"],
            env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        registry = SchemaRegistryClient({"url": registry_url})
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.serializers = {
            r: AvroSerializer(registry, load_schema(f"{r.lower()}_command.avsc"))
            for r in ("Patient", "Observation")
        }
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        self.deserialize = AvroDeserializer(registry)
        self.received: dict[str, float] = {}
        self.statuses: dict[str, int] = {}
        self.failures: dict[str, int] = {}  # why, how many

    def all_topics(self) -> list[str]:
        return [t for topics in self.topics.values() for t in (*topics.commands, topics.results, topics.dlq)]

    def start(self) -> list[str]:
        """Wait for the topics and a first answer on every connection; the simulator's patient ids."""
        wanted = {t for topics in self.topics.values() for t in (*topics.commands, topics.results)}
        while not wanted <= set(self.admin.list_topics(timeout=10).topics):
            if self.process.poll() is not None:
                raise SystemExit(f"the bridge exited; see {self.log}")
            time.sleep(0.2)
        self.consumer.subscribe([topics.results for topics in self.topics.values()])
        patients = [
            str(i)
            for i in httpx.get(f"{self.sim_url}/admin/resources/Patient", params={"limit": 50}).json()["ids"]
        ]
        for level in self.levels:  # group joined, token fetched, capabilities known
            warm: dict[str, Any] = {
                "command_id": f"warm-{uuid.uuid4().hex}",
                "action": "FIND",
                "criteria": {"_id": patients[0]},
            }
            self.send(level, "Patient", b"warm", warm)
            self.producer.flush(30)
            self.drain({warm["command_id"]}, 120)
        self.statuses.clear()
        return patients

    def stop(self) -> None:
        self.consumer.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def send(self, level: int, rtype: str, key: bytes | None, record: dict[str, Any]) -> None:
        topic = next(t for t, r in self.topics[level].commands.items() if r == rtype)
        value = self.serializers[rtype](record, SerializationContext(topic, MessageField.VALUE))
        self.producer.produce(topic, value=value, key=key)
        self.producer.poll(0)

    def drain(self, until: set[str], timeout_s: float) -> None:
        """Read results until those of `until` arrived, noting when each became readable. `poll` returns
        with the first record (`consume(n, timeout)` would wait for n records or the whole timeout, which
        a lone result would be charged for); `consume(n, 0)` takes the rest already fetched."""
        deadline = time.monotonic() + timeout_s
        while not until <= self.received.keys():
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(until & self.received.keys())} of {len(until)} results arrived")
            first = self.consumer.poll(0.2)
            if first is None:
                continue
            now = time.monotonic()
            for message in [first, *self.consumer.consume(500, 0)]:
                if message.error() is not None:
                    continue
                topic = str(message.topic())
                result = self.deserialize(message.value(), SerializationContext(topic, MessageField.VALUE))
                self.received.setdefault(result["command_id"], now)
                self.statuses[result["status"]] = self.statuses.get(result["status"], 0) + 1
                if result["status"] == "FAILED" and result.get("error"):
                    why = str(result["error"].get("message"))[:120]
                    self.failures[why] = self.failures.get(why, 0) + 1

    def one_at_a_time(self, level: int, commands: list[tuple[str, bytes, dict[str, Any]]]) -> list[float]:
        """Each command sent once the previous one's result is readable: no queueing behind others."""
        latencies: list[float] = []
        for rtype, key, record in commands:
            began = time.monotonic()
            self.send(level, rtype, key, record)
            self.producer.flush(30)
            self.drain({record["command_id"]}, 60)
            latencies.append((self.received[record["command_id"]] - began) * 1000)
        return latencies

    def burst(self, level: int, commands: list[tuple[str, bytes, dict[str, Any]]]) -> dict[str, Any]:
        """All commands sent at once; commands/s and each one's latency from sending to its result."""
        cpu_before = process_cpu_s(self.process.pid)
        sent_at: dict[str, float] = {}
        started = time.monotonic()
        for rtype, key, record in commands:
            sent_at[record["command_id"]] = time.monotonic()
            self.send(level, rtype, key, record)
        self.producer.flush(30)
        self.drain(set(sent_at), 600)
        elapsed = max(self.received[c] for c in sent_at) - started
        cpu = process_cpu_s(self.process.pid) - cpu_before
        latencies = {c: (self.received[c] - sent_at[c]) * 1000 for c in sent_at}
        return {
            "commands": len(commands),
            "seconds": elapsed,
            "per_s": len(commands) / elapsed,
            "p50_ms": percentile(list(latencies.values()), 0.50),
            "p99_ms": percentile(list(latencies.values()), 0.99),
            "cpu_ms_per_command": cpu * 1000 / len(commands),
            "latencies": latencies,
        }


def lone(
    action: str, n: int, patients: list[str], rng: random.Random
) -> list[tuple[str, bytes, dict[str, Any]]]:
    """`n` Patient FINDs by _id, or `n` Patient CREATEs."""
    out: list[tuple[str, bytes, dict[str, Any]]] = []
    for i in range(n):
        if action == "FIND":
            record: dict[str, Any] = {"action": "FIND", "criteria": {"_id": rng.choice(patients)}}
        else:
            record = {"action": "CREATE", "fields": {"family_name": f"Lone{i}", "given_names": ["L"]}}
        record["command_id"] = f"bench-{uuid.uuid4().hex}"
        out.append(("Patient", f"lone{i}".encode(), record))
    return out


def patient_mix(n: int, patients: list[str], rng: random.Random) -> list[tuple[str, bytes, dict[str, Any]]]:
    """Half Patient FINDs, half Patient CREATEs (no Observation call: the slow one is the only one)."""
    finds, creates = lone("FIND", n // 2, patients, rng), lone("CREATE", n - n // 2, patients, rng)
    mixed = [c for pair in zip(finds, creates, strict=False) for c in pair] + creates[len(finds) :]
    return [(rtype, f"m{i}".encode(), record) for i, (rtype, _, record) in enumerate(mixed)]


def slow_effect(run: BridgeRun, level: int, patients: list[str], slow_ms: int) -> dict[str, Any]:
    """The latency of SLOW_OTHERS commands sent at once, without and then with one slow command (an
    Observation search the simulator answers `slow_ms` late) sent just before them."""
    rng = random.Random(11)
    calm = run.burst(level, patient_mix(SLOW_OTHERS, patients, rng))
    httpx.put(
        f"{run.sim_url}/admin/faults",
        json={"rules": [{"kind": "latency", "latency_ms": slow_ms, "resource": "Observation", "count": 1}]},
    ).raise_for_status()
    try:
        slow: dict[str, Any] = {"command_id": f"bench-slow-{uuid.uuid4().hex}", "action": "FIND"}
        slow["criteria"] = {"patient": patients[0], "category": "vital-signs"}
        began = time.monotonic()
        run.send(level, "Observation", b"slow", slow)
        others = run.burst(level, patient_mix(SLOW_OTHERS, patients, rng))
        run.drain({slow["command_id"]}, 60)
    finally:
        httpx.delete(f"{run.sim_url}/admin/faults").raise_for_status()
    return {
        "calm": calm,
        "others": others,
        "slow_ms": (run.received[slow["command_id"]] - began) * 1000,
        "others_before_slow": sum(
            1 for c in others["latencies"] if run.received[c] < run.received[slow["command_id"]]
        ),
    }


# -- the floor: the same HTTP calls, directly --------------------------------------------------------------
class Floor:
    def __init__(self, config: Any) -> None:
        self.config = config

    async def _client(self, connection: Connection) -> httpx.AsyncClient:
        token = await connection.tokens.get()
        headers = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
        headers["Authorization"] = token.authorization_header()
        # the bridge's own pool limit (bridge.connection): 20 connections
        return httpx.AsyncClient(headers=headers, timeout=30, limits=httpx.Limits(max_connections=20))

    async def _calls(self, http: httpx.AsyncClient, rtype: str, record: dict[str, Any]) -> None:
        base = self.config.fhir_base_url
        fields, action = record.get("fields") or {}, record["action"]
        if action in ("FIND", "ENSURE"):
            (await http.get(f"{base}{rtype}", params=record["criteria"])).raise_for_status()
        if action in ("CREATE", "ENSURE"):
            answer = await http.post(f"{base}{rtype}", content=json.dumps(_resource(rtype, fields)))
            answer.raise_for_status()
            new_id = answer.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
            (await http.get(f"{base}{rtype}/{new_id}")).raise_for_status()  # the sink reads it back

    async def burst(
        self, commands: list[tuple[str, bytes, dict[str, Any]]], concurrency: int
    ) -> dict[str, Any]:
        async with await Connection.open(self.config) as connection, await self._client(connection) as http:
            limit = asyncio.Semaphore(concurrency)
            latencies: list[float] = []

            async def one(rtype: str, record: dict[str, Any]) -> None:
                async with limit:
                    await self._calls(http, rtype, record)
                latencies.append((time.monotonic() - started) * 1000)  # from submission, like the bridge's

            started, cpu_before = time.monotonic(), time.process_time()
            await asyncio.gather(*(one(rtype, dict(record)) for rtype, _, record in commands))
            elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_before
        return {
            "per_s": len(commands) / elapsed,
            "seconds": elapsed,
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "cpu_ms_per_command": cpu * 1000 / len(commands),
        }

    async def one_at_a_time(self, commands: list[tuple[str, bytes, dict[str, Any]]]) -> list[float]:
        async with await Connection.open(self.config) as connection, await self._client(connection) as http:
            latencies: list[float] = []
            for rtype, _, record in commands:
                began = time.monotonic()
                await self._calls(http, rtype, dict(record))
                latencies.append((time.monotonic() - began) * 1000)
        return latencies


def _resource(rtype: str, fields: dict[str, Any]) -> dict[str, Any]:
    from bridge.sink.builders import build  # the same resources the sink sends

    return build(rtype, fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--slow-ms", type=int, default=3000, help="how late the one slow command is answered")
    args = parser.parse_args()
    bootstrap = os.environ.get("EPIC_BRIDGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    registry_url = os.environ.get("EPIC_BRIDGE_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}")  # fmt: skip
    bridge: dict[int, dict[str, Any]] = {}
    direct: dict[int, dict[str, Any]] = {}
    lone_ms: dict[str, tuple[list[float], list[float]]] = {}  # action -> (bridge, floor)
    with tempfile.TemporaryDirectory(prefix="sink-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        sim = start_simulator(port, args.patients, work / "sim.log", seed=1)
        sim_url = f"http://127.0.0.1:{port}"
        run = BridgeRun(args, work, sim_url, bootstrap, registry_url)
        try:
            patients = run.start()
            floor = Floor(run.configs[args.concurrency])
            # Alone first, on a small database: the bridge's latency over the floor's for the same calls.
            mixed = plan(SEQUENTIAL, patients, random.Random(9))
            lone_ms["mix"] = (
                run.one_at_a_time(args.concurrency, mixed),
                asyncio.run(floor.one_at_a_time(mixed)),
            )
            for action in ("FIND", "CREATE"):
                commands = lone(action, SEQUENTIAL, patients, random.Random(10))
                lone_ms[action] = (
                    run.one_at_a_time(args.concurrency, commands),
                    asyncio.run(floor.one_at_a_time(lone(action, SEQUENTIAL, patients, random.Random(10)))),
                )
            # Bursts, each level's bridge run and floor run one after the other on a database of a like size.
            for level in run.levels:
                bridge[level] = run.burst(level, plan(args.n, patients, random.Random(7 + level)))
                direct[level] = asyncio.run(
                    floor.burst(plan(args.n, patients, random.Random(8 + level)), level)
                )
            slow = slow_effect(run, args.concurrency, patients, args.slow_ms)
            statuses, failures = dict(run.statuses), dict(run.failures)
        finally:
            run.stop()
            sim.send_signal(signal.SIGTERM)
            sim.wait(30)
            run.admin.delete_topics(run.all_topics())
    c = args.concurrency
    print(f"mix: {args.n} commands (40% Patient CREATE, 15% Observation CREATE, 25% Patient FIND, "
          f"10% Patient ENSURE, 10% Observation FIND), concurrency {c}")  # fmt: skip
    print(f"results: {statuses}" + (f"; failures: {failures}" if failures else ""))
    for label, m, extra, alone in (
        (
            "bridge   ",
            bridge[c],
            f"  CPU {bridge[c]['cpu_ms_per_command']:.2f} ms/command",
            lone_ms["mix"][0],
        ),
        (
            "sim floor",
            direct[c],
            f"  (the same HTTP calls made directly; client CPU {direct[c]['cpu_ms_per_command']:.2f}"
            " ms/command)",
            lone_ms["mix"][1],
        ),
    ):
        print(
            f"{label}: {m['per_s']:7.1f} commands/s in {m['seconds']:.1f} s;"
            f" burst latency p50 {m['p50_ms']:.0f} ms p99 {m['p99_ms']:.0f} ms;"
            f" one at a time p50 {percentile(alone, 0.5):.0f} ms p99 {percentile(alone, 0.99):.0f} ms{extra}"
        )
    print(
        "burst: all N sent at once, latency from sending to the result being readable by a read_committed "
        "consumer (the floor: from submission to the last HTTP answer); one at a time: "
        f"{SEQUENTIAL} commands, each sent after the previous one's result"
    )
    for action, target in (("FIND", 20), ("CREATE", 40)):
        ours, theirs = lone_ms[action]
        ours50, ours99 = percentile(ours, 0.5), percentile(ours, 0.99)
        theirs50, theirs99 = percentile(theirs, 0.5), percentile(theirs, 0.99)
        print(
            f"lone {action:<6}: bridge p50 {ours50:.0f} ms p99 {ours99:.0f} ms;"
            f" floor p50 {theirs50:.0f} ms p99 {theirs99:.0f} ms;"
            f" p50 over the floor {ours50 - theirs50:+.0f} ms (target <= +{target} ms)"
        )
    for level in run.levels:
        ratio = bridge[level]["per_s"] / direct[level]["per_s"]
        print(
            f"concurrency {level:>2}: bridge {bridge[level]['per_s']:6.1f} commands/s,"
            f" floor {direct[level]['per_s']:6.1f} commands/s, ratio {ratio:.2f} (target >= 0.95);"
            f" burst p50 {bridge[level]['p50_ms']:.0f} ms p99 {bridge[level]['p99_ms']:.0f} ms"
            f" (floor {direct[level]['p50_ms']:.0f} / {direct[level]['p99_ms']:.0f} ms)"
        )
    calm, others = slow["calm"], slow["others"]
    print(
        f"one slow command ({args.slow_ms} ms late) sent before {SLOW_OTHERS} others at concurrency {c}:"
        f" the others p50 {others['p50_ms']:.0f} ms p99 {others['p99_ms']:.0f} ms"
        f" (without it: p50 {calm['p50_ms']:.0f} ms p99 {calm['p99_ms']:.0f} ms);"
        f" {slow['others_before_slow']} of {SLOW_OTHERS} answered before it; it was answered in"
        f" {slow['slow_ms']:.0f} ms"
    )


if __name__ == "__main__":
    main()
