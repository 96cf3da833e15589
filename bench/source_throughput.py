"""Source throughput: a full snapshot of N resources through the bridge into Kafka, against the floor.

    .venv/bin/python bench/source_throughput.py [N] [--tracked 1000000] [--keep-db]

Needs the local Kafka + registry (stack/start). Steps, each measured in its own process so CPU time
and peak RSS belong to one thing only:
1. the simulator (Epic profile, its own process) is seeded with ~N resources (N / 42 patients);
2. **bridge**: `initial_sync: snapshot` of every patient of the roster Group, all five resources, through
   the real source side (plans, per-patient searches, detection against the state store, projections,
   Avro events, fingerprints and cursors in Kafka transactions);
3. **floor**: the same searches through the same FHIR client (same pages, same JSON decoding), each
   resource Avro-encoded as a plain record and produced with an idempotent producer, no bridge logic;
4. **state store**: peak RSS of a process that tracks M fingerprints (M = 10,000 and --tracked), written
   through the `_state` topic, rebuilt from it into the on-disk cache, looked up page-sized and walked as
   a roster, to show RSS does not grow with the number of tracked resources.
Prints the machine, resources/s, CPU-seconds per 1000 resources, peak RSS, and the bridge/floor ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")
CATEGORIES = ["vital-signs", "laboratory", "social-history"]
RESOURCES_PER_PATIENT = 42  # what the simulator seeds per patient (epic_sim.seed.RESOURCES_PER_PATIENT)


def usage() -> tuple[float, float]:
    """(CPU seconds of this process, all threads; peak RSS in MB)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the simulator ---------------------------------------------------------------------------------


class Simulator:
    def __init__(self, patients: int, db: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.fhir_base = f"{self.url}/interconnect-fhir-oauth/api/FHIR/R4/"
        cmd = [
            str(ROOT / ".venv/bin/epic-sim"),
            "serve",
            "--port",
            str(self.port),
            "--patients",
            str(patients),
        ]
        cmd += ["--seed", "1", "--db", str(db)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{self.url}/admin/stats", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the simulator did not start")
            time.sleep(0.5)
        self.stats: dict[str, Any] = httpx.get(f"{self.url}/admin/stats", timeout=30).json()

    def register(self, folder: Path) -> tuple[str, Path]:
        from bridge.auth.keys import generate_key_pair, load_private_key

        client_id = f"bench-{uuid.uuid4().hex[:8]}"
        kid, pem = generate_key_pair("RS384")
        key_file = folder / "bench.pem"
        key_file.write_bytes(pem)
        key_file.chmod(0o600)
        jwk = load_private_key(pem, kid=kid, alg="RS384").public_jwk()
        scopes = [f"system/{t}.rs" for t in RESOURCES] + ["system/Group.r"]
        body = {
            "client_id": client_id,
            "auth_methods": ["private_key_jwt"],
            "jwks_url": None,
            "jwks": {"keys": [jwk]},
            "client_secret": None,
            "scopes": scopes,
            "redirect_uris": [],
            "token_lifetime_s": None,
        }
        httpx.post(f"{self.url}/admin/clients", json=body, timeout=30).raise_for_status()
        return client_id, key_file

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


# -- the phases (each in its own process) ----------------------------------------------------------


def connection_doc(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "bench",
        "fhir_base_url": args.fhir_base,
        "server_profile": "epic",
        "auth": {
            "method": "backend_services",
            "client_id": args.client_id,
            "keys": [{"private_key": {"file": args.key_file}}],
        },
        "resources": {r: ({"categories": CATEGORIES} if r == "Observation" else {}) for r in RESOURCES},
        "roster": {"source": "group", "group_id": args.group},
        "initial_sync": "snapshot",
        "topic_prefix": args.prefix,
        "rate_limit": {"requests_per_second": 1000, "burst": 1000},
    }


def kafka_context(args: argparse.Namespace, instance: str) -> Any:
    from bridge.kafka.context import KafkaContext, KafkaSettings

    return KafkaContext(
        KafkaSettings(
            kafka_bootstrap=args.bootstrap,
            schema_registry_url=args.registry,
            instance_id=instance,
            state_dir=Path(args.state_dir),
        )
    )


def phase_bridge(args: argparse.Namespace) -> dict[str, Any]:
    from bridge.config.models import ConnectionConfig
    from bridge.connection import Connection
    from bridge.kafka.internal import InternalTables
    from bridge.kafka.topics import ensure_topics, internal_topic_specs
    from bridge.kafka.txn import Committer
    from bridge.source.service import SourceService

    cfg = ConnectionConfig.model_validate(connection_doc(args))
    kafka = kafka_context(args, "bench-bridge")
    ensure_topics(
        kafka.admin, internal_topic_specs(cfg.topic_prefix, kafka.settings.internal_topic_partitions)
    )
    tables = InternalTables.open(kafka, cfg.topic_prefix)
    committer = Committer(kafka.config, kafka.transactional_id(cfg.topic_prefix))
    committer.start().result()
    service = SourceService.prepare(cfg, kafka, tables, committer)
    tables.catch_up()

    async def sync() -> None:
        async with await Connection.open(cfg) as connection:
            await service.run(connection, asyncio.Event(), cycles=1)

    cpu0, _ = usage()
    t0 = time.perf_counter()
    asyncio.run(sync())
    wall = time.perf_counter() - t0
    cpu1, rss = usage()
    committer.close()
    tables.close()
    stats = [t.stats for t in service.tasks]
    return {
        "resources": sum(s.resources for s in stats),
        "events": sum(s.events for s in stats),
        "pages": sum(s.pages for s in stats),
        "commits": sum(s.commits for s in stats),
        "wall_s": wall,
        "cpu_s": cpu1 - cpu0,
        "peak_rss_mb": rss,
    }


FLOOR_SCHEMA = {
    "type": "record",
    "name": "Resource",
    "namespace": "bench",
    "fields": [
        {"name": "resource_type", "type": "string"},
        {"name": "resource_id", "type": "string"},
        {"name": "resource_json", "type": "string"},
    ],
}


def phase_floor(args: argparse.Namespace) -> dict[str, Any]:
    """The same pages through the same FHIR client, Avro-encoded and produced: no bridge logic."""
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from bridge.config.models import ConnectionConfig
    from bridge.connection import Connection
    from bridge.kafka.topics import TopicSpec, ensure_topics

    cfg = ConnectionConfig.model_validate(connection_doc(args))
    topic = f"{args.prefix}.floor"
    ensure_topics(kafka_context(args, "bench-floor").admin, [TopicSpec(topic, 3)])  # as the events topics
    registry = SchemaRegistryClient({"url": args.registry})
    serializer = AvroSerializer(registry, json.dumps(FLOOR_SCHEMA))
    context = SerializationContext(topic, MessageField.VALUE)
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "linger.ms": 10,
            "compression.type": "zstd",
            "enable.idempotence": True,
        }
    )
    counts = {"resources": 0, "pages": 0, "undelivered": 0}

    def on_delivery(error: Any, _msg: Any) -> None:
        if error is not None:
            counts["undelivered"] += 1

    def emit(resources: list[dict[str, Any]]) -> None:
        counts["pages"] += 1
        for r in resources:
            record = {
                "resource_type": r["resourceType"],
                "resource_id": r["id"],
                "resource_json": json.dumps(r),
            }
            while True:
                try:
                    producer.produce(
                        topic, serializer(record, context), key=str(r["id"]).encode(), on_delivery=on_delivery
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            counts["resources"] += 1
        producer.poll(0)

    async def walk(connection: Connection, rtype: str, members: list[str]) -> None:
        fhir = connection.fhir
        for pid in members:
            queries: list[list[tuple[str, str]]]
            if rtype == "Patient":
                queries = [[("_id", pid)]]
            elif rtype == "Observation":
                queries = [[("patient", pid), ("category", c)] for c in CATEGORIES]
            else:
                queries = [[("patient", pid)]]
            for query in queries:
                async for page in fhir.search_pages(rtype, [*query, ("_count", "200")]):
                    emit(page.resources)

    async def sync() -> None:
        async with await Connection.open(cfg) as connection:
            group = await connection.fhir.read("Group", args.group)
            members = sorted(m["entity"]["reference"].split("/")[-1] for m in group["member"])
            await asyncio.gather(*(walk(connection, r, members) for r in RESOURCES))
        if producer.flush(60):
            raise SystemExit("floor: records still undelivered after 60 s")

    cpu0, _ = usage()
    t0 = time.perf_counter()
    asyncio.run(sync())
    wall = time.perf_counter() - t0
    cpu1, rss = usage()
    return {**counts, "wall_s": wall, "cpu_s": cpu1 - cpu0, "peak_rss_mb": rss}


def phase_state(args: argparse.Namespace) -> dict[str, Any]:
    """Track M fingerprints through the `_state` topic, rebuild the cache from it, use it; report RSS."""
    from bridge.kafka.table import CompactedTable
    from bridge.kafka.topics import TopicSpec, ensure_topics
    from bridge.kafka.txn import Committer, Unit
    from bridge.source.state import Seen, SeenStore

    kafka = kafka_context(args, f"bench-state-{args.tracked}")
    topic = f"{args.prefix}.state-{args.tracked}._state"
    ensure_topics(kafka.admin, [TopicSpec.compacted(topic)])
    db = Path(args.state_dir) / f"state-{args.tracked}.db"
    committer = Committer(kafka.config, kafka.transactional_id("bench", "state", str(args.tracked)))
    committer.start().result()
    seen = SeenStore(CompactedTable(kafka.config, topic, db))
    t0 = time.perf_counter()
    batch = 20_000
    for start in range(0, args.tracked, batch):
        records = [
            seen.record(
                "bench",
                "Observation",
                f"obs-{i:09d}",
                # real fingerprints are SHA-256 hex: they do not compress, unlike a constant would
                Seen(hashlib.sha256(b"%d" % i).hexdigest(), f"pat-{i // 40:08d}"),
            )
            for i in range(start, min(start + batch, args.tracked))
        ]
        committer.commit_sync(Unit(records))  # the cache learns them once committed
    committer.close()
    written_s = time.perf_counter() - t0
    _, rss_written = usage()
    # a restart on a new machine: the cache is gone and is rebuilt from the compacted topic
    seen = SeenStore(CompactedTable(kafka.config, topic, Path(args.state_dir) / f"rebuilt-{args.tracked}.db"))
    t0 = time.perf_counter()
    seen._table.catch_up(600)
    rebuilt_s = time.perf_counter() - t0
    _, rss_rebuilt = usage()
    rng = random.Random(1)
    for _ in range(200):  # detection: page-sized lookups
        ids = [f"obs-{rng.randrange(args.tracked):09d}" for _ in range(200)]
        assert len(seen.lookup("bench", "Observation", ids)) == len(set(ids))
    walked, after = 0, None
    while True:  # the seen-patients roster walk, a chunk at a time
        chunk = seen.ids_after("bench", "Observation", after, 1000)
        walked += len(chunk)
        if len(chunk) < 1000:
            break
        after = chunk[-1]
    assert walked == args.tracked == seen.count()
    kafka.admin.delete_topics([topic], operation_timeout=60)
    _, rss = usage()
    return {
        "tracked": args.tracked,
        "write_s": written_s,
        "rebuild_s": rebuilt_s,
        "peak_rss_mb": rss,
        "rss_after_write_mb": rss_written,
        "rss_after_rebuild_mb": rss_rebuilt,
    }


PHASES = {"bridge": phase_bridge, "floor": phase_floor, "state": phase_state}


# -- the driver ------------------------------------------------------------------------------------


def run_phase(phase: str, common: list[str], extra: list[str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, *common, *(extra or [])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("resources", nargs="?", type=int, default=100_000)
    parser.add_argument("--tracked", type=int, default=1_000_000, help="fingerprints for the RSS check")
    parser.add_argument("--keep-db", action="store_true", help="keep the seeded simulator database")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    for name in ("fhir-base", "client-id", "key-file", "group", "prefix", "state-dir"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("EPIC_BRIDGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--registry",
        default=os.environ.get("EPIC_BRIDGE_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7"),
    )
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return

    patients = max(4, round(args.resources / RESOURCES_PER_PATIENT))
    work = Path(tempfile.mkdtemp(prefix="bench-source-"))
    db = Path(tempfile.gettempdir()) / f"bench-source-sim-{patients}.sqlite"
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    t0 = time.perf_counter()
    sim = Simulator(patients, db)
    total = sum(v for k, v in sim.stats.get("counts", {}).items() if k in RESOURCES)
    ready = time.perf_counter() - t0
    print(f"simulator: Epic profile, {patients} patients, {total:,} resources (ready in {ready:.1f}s)")
    prefix = f"bench.{uuid.uuid4().hex[:8]}"
    try:
        client_id, key_file = sim.register(work)
        common = ["--fhir-base", sim.fhir_base, "--client-id", client_id, "--key-file", str(key_file)]
        common += [
            "--group",
            sim.stats["roster_group"],
            "--prefix",
            prefix,
            "--state-dir",
            str(work / "state"),
        ]
        common += ["--bootstrap", args.bootstrap, "--registry", args.registry]
        bridge = run_phase("bridge", common)
        floor = run_phase("floor", common)
        sizes = [10_000, 200_000, args.tracked]
        stores = [run_phase("state", common, ["--tracked", str(n)]) for n in sizes]
    finally:
        sim.stop()
        if not args.keep_db:
            db.unlink(missing_ok=True)
        cleanup_topics(args.bootstrap, prefix)
        shutil.rmtree(work, ignore_errors=True)

    def line(name: str, r: dict[str, Any]) -> str:
        per_k = r["cpu_s"] / max(1, r["resources"]) * 1000
        rate = r["resources"] / r["wall_s"]
        return (
            f"{name:<7} {r['resources']:>9,} resources  {r['wall_s']:7.1f} s  {rate:9,.0f} res/s  "
            f"{r['cpu_s']:7.1f} CPU-s  {per_k:6.3f} CPU-s/1000  peak RSS {r['peak_rss_mb']:6.0f} MB"
        )

    print(line("bridge", bridge) + f"  ({bridge['events']:,} events, {bridge['commits']} transactions)")
    print(line("floor", floor))
    cpu_ratio = (bridge["cpu_s"] / bridge["resources"]) / (floor["cpu_s"] / floor["resources"])
    wall_ratio = bridge["wall_s"] / floor["wall_s"]
    print(
        f"ratio bridge/floor: CPU per resource {cpu_ratio:.2f}x, wall {wall_ratio:.2f}x (target: within 2x)"
    )
    for r in stores:
        print(
            f"state store: {r['tracked']:>9,} tracked fingerprints  peak RSS {r['peak_rss_mb']:6.0f} MB "
            f"(after writing them {r['rss_after_write_mb']:.0f} MB; write {r['write_s']:.1f} s, "
            f"rebuild from topic {r['rebuild_s']:.1f} s)"
        )


def cleanup_topics(bootstrap: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=60).values():
            try:
                future.result()
            except Exception as exc:
                print(f"could not delete a bench topic: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()
