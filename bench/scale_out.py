"""Scale-out: N connections x 5 resources (default 100) run by 1, 2 and 3 `epic-bridge run` processes
against the simulator (its own process), on the real broker and registry.

    .venv/bin/python bench/scale_out.py [--connections N] [--processes 1,2,3] [--window S]

Kafka and the registry come from EPIC_BRIDGE_KAFKA_BOOTSTRAP / EPIC_BRIDGE_SCHEMA_REGISTRY_URL (default:
the local stack). Each connection polls 5 resources for a static roster of 2 patients (an Epic-profile
simulator, Patient/Observation commands enabled, so the sink's clients are there too). For each process
count it prints, per process: resident memory, threads and Kafka clients (librdkafka handles, counted by
their main thread), the connections it owns; then the poll cycles completed per second by all processes
together over the measuring window; and, with 2 or more processes, the time from SIGKILL of one process
to each of its connections being taken over by the others (p50 / max; the session timeout is the
default 10 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka.admin import AdminClient
from machine import describe
from prometheus_client.parser import text_string_to_metric_families
from sim_process import start_simulator

from bridge.auth.keys import KeySet, generate_key_pair, load_private_key
from bridge.kafka.context import KafkaContext, KafkaSettings
from bridge.ops.owners import owners

BIN = Path(sys.executable).parent
RESOURCES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")
TOOK_OVER = re.compile(r'"ts": "([^"]+)".*took over ([^"]*?) in [0-9.]+s')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- set-up ------------------------------------------------------------------------------------------------
def write_configs(folder: Path, sim_url: str, prefix: str, n: int) -> list[str]:
    patients = httpx.get(f"{sim_url}/admin/resources/Patient", params={"limit": 2 * n}).json()["ids"]
    kid, pem = generate_key_pair("RS384")  # one key pair, registered for every client
    (folder / "bench.pem").write_bytes(pem)
    (folder / "bench.pem").chmod(0o600)
    jwks = KeySet([load_private_key(pem, kid=kid, alg="RS384")]).jwks()
    names = []
    for i in range(n):
        name = f"c{i:03d}"
        client = {"client_id": name, "auth_methods": ["private_key_jwt"], "jwks": jwks}
        httpx.post(f"{sim_url}/admin/clients", json={**client, "scopes": ["system/*.crs"]}).raise_for_status()
        resources: dict[str, Any] = {r: {} for r in RESOURCES}
        resources["Patient"] = {"actions": ["create", "find"]}
        resources["Observation"] = {
            "categories": ["vital-signs", "laboratory"],
            "actions": ["create", "find"],
        }
        raw = {
            "name": name,
            "fhir_base_url": f"{sim_url}/interconnect-fhir-oauth/api/FHIR/R4/",
            "auth": {
                "method": "backend_services",
                "client_id": name,
                "keys": [{"kid": kid, "private_key": {"file": "bench.pem"}}],
            },
            "resources": resources,
            "roster": {"source": "static", "patient_ids": patients[2 * i : 2 * i + 2]},
            "initial_sync": "from-now",
            "poll_interval_s": 5,
            "topic_prefix": prefix,
            "rate_limit": {"requests_per_second": 50, "burst": 20},
        }
        (folder / f"{name}.json").write_text(json.dumps(raw))
        names.append(name)
    return names


# -- one process -------------------------------------------------------------------------------------------
@dataclass
class Bridge:
    instance: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str | None = None

    def metrics(self) -> dict[str, float]:
        """Sums of the metrics the benchmark reads (by name, over every label set)."""
        if self.url is None:
            found = re.search(r"serving (http://[0-9.]+:[0-9]+)", self.log.read_text(errors="replace"))
            if found is None:
                return {}
            self.url = found.group(1)
        try:
            text = httpx.get(self.url + "/metrics", timeout=5).text
        except httpx.HTTPError:
            return {}
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "epic_bridge_polls_total" and sample.labels.get("result") != "ok":
                    continue
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums

    def resources(self) -> tuple[float, int, int]:
        """(RSS in MiB, threads, Kafka clients)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        clients = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                clients += (task / "comm").read_text().strip() == "rdk:main"
            except OSError:
                continue
        return rss, threads, clients


def start_bridge(work: Path, env: dict[str, str], instance: str) -> Bridge:
    log = work / f"{instance}.log"
    proc = subprocess.Popen(
        [str(BIN / "epic-bridge"), "--config-dir", str(work / "configs"), "--log-level", "INFO", "run"],
        env={**env, "EPIC_BRIDGE_INSTANCE_ID": instance, "EPIC_BRIDGE_STATE_DIR": str(work / instance)},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return Bridge(instance, proc, log)


def wait_until(what: str, predicate: Any, timeout_s: float, bridges: list[Bridge]) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for bridge in bridges:
            if bridge.proc.poll() is not None:
                raise SystemExit(f"{bridge.instance} exited; see {bridge.log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1.0)


def takeovers(bridges: list[Bridge], after: float) -> dict[str, float]:
    """Connection -> when a process logged that it took the connection over, after `after` (Unix time)."""
    found: dict[str, float] = {}
    for bridge in bridges:
        for match in TOOK_OVER.finditer(bridge.log.read_text(errors="replace")):
            at = dt.datetime.fromisoformat(match.group(1)).timestamp()
            if at >= after:
                for name in match.group(2).split(", "):
                    found.setdefault(name, at)
    return found


def run(
    count: int, names: list[str], work: Path, env: dict[str, str], window_s: float, prefix: str
) -> dict[str, Any]:
    kafka = KafkaContext(
        KafkaSettings(
            kafka_bootstrap=env["EPIC_BRIDGE_KAFKA_BOOTSTRAP"],
            schema_registry_url=env["EPIC_BRIDGE_SCHEMA_REGISTRY_URL"],
        )
    )
    bridges = [start_bridge(work, env, f"p{count}-{i}") for i in range(count)]
    try:
        started = time.monotonic()
        wait_until(
            "every connection owned and polled once",
            lambda: (
                sum(b.metrics().get("epic_bridge_owned_connections", 0) for b in bridges) == len(names)
                and sum(b.metrics().get("epic_bridge_polls_total", 0) for b in bridges) >= 5 * len(names)
            ),
            900,
            bridges,
        )
        ready_s = time.monotonic() - started
        before = sum(b.metrics().get("epic_bridge_polls_total", 0) for b in bridges)
        time.sleep(window_s)
        after = sum(b.metrics().get("epic_bridge_polls_total", 0) for b in bridges)
        rows = [
            (b.instance, *b.resources(), b.metrics().get("epic_bridge_owned_connections", 0)) for b in bridges
        ]
        result: dict[str, Any] = {
            "ready_s": ready_s,
            "cycles_per_s": (after - before) / window_s,
            "rows": rows,
        }
        if count > 1:
            victim, survivors = bridges[-1], bridges[:-1]
            owned = {o.connection for o in owners(kafka, prefix, names, {}) if o.instance == victim.instance}
            killed_at = time.time()
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(30)
            wait_until(
                "the killed process's connections taken over",
                lambda: owned <= takeovers(survivors, killed_at).keys(),
                180,
                survivors,
            )
            delays = [takeovers(survivors, killed_at)[n] - killed_at for n in owned]
            result["reassign"] = (len(owned), percentile(delays, 0.5), max(delays))
        return result
    finally:
        for bridge in bridges:
            if bridge.proc.poll() is None:
                bridge.proc.send_signal(signal.SIGTERM)
        for bridge in bridges:
            try:
                bridge.proc.wait(60)
            except subprocess.TimeoutExpired:
                bridge.proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--processes", default="1,2,3")
    parser.add_argument("--window", type=float, default=60.0, help="seconds to count poll cycles")
    args = parser.parse_args()
    bootstrap = os.environ.get("EPIC_BRIDGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    registry_url = os.environ.get("EPIC_BRIDGE_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
    print(describe())
    print(f"{args.connections} connections x 5 resources (static rosters of 2 patients, polled every 5 s)")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "configs").mkdir()
        port = free_port()
        sim = start_simulator(port, 2 * args.connections, work / "sim.log", seed=2)
        prefix = f"scale{uuid.uuid4().hex[:8]}"
        try:
            names = write_configs(work / "configs", f"http://127.0.0.1:{port}", prefix, args.connections)
            env = {
                **os.environ,
                "EPIC_BRIDGE_KAFKA_BOOTSTRAP": bootstrap,
                "EPIC_BRIDGE_SCHEMA_REGISTRY_URL": registry_url,
                "EPIC_BRIDGE_HTTP_PORT": "0",
                "EPIC_BRIDGE_LOG_FORMAT": "json",
            }
            for count in (int(c) for c in args.processes.split(",")):
                result = run(count, names, work, env, args.window, prefix)
                ready = result["ready_s"]
                print(f"\n{count} process(es): all connections owned and polled once after {ready:.0f}s")
                print("  process   RSS MiB  threads  Kafka clients  connections")
                for instance, rss, threads, clients, owned in result["rows"]:
                    print(f"  {instance:8} {rss:8.0f} {threads:8d} {clients:14d} {owned:12.0f}")
                rate = result["cycles_per_s"]
                print(f"  poll cycles completed: {rate:.1f}/s over {args.window:.0f}s (all processes)")
                if "reassign" in result:
                    moved, p50, worst = result["reassign"]
                    print(
                        f"  SIGKILL of one process: its {moved} connections taken over after "
                        f"p50 {p50:.1f}s, max {worst:.1f}s"
                    )
        finally:
            sim.send_signal(signal.SIGTERM)
            sim.wait(30)
            admin = AdminClient({"bootstrap.servers": bootstrap})  # hundreds of partitions: leave none
            names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix + ".")]
            for future in admin.delete_topics(names, operation_timeout=60).values() if names else []:
                future.result()


if __name__ == "__main__":
    main()
