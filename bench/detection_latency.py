"""Change-detection latency of the bridge's scan policies on one seeded hospital activity.

    .venv/bin/python bench/detection_latency.py [--policies uniform,adaptive,hinted] [--patients 5000]
        [--budget 25] [--seed 1] [--changes 1000] [--duration S] [--speed 1] [--quick]

One simulator (Epic profile, the episodes activity model, PATIENTS roster patients) is shared by one real
`epic-bridge run --only source` process per policy, each with its own OAuth client, topic prefix, state
dir and a rate limit of BUDGET requests/s, so every policy sees the identical change timeline:
- uniform: round-robin cycles over the roster, as the bridge has always scanned (`source.schedule:
  uniform` where the bridge knows the setting; without it on a bridge that has only cycles);
- adaptive: `source.schedule: adaptive` (per-patient due times from observed change history);
- hinted: adaptive plus the HL7v2 listener; the simulator sends a message for HL7_SHARE of the changes,
  HL7_DELAY seconds after them, to that bridge's MLLP port.
A policy whose config the bridge rejects is skipped, saying why, and the run exits non-zero.

Resources and categories are `make run`'s (Patient, Appointment, Encounter, Observation vital-signs +
laboratory, DocumentReference clinical-note: six searches per patient). Each bridge starts with
`initial_sync: from-now`; the activity starts (paused until then) once the simulator's request log shows
that every bridge has searched every roster patient x resource x category, so the first pass publishes
nothing and reads nothing the activity made.

Detection latency of a change = when a read_committed consumer first receives an event of that resource
whose `resource_json` reflects that change or a later one (by the ground truth's digest), minus the
ground-truth `at` of the change. After the activity (CHANGES made, or DURATION seconds) the run drains
until every policy detected every change or, at most, 1.5 x the slowest first pass (a full sweep) or the
adaptive max staleness, plus a minute. Requests and peak requests/s come from the simulator's request log
(per OAuth client, 1 s windows), RSS from each bridge process (peak).

Kafka and the registry come from EPIC_BRIDGE_KAFKA_BOOTSTRAP / EPIC_BRIDGE_SCHEMA_REGISTRY_URL (or
KAFKA_BOOTSTRAP / SCHEMA_REGISTRY_URL; default: the local stack). The last lines are
`uniform p50: <s> s` ... `adaptive p95: <s> s` and, when the hinted run ran, `hinted p95: <s> s` (changes
that had an HL7 message), for scripts to check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from machine import describe

from epic_sim.episodes.detection import (
    LatencySummary,
    Matching,
    Sighting,
    Version,
    digest_of_json,
    match,
)

BIN = Path(sys.executable).parent
MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"  # the simulator's (and Epic sandbox's) MRNs
MRN_AUTHORITY = "EPI"  # PID-3 CX-4 namespace id of those MRNs in the simulator's feed
OBSERVATION_CATEGORIES = ("vital-signs", "laboratory")
NOTE_CATEGORY = "clinical-note"
RESOURCES = ("Patient", "Appointment", "Encounter", "Observation", "DocumentReference")
# One search per unit: what a full pass over one roster patient costs.
UNIT_KINDS = (
    ("Patient", None),
    ("Appointment", None),
    ("Encounter", None),
    *(("Observation", c) for c in OBSERVATION_CATEGORIES),
    ("DocumentReference", None),
)
ALL_POLICIES = ("uniform", "adaptive", "hinted")
SCHEDULE_UNITS = "epic_bridge_schedule_units"  # exported by a bridge that runs a scan schedule


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the machine ---------------------------------------------------------------------------------------
def kafka_version(bootstrap: str) -> str:
    """The broker's version from its command line, when it runs on this machine (the local stack)."""
    host = bootstrap.split(",")[0].rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "::1"):
        return "unknown (remote broker)"
    pattern = re.compile(r"kafka(?:_2\.\d+)?-(\d+\.\d+\.\d+)")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "kafka.Kafka" in text and (found := pattern.search(text)):
            return found.group(1)
    return "unknown"


def registry_version(url: str) -> str:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    for path, name in (("/apis/registry/v3/system/info", "Apicurio Registry"), ("/v1/metadata/version", "")):
        try:
            answer = httpx.get(origin + path, timeout=5)
            if answer.status_code == 200:
                body = answer.json()
                return f"{name or 'Schema Registry'} {body.get('version', '?')}"
        except (httpx.HTTPError, ValueError):
            continue
    return "unknown"


def _version(answer: Any) -> str:
    """confluent_kafka.version() and libversion() answer (text, number) or, in some builds, the text."""
    return str(answer[0] if isinstance(answer, tuple) else answer)


def describe_machine(bootstrap: str, registry: str) -> list[str]:
    import confluent_kafka

    load = os.getloadavg()
    return [
        f"{describe()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"services: Kafka {kafka_version(bootstrap)} at {bootstrap}, {registry_version(registry)} at "
        f"{registry}; confluent-kafka {_version(confluent_kafka.version())} "
        f"(librdkafka {_version(confluent_kafka.libversion())})",
    ]


# -- the policies and their configs --------------------------------------------------------------------
@dataclass
class Policy:
    name: str
    client_id: str
    prefix: str
    mllp_port: int | None = None
    note: str = ""  # how the config was accepted, for the report
    config_dir: Path = Path()
    doc: dict[str, Any] = field(default_factory=dict)  # its connection config

    @property
    def adaptive(self) -> bool:
        return self.name != "uniform"


def connection_doc(policy: Policy, args: argparse.Namespace, fhir_base: str, kid: str) -> dict[str, Any]:
    resources: dict[str, Any] = {r: {} for r in RESOURCES}
    resources["Observation"] = {"categories": list(OBSERVATION_CATEGORIES)}
    resources["DocumentReference"] = {"categories": [NOTE_CATEGORY]}
    source: dict[str, Any] = {"schedule": "adaptive" if policy.adaptive else "uniform"}
    if policy.adaptive and args.max_staleness:
        source["max_staleness_s"] = args.max_staleness
    doc: dict[str, Any] = {
        "name": policy.name,
        "fhir_base_url": fhir_base,
        "server_profile": "epic",
        "auth": {
            "method": "backend_services",
            "client_id": policy.client_id,
            "keys": [{"kid": kid, "private_key": {"file": f"{policy.name}.pem"}}],
        },
        "resources": resources,
        "poll_interval_s": 1,  # uniform: the next cycle right away (no idle budget)
        "roster": {"source": "group", "group_id": "all-patients"},
        "initial_sync": "from-now",
        "topic_prefix": policy.prefix,
        "rate_limit": {"requests_per_second": args.budget, "burst": args.burst},
        "source": source,
    }
    if policy.name == "hinted":
        doc["hints"] = {
            "enabled": True,
            "mllp": {"enabled": True, "port": policy.mllp_port},
            "patient_identifiers": {"mrn_assigning_authority": MRN_AUTHORITY, "mrn_system": MRN_SYSTEM},
        }
    return doc


PLACEHOLDER_BASE = "http://127.0.0.1:1/interconnect-fhir-oauth/api/FHIR/R4/"  # until the simulator runs


def write_configs(policy: Policy, args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """Write the policy's key and config (pointing at no server yet): None when the bridge accepts the
    config, else why not; and the public JWK Set to register with the simulator."""
    from bridge.auth.keys import KeySet, generate_key_pair, load_private_key

    policy.config_dir.mkdir(parents=True)
    kid, pem = generate_key_pair("RS384")
    key_file = policy.config_dir / f"{policy.name}.pem"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    jwks = KeySet([load_private_key(pem, kid=kid, alg="RS384")]).jwks()
    policy.doc = connection_doc(policy, args, PLACEHOLDER_BASE, kid)
    problems = save_config(policy)
    policy.note = f"source.schedule: {policy.doc['source']['schedule']}"
    if problems and policy.name == "uniform" and all("source.schedule" in p for p in problems):
        # a bridge without the setting has only uniform cycles: that is the uniform policy
        del policy.doc["source"]["schedule"]
        problems = save_config(policy)
        policy.note = "this bridge has no source.schedule setting: its round-robin cycles"
    return ("; ".join(problems) if problems else None), jwks


def save_config(policy: Policy) -> list[str]:
    """Write the policy's config file; the bridge's own loader's objections to it (none: accepted)."""
    from bridge.config import ConfigError, load_connection_file

    path = policy.config_dir / f"{policy.name}.json"
    path.write_text(json.dumps(policy.doc, indent=2))
    try:
        load_connection_file(path)
    except ConfigError as exc:
        return [p.replace(f"{path}: ", "") for p in exc.problems]
    return []


# -- the processes --------------------------------------------------------------------------------------
class Simulator:
    def __init__(self, args: argparse.Namespace, work: Path, hl7_target: str | None) -> None:
        self.url = self.fhir_base = ""
        self.log_path = work / "simulator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.args, self.work, self.hl7_target = args, work, hl7_target

    def start(self) -> None:
        """Start on a free port; another port when that one was taken meanwhile (it is free when picked,
        but other processes on the machine pick ports too)."""
        for _ in range(5):
            if self._start_on(free_port()):
                stats = self.get("/admin/stats")
                if stats["counts"].get("Patient") != self.args.patients:
                    raise SystemExit(f"{self.url} answers, but not as the simulator this run started")
                return
        raise SystemExit(f"the simulator did not start; see {self.log_path}")

    def _start_on(self, port: int) -> bool:
        args = self.args
        cmd = [str(BIN / "epic-sim"), "serve", "--port", str(port), "--patients", str(args.patients)]
        cmd += ["--seed", str(args.seed), "--activity-model", "episodes", "--activity-speed", "0"]
        cmd += ["--ground-truth", str(self.work / "ground-truth.jsonl"), "--log-level", "info"]
        if self.hl7_target is not None:
            cmd += ["--hl7-target", self.hl7_target, "--hl7-share", str(args.hl7_share)]
            cmd += ["--hl7-delay", args.hl7_delay]
        self.proc = subprocess.Popen(cmd, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        self.fhir_base = f"{self.url}/interconnect-fhir-oauth/api/FHIR/R4/"
        deadline = time.monotonic() + 120 + args.patients * 0.05  # seeding is linear in the roster
        listening = f"Uvicorn running on {self.url}"
        while listening not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None:
                return False  # e.g. the port was taken after it was picked
            if time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.5)
        return True

    def get(self, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.url}{path}", params=params, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def put(self, path: str, body: dict[str, Any]) -> Any:
        answer = httpx.put(f"{self.url}{path}", json=body, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def register(self, client_id: str, jwks: dict[str, Any]) -> None:
        scopes = [f"system/{t}.rs" for t in RESOURCES] + ["system/Group.r"]
        body = {"client_id": client_id, "auth_methods": ["private_key_jwt"], "jwks": jwks, "scopes": scopes}
        httpx.post(f"{self.url}/admin/clients", json=body, timeout=30).raise_for_status()

    def roster(self) -> list[str]:
        group = self.get(f"/admin/resources/Group/{self.get('/admin/stats')['roster_group']}")
        return [m["entity"]["reference"].split("/")[-1] for m in group["member"]]

    def ground_truth(self, since: int = 0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.get("/admin/ground-truth", since=since, limit=10_000)["changes"]
            out.extend(page)
            if len(page) < 10_000:
                return out
            since = int(page[-1]["seq"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Bridge:
    def __init__(self, policy: Policy, args: argparse.Namespace, work: Path) -> None:
        self.policy = policy
        self.http_port = free_port()
        self.log_path = work / f"bridge-{policy.name}.log"
        self.peak_rss_mb = 0.0
        self.exit_code: int | None = None
        env = {
            **os.environ,
            "EPIC_BRIDGE_KAFKA_BOOTSTRAP": args.bootstrap,
            "EPIC_BRIDGE_SCHEMA_REGISTRY_URL": args.registry,
            "EPIC_BRIDGE_INSTANCE_ID": policy.client_id,
            "EPIC_BRIDGE_HTTP_HOST": "127.0.0.1",
            "EPIC_BRIDGE_HTTP_PORT": str(self.http_port),
        }
        cmd = [str(BIN / "epic-bridge"), "--config-dir", str(policy.config_dir)]
        cmd += ["--state-dir", str(work / f"state-{policy.name}"), "--log-level", "INFO"]
        cmd += ["--log-format", "text", "run", "--only", "source"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        self.sample_rss()
        if self.exit_code is None and self.proc.poll() is not None:
            self.exit_code = self.proc.returncode
        return self.exit_code is None

    def sample_rss(self) -> None:
        try:
            for row in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if row.startswith("VmHWM:"):  # the kernel's peak resident set size of the process
                    self.peak_rss_mb = max(self.peak_rss_mb, int(row.split()[1]) / 1024)
        except OSError:
            pass

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """The bridge's Prometheus samples (name, labels, value); none when it does not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10).text
        except httpx.HTTPError:
            return []
        return [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def hint_metrics(self) -> dict[str, float]:
        """The hint counters, summed over everything but stage, reason and code."""
        out: Counter[str] = Counter()
        for name, labels, value in self.samples():
            if name.startswith(("epic_bridge_hint_", "epic_bridge_hints_")) and not name.endswith("_created"):
                kept = {k: v for k, v in labels.items() if k in ("stage", "reason", "code")}
                out[name + "".join(f"[{k}={v}]" for k, v in sorted(kept.items()))] += value
        return dict(out)

    def not_in_effect(self) -> str | None:
        """Why the bridge, having accepted the policy's config, does not run the policy (None: it does)."""
        policy, reasons = self.policy, []
        if policy.adaptive:
            units = [
                v
                for n, labels, v in self.samples()
                if n == SCHEDULE_UNITS and labels.get("connection") == policy.name
            ]
            if not any(units):
                reasons.append(
                    f"it accepts source.schedule adaptive but exports no scan schedule ({SCHEDULE_UNITS}): "
                    "it does not schedule adaptively"
                )
        if policy.mllp_port is not None:
            try:
                socket.create_connection(("127.0.0.1", policy.mllp_port), timeout=5).close()
            except OSError:
                reasons.append(f"it accepts hints.mllp but nothing listens on port {policy.mllp_port}")
        return "; ".join(reasons) or None

    def stop(self) -> None:
        self.sample_rss()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- what the simulator saw: requests per client --------------------------------------------------------
def unit_of(entry: dict[str, Any]) -> tuple[str, str | None, str] | None:
    """(resource type, Observation category, patient) of a search or read naming one patient."""
    path = str(entry.get("path", ""))
    if "/FHIR/R4/" not in path:
        return None
    parts = path.split("/FHIR/R4/", 1)[1].split("/")
    rtype, query = parts[0], entry.get("query") or {}

    def first(name: str) -> str | None:
        values = query.get(name)
        return str(values[0]) if values else None

    if rtype == "Patient":
        patient = first("_id") or (parts[1] if len(parts) > 1 and not parts[1].startswith("_") else None)
    else:
        patient = first("patient") or first("subject")
    if patient is None:
        return None
    variant = first("category") if rtype == "Observation" else None
    return rtype, variant, patient.removeprefix("Patient/")


@dataclass
class ClientRequests:
    total: int = 0
    per_second: Counter[int] = field(default_factory=Counter)
    covered: set[tuple[str, str | None, str]] = field(default_factory=set)  # until the first pass is done
    first_at: float | None = None
    first_pass_done_at: float | None = None

    def count_between(self, start: float, end: float) -> int:
        return sum(n for second, n in self.per_second.items() if start <= second < end)


class RequestWatcher(threading.Thread):
    """Follows GET /admin/requests: per client, requests per 1 s window and first-pass coverage."""

    def __init__(self, sim: Simulator, clients: Iterable[str], units: int) -> None:
        super().__init__(daemon=True, name="requests")
        self.sim = sim
        self.clients = {c: ClientRequests() for c in clients}
        self.other: Counter[str] = Counter()  # requests naming no benchmark client, by method and path
        self.units = units
        self.stopping = threading.Event()
        self.error: str | None = None
        self._cursor = 0

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            self.poll_once()
        self.poll_once()

    def poll_once(self) -> None:
        try:
            entries = self.sim.get("/admin/requests", since=self._cursor)["requests"]
        except (httpx.HTTPError, ValueError) as exc:
            self.error = str(exc)
            return
        now = time.time()
        for entry in entries:
            if entry["status"] is None and now - entry["time"] < 120:
                break  # still in flight: its client may not be known yet; take it on the next poll
            self._cursor = entry["seq"]
            counts = self.clients.get(entry["client_id"])
            if counts is None:
                self.other[f"{entry['method']} {entry['path'].rsplit('/R4/', 1)[-1]}"] += 1
                continue
            counts.total += 1
            counts.per_second[int(entry["time"])] += 1
            if counts.first_at is None:
                counts.first_at = entry["time"]
            if counts.first_pass_done_at is None and entry["status"] == 200:
                unit = unit_of(entry)
                if unit is not None:
                    counts.covered.add(unit)
                    if len(counts.covered) >= self.units:
                        counts.first_pass_done_at = entry["time"]
                        counts.covered = set()


# -- what a downstream consumer saw: events ---------------------------------------------------------------
class EventWatcher(threading.Thread):
    """One read_committed consumer on every policy's event topics; records each event's digest."""

    def __init__(self, args: argparse.Namespace, topics: dict[str, str]) -> None:
        super().__init__(daemon=True, name="events")
        from confluent_kafka import Consumer
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        self.topics = topics  # topic -> policy
        self.consumer = Consumer(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": f"detection-bench-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self.deserialize = AvroDeserializer(SchemaRegistryClient({"url": args.registry}))
        self.sightings: dict[str, list[Sighting]] = {p: [] for p in set(topics.values())}
        self.undecodable = 0
        self.stopping = threading.Event()
        self.assigned = threading.Event()

    def run(self) -> None:
        from confluent_kafka.serialization import MessageField, SerializationContext

        self.consumer.subscribe(list(self.topics), on_assign=lambda *_: self.assigned.set())
        try:
            while not self.stopping.is_set():
                for message in self.consumer.consume(500, 0.1):
                    seen_at = time.time()
                    if message.error() is not None or message.value() is None:
                        continue
                    topic = message.topic()
                    try:
                        event = self.deserialize(
                            message.value(), SerializationContext(topic, MessageField.VALUE)
                        )
                        digest = digest_of_json(event["resource_json"])
                    except Exception:
                        self.undecodable += 1
                        continue
                    self.sightings[self.topics[topic]].append(
                        Sighting(seen_at, event["resource_type"], event["resource_id"], digest)
                    )
        finally:
            self.consumer.close()


# -- the report -------------------------------------------------------------------------------------------
def fmt(summary: LatencySummary | None) -> str:
    if summary is None:
        return "none"
    return (
        f"p50 {summary.p50:.1f} s  p90 {summary.p90:.1f} s  p95 {summary.p95:.1f} s  "
        f"max {summary.max:.1f} s  (n={summary.count})"
    )


def subset(result: Matching, keep: Any) -> tuple[LatencySummary | None, int, int]:
    """Latency summary, missed and total of the changes `keep(version)` selects."""
    detected = [d.latency_s for d in result.detections if keep(d.version)]
    missed = sum(1 for v in result.missed if keep(v))
    return LatencySummary.of(detected), missed, len(detected) + missed


def report_policy(
    policy: Policy,
    bridge: Bridge,
    result: Matching,
    counts: ClientRequests,
    window: tuple[float, float],
    args: argparse.Namespace,
) -> list[str]:
    total = len(result.detections) + len(result.missed)
    lines = [f"== {policy.name}" + (f" ({policy.note})" if policy.note else "")]
    if bridge.exit_code is not None:
        lines.append(f"   THE BRIDGE EXITED (code {bridge.exit_code}); its log: {bridge.log_path}")
    everything = LatencySummary.of([d.latency_s for d in result.detections])
    lines.append(f"   detection latency, all changes:         {fmt(everything)}")
    first, first_missed, first_total = subset(result, lambda v: v.episode_first)
    lines.append(f"   first change of each episode:           {fmt(first)}")
    lines.append(
        f"   missed at the end: {len(result.missed)} of {total} changes ({first_missed} of {first_total} "
        f"first changes); events matching no change: {len(result.unmatched)}"
    )
    if policy.name == "hinted":
        for label, keep in (("with an HL7 message", True), ("without a message", False)):
            part, missed, n = subset(result, lambda v, keep=keep: v.hl7 == keep)
            lines.append(f"   changes {label + ':':<32} {fmt(part)}; missed {missed} of {n}")
    spent = counts.count_between(*window)
    first_pass = (counts.first_pass_done_at or 0) - (counts.first_at or 0)
    lines.append(
        f"   requests: {spent:,} from the activity's start to the end of the drain "
        f"({spent / max(1.0, window[1] - window[0]):.1f}/s); {counts.total:,} in all, first pass "
        f"{first_pass:.0f} s"
    )
    peak = max(counts.per_second.values(), default=0)
    over = sum(1 for n in counts.per_second.values() if n > args.budget)
    tens: Counter[int] = Counter()
    for second, n in counts.per_second.items():
        tens[second // 10] += n
    lines.append(
        f"   peak requests/s (1 s windows at the simulator): {peak}; budget {args.budget:g}/s exceeded: "
        f"{'YES, in ' + str(over) + ' windows' if over else 'no'}; peak 10 s average "
        f"{max(tens.values(), default=0) / 10:.1f}/s"
    )
    lines.append(f"   bridge peak RSS: {bridge.peak_rss_mb:.0f} MB")
    return lines


def hint_lines(bridge: Bridge, hl7: dict[str, Any] | None, versions: list[Version]) -> list[str]:
    metrics = bridge.hint_metrics()
    wanted = [v for v in versions if v.hl7]
    lines = [
        f"   HL7 feed: {len(wanted)} changes to be sent; simulator sender "
        + json.dumps({k: (hl7 or {}).get(k) for k in ("delivered", "acks", "rejected", "dropped",
                                                      "connect_failures", "last_error")})
    ]  # fmt: skip
    hints = {k: v for k, v in metrics.items() if k.startswith(("epic_bridge_hint", "epic_bridge_hints"))}
    lines.append(
        "   bridge hint metrics: " + (json.dumps(hints, sort_keys=True) if hints else "none exported")
    )
    if wanted and not (hl7 or {}).get("delivered"):
        lines.append(
            "   WARNING: the hinted bridge acknowledged no HL7 message: its figures are adaptive scanning "
            "without hints"
        )
    return lines


# -- the run ------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--policies", default=",".join(ALL_POLICIES), help="comma-separated: " + ", ".join(ALL_POLICIES)
    )
    parser.add_argument("--patients", type=int, default=None, help="roster patients (5000; --quick 300)")
    parser.add_argument("--budget", type=float, default=25.0, help="requests/s of each bridge's connection")
    parser.add_argument("--burst", type=int, default=1, help="rate_limit.burst of each bridge")
    parser.add_argument("--seed", type=int, default=1, help="the simulator's data and activity")
    parser.add_argument("--changes", type=int, default=None, help="stop the activity after this many (1000)")
    parser.add_argument("--duration", type=float, default=None, help="stop the activity after S seconds")
    parser.add_argument(
        "--speed", type=float, default=None, help="activity speed (1 = real time; --quick 30)"
    )
    parser.add_argument(
        "--max-staleness",
        type=float,
        default=None,
        help="adaptive source.max_staleness_s (3600; --quick 600; 0: the bridge's default)",
    )
    parser.add_argument(
        "--drain", type=float, default=None, help="drain at most S seconds (default: see above)"
    )
    parser.add_argument("--hl7-share", type=float, default=0.8, help="share of changes with an HL7 message")
    parser.add_argument("--hl7-delay", default="1-3", help="seconds from a change to its message, A-B")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 patients, speed 30, 5 minutes")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, ground truth)")
    env = os.environ.get
    parser.add_argument(
        "--bootstrap",
        default=env("EPIC_BRIDGE_KAFKA_BOOTSTRAP") or env("KAFKA_BOOTSTRAP") or "127.0.0.1:9092",
    )
    registry = env("EPIC_BRIDGE_SCHEMA_REGISTRY_URL") or env("SCHEMA_REGISTRY_URL")
    parser.add_argument("--registry", default=registry or "http://127.0.0.1:8081/apis/ccompat/v7")
    args = parser.parse_args()
    quick = args.quick
    args.patients = args.patients or (300 if quick else 5000)
    args.speed = args.speed if args.speed is not None else (30.0 if quick else 1.0)
    if args.max_staleness is None:
        args.max_staleness = 600.0 if quick else 3600.0
    if args.changes is None and args.duration is None:
        args.changes, args.duration = (None, 300.0) if quick else (1000, None)
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = set(args.policies) - set(ALL_POLICIES)
    if unknown or not args.policies:
        parser.error(
            f"--policies takes {', '.join(ALL_POLICIES)}, not {', '.join(sorted(unknown)) or 'nothing'}"
        )
    return args


class Run:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.run_id = uuid.uuid4().hex[:8]
        self.policies: list[Policy] = []
        self.skipped: dict[str, str] = {}
        self.bridges: dict[str, Bridge] = {}
        self.failed: dict[str, str] = {}
        self.sim: Simulator | None = None

    # -- set-up -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        args = self.args
        hinted_port = free_port() if "hinted" in args.policies else None
        sim = Simulator(args, self.work, None)
        jwks: dict[str, dict[str, Any]] = {}
        for name in args.policies:
            policy = Policy(
                name,
                client_id=f"detect-{name}-{self.run_id}",
                prefix=f"bench.detect-{self.run_id}.{name}",
                mllp_port=hinted_port if name == "hinted" else None,
                config_dir=self.work / f"config-{name}",
            )
            why, jwks[name] = write_configs(policy, args)
            if why is not None:
                self.skipped[name] = f"the bridge rejects its config: {why}"
                log(f"{name}: SKIPPED, {self.skipped[name]}")
                continue
            self.policies.append(policy)
        if not self.policies:
            raise SystemExit("no policy can run on this bridge")
        if any(p.name == "hinted" for p in self.policies):
            sim.hl7_target = f"127.0.0.1:{hinted_port}"
        log(f"starting the simulator: {args.patients} patients, seed {args.seed}, episodes model (paused)")
        started = time.monotonic()
        sim.start()
        self.sim = sim
        for policy in self.policies:
            policy.doc["fhir_base_url"] = sim.fhir_base
            if problems := save_config(policy):
                raise SystemExit(f"{policy.name}: the bridge rejects its config: {'; '.join(problems)}")
            sim.register(policy.client_id, jwks[policy.name])
        log(f"simulator ready in {time.monotonic() - started:.0f} s; starting {len(self.policies)} bridge(s)")
        for policy in self.policies:
            self.bridges[policy.name] = Bridge(policy, args, self.work)

    def event_topics(self) -> dict[str, str]:
        from bridge.kafka.topics import events_topic

        return {events_topic(p.prefix, p.name, r.lower()): p.name for p in self.policies for r in RESOURCES}

    def wait_for_topics(self, topics: Iterable[str]) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.args.bootstrap})
        wanted = set(topics)
        deadline = time.monotonic() + 300
        while not wanted <= set(admin.list_topics(timeout=30).topics):
            self.check_bridges("start-up")
            if time.monotonic() > deadline:
                raise SystemExit("the bridges did not create their event topics within 5 minutes")
            time.sleep(1)

    def check_bridges(self, phase: str) -> None:
        for name, bridge in self.bridges.items():
            if name not in self.failed and not bridge.alive():
                self.failed[name] = f"the bridge exited with code {bridge.exit_code} during the {phase}"
                log(f"{name}: {self.failed[name]}; its log ends:\n{bridge.log_tail()}")
        if len(self.failed) == len(self.bridges):
            raise SystemExit("every bridge exited")

    def drop_policies_not_in_effect(self) -> None:
        """A bridge that accepted a policy's config but does not run it would measure another policy."""
        for policy in list(self.running()):
            why = self.bridges[policy.name].not_in_effect()
            if why is not None:
                log(f"{policy.name}: SKIPPED, {why}")
                self.skipped[policy.name] = why
                self.bridges.pop(policy.name).stop()
                self.policies.remove(policy)
        if not self.policies:
            raise SystemExit("no policy runs on this bridge")

    def running(self) -> list[Policy]:
        return [p for p in self.policies if p.name not in self.failed]

    # -- phases -------------------------------------------------------------------------------------
    def first_pass(self, watcher: RequestWatcher) -> float:
        """Wait until every bridge searched every unit once; returns the slowest first pass (s)."""
        args = self.args
        sweep = len(UNIT_KINDS) * args.patients / args.budget
        deadline = time.monotonic() + 3 * sweep + 300
        last_note = 0.0
        while True:
            self.check_bridges("first pass")
            waiting = [p for p in self.running() if watcher.clients[p.client_id].first_pass_done_at is None]
            if not waiting:
                break
            if time.monotonic() > deadline:
                for p in waiting:
                    self.failed[p.name] = f"its first pass did not finish within {3 * sweep + 300:.0f} s"
                    log(f"{p.name}: {self.failed[p.name]}")
                    self.bridges[p.name].stop()
                if not self.running():
                    raise SystemExit("no bridge finished its first pass")
                break
            if time.monotonic() - last_note > 60:
                last_note = time.monotonic()
                state = ", ".join(
                    f"{p.name} {len(watcher.clients[p.client_id].covered):,}/{watcher.units:,}"
                    for p in waiting
                )
                log(f"first pass (searches of distinct patient x resource x category): {state}")
            time.sleep(1)
        passes = [
            (c.first_pass_done_at or 0) - (c.first_at or 0)
            for p in self.running()
            for c in [watcher.clients[p.client_id]]
        ]
        time.sleep(10)  # let the last batches commit (source.batch_max_seconds is 5 s)
        return max(passes)

    def activity(self, events: EventWatcher) -> tuple[float, float]:
        """Run the activity until enough changes or time; returns (wall start, wall end)."""
        args, sim = self.args, self.sim
        assert sim is not None
        sim.put("/admin/activity", {"speed": args.speed})
        start = time.time()
        log(
            f"activity started at speed {args.speed:g}; until "
            + (f"{args.changes} changes" if args.changes else "")
            + (" or " if args.changes and args.duration else "")
            + (f"{args.duration:.0f} s" if args.duration else "")
        )
        last_note = time.monotonic()
        while True:
            time.sleep(2)
            self.check_bridges("activity")
            stats = sim.get("/admin/activity")
            elapsed = time.time() - start
            if (args.changes and stats["total"] >= args.changes) or (
                args.duration and elapsed >= args.duration
            ):
                break
            if time.monotonic() - last_note >= 60:
                last_note = time.monotonic()
                seen = ", ".join(f"{p} {len(s)}" for p, s in events.sightings.items())
                log(
                    f"activity {elapsed:.0f} s: {stats['total']} changes (lag {stats['lag_s']:.1f} s); "
                    f"events {seen}"
                )
        stats = sim.put("/admin/activity", {"speed": 0})
        end = time.time()
        log(f"activity paused after {end - start:.0f} s: {stats['total']} changes {stats['changes']}")
        return start, end

    def drain(self, events: EventWatcher, limit_s: float) -> float:
        """Until every running policy detected every change, or `limit_s`; returns the drain's end."""
        assert self.sim is not None
        versions = [Version.from_record(r) for r in self.sim.ground_truth()]
        began = time.monotonic()
        log(f"draining (at most {limit_s:.0f} s) until every policy has detected all {len(versions)} changes")
        last_note = began
        while time.monotonic() - began < limit_s:
            time.sleep(5)
            self.check_bridges("drain")
            missing = {
                p.name: len(match(versions, list(events.sightings[p.name])).missed) for p in self.running()
            }
            if not any(missing.values()):
                log(f"every change detected after {time.monotonic() - began:.0f} s of drain")
                break
            if time.monotonic() - last_note >= 60:
                last_note = time.monotonic()
                log(f"drain {time.monotonic() - began:.0f} s: still undetected {missing}")
        return time.time()

    def cleanup(self) -> None:
        for bridge in self.bridges.values():
            bridge.stop()
        if self.sim is not None:
            self.sim.stop()
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.args.bootstrap})
        prefix = f"bench.detect-{self.run_id}."
        try:
            names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
            if names:
                for future in admin.delete_topics(names, operation_timeout=60).values():
                    future.result()
        except Exception as exc:
            print(f"could not delete the benchmark's topics ({prefix}*): {exc}", file=sys.stderr)


def main() -> int:
    args = parse_args()
    header = describe_machine(args.bootstrap, args.registry)
    for line in header:
        print(line, flush=True)
    work = Path(tempfile.mkdtemp(prefix="detection-bench-"))
    run = Run(args, work)
    try:
        run.prepare()
        assert run.sim is not None
        roster = run.sim.roster()
        watcher = RequestWatcher(run.sim, [p.client_id for p in run.policies], len(roster) * len(UNIT_KINDS))
        watcher.start()
        topics = run.event_topics()
        run.wait_for_topics(topics)
        events = EventWatcher(args, topics)
        events.start()
        slowest_pass = run.first_pass(watcher)
        run.drop_policies_not_in_effect()
        events.assigned.wait(60)
        log(f"every bridge finished its first pass (slowest {slowest_pass:.0f} s)")
        window_start, activity_end = run.activity(events)
        if args.drain is not None:
            drain_limit = args.drain
        else:
            staleness = args.max_staleness if any(p.adaptive for p in run.running()) else 0
            drain_limit = max(1.5 * slowest_pass, staleness) + 60
        window_end = run.drain(events, drain_limit)
        for bridge in run.bridges.values():
            bridge.sample_rss()
        activity = run.sim.get("/admin/activity")
        records = run.sim.ground_truth()
        hint_report = (
            hint_lines(run.bridges["hinted"], activity.get("hl7"), [Version.from_record(r) for r in records])
            if "hinted" in run.bridges
            else []
        )
        events.stopping.set()
        watcher.stopping.set()
        events.join(30)
        watcher.join(30)
    finally:
        run.cleanup()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    versions = [Version.from_record(r) for r in records]
    sources = Counter(str(r.get("source")) for r in records)
    print()
    print("\n".join(header))
    print(
        f"setup: {args.patients} roster patients, seed {args.seed}, Epic profile; per bridge {args.budget:g} "
        f"requests/s (burst {args.burst}), {len(UNIT_KINDS)} searches per patient per full pass; "
        f"activity speed {args.speed:g}"
        + (
            f"; adaptive max staleness {args.max_staleness:.0f} s"
            if any(p.adaptive for p in run.policies)
            else ""
        )
    )
    print(
        f"activity: {len(versions)} changes ({', '.join(f'{k} {v}' for k, v in sorted(sources.items()))}; "
        f"{sum(v.episode_first for v in versions)} first of their episode) in "
        f"{activity_end - window_start:.0f} s; "
        f"drain {window_end - activity_end:.0f} s (limit {drain_limit:.0f} s); slowest first pass "
        f"{slowest_pass:.0f} s"
    )
    if events.undecodable:
        print(f"events that could not be decoded: {events.undecodable}")
    if watcher.other:
        named = ", ".join(f"{n} x {what}" for what, n in watcher.other.most_common(5))
        print(f"requests naming no client (no Epic-Client-ID, no token): {named}")
    for name, why in run.skipped.items():
        print(f"== {name}: SKIPPED, {why}")
    figures: dict[str, Matching] = {}
    for policy in run.policies:
        result = match(versions, events.sightings[policy.name])
        figures[policy.name] = result
        counts = watcher.clients[policy.client_id]
        lines = report_policy(
            policy, run.bridges[policy.name], result, counts, (window_start, window_end), args
        )
        if policy.name in run.failed:
            lines.insert(1, f"   FAILED: {run.failed[policy.name]}")
        if policy.name == "hinted":
            lines += hint_report
        print("\n".join(lines))

    def figure(name: str, q: str, keep: Any = None) -> str:
        result = figures.get(name)
        if result is None or name in run.failed:
            return "n/a"
        latencies = [d.latency_s for d in result.detections if keep is None or keep(d.version)]
        summary = LatencySummary.of(latencies)
        return "n/a" if summary is None else f"{getattr(summary, q):.1f}"

    for name in ("uniform", "adaptive"):
        for q in ("p50", "p90", "p95"):
            print(f"{name} {q}: {figure(name, q)} s")
    if "hinted" in figures:
        print(f"hinted p95: {figure('hinted', 'p95', lambda v: v.hl7)} s")
    return 1 if run.skipped or run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
