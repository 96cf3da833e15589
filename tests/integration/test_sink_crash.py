"""SIGKILL the real `epic-bridge run --only sink` process at random moments while 1000+ commands flow
(more than half of them creates), restart it each time, and check: every command record has exactly one
result, and no resource was created twice in the simulator."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sink_support import LOINC, SinkHarness, write_connection

from bridge.sink.identity import MARKER_SYSTEM
from bridge.sink.service import SinkTopics

pytestmark = pytest.mark.integration

KILLS = 10
MIN_KILLS = 6
SSN = "urn:oid:2.16.840.1.113883.4.1"
EPIC_BRIDGE = str(Path(sys.executable).parent / "epic-bridge")


def bp(patient: str, minute: int) -> dict[str, Any]:
    at = dt.datetime(2032, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minute)
    return {
        "patient_id": patient,
        "code": {"system": LOINC, "code": "85354-9"},
        "components": [
            {"code": {"system": LOINC, "code": "8480-6"}, "value_quantity": 120.0, "value_unit": "mm[Hg]"},
            {"code": {"system": LOINC, "code": "8462-4"}, "value_quantity": 80.0, "value_unit": "mm[Hg]"},
        ],
        "effective_at": at,
    }


def plan(patients: list[str], rng: random.Random) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(resource type, key, record): 1010 records, 650 of which create something."""
    records: list[tuple[str, bytes, dict[str, Any]]] = []
    for i in range(300):
        records.append(
            ("Patient", f"new-{i}".encode(), {"action": "CREATE", "fields": {"family_name": f"Crash{i}"}})
        )
    for i in range(250):
        patient = patients[i % len(patients)]
        records.append(("Observation", patient.encode(), {"action": "CREATE", "fields": bp(patient, i)}))
    for i in range(250):
        patient = patients[i % len(patients)]
        records.append(("Patient", patient.encode(), {"action": "FIND", "criteria": {"_id": patient}}))
    for i in range(150):
        number = f"900-00-{i % 100:04d}"  # 100 distinct people; 50 of them asked for twice
        records.append(
            (
                "Patient",
                number.encode(),  # same key: the second ensure runs after the first
                {
                    "action": "ENSURE",
                    "criteria": {"identifier": f"{SSN}|{number}"},
                    "fields": {
                        "family_name": f"Ensure{i % 100}",
                        "identifiers": [{"system": SSN, "value": number}],
                    },
                },
            )
        )
    for record in records:
        record[2]["command_id"] = uuid.uuid4().hex
    rng.shuffle(records)
    resent = [(t, k, dict(r)) for t, k, r in rng.sample(records, 60)]  # redelivered / re-sent records
    return records + resent


class BridgeProcess:
    def __init__(self, config_dir: Path, state_dir: Path, env: dict[str, str], log: Path) -> None:
        self.args = [
            EPIC_BRIDGE, "--config-dir", str(config_dir), "--state-dir", str(state_dir),
            "--log-level", "INFO", "run", "--only", "sink",
        ]  # fmt: skip
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, (
            f"the bridge exited by itself ({self.proc.returncode}); see {self.log}"
        )
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


@pytest.mark.timeout(420)
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    epic_sim_factory: Any, kafka_bootstrap: str, registry_url: str, schema_registry: Any, tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261125")))
    sim = epic_sim_factory(profile="epic", patients=20, seed=3)
    actions = {"actions": ["create", "find"], "triggers": []}
    config_dir = tmp_path / "configs"
    config = write_connection(
        sim,
        config_dir,
        "crash",
        resources={"Patient": actions, "Observation": actions},
        # a command's deadline bounds its create's promise, which a restarted process waits out before
        # it searches for an interrupted create: short here, so ten restarts fit the test's time
        sink={"max_batch": 40, "concurrency": 8, "command_deadline_s": 15, "ambiguous_settle_s": 0.2},
        rate_limit={"requests_per_second": 1000, "burst": 200},
    )
    # A little latency widens the window between Epic's 201 and the committed result, so kills land in it.
    sim.set_faults(rules=[{"kind": "latency", "latency_ms": 15, "method": "GET"}])
    patients = sim.sim.store.ids("Patient", limit=20)
    patients_before = sim.stats()["counts"]["Patient"]
    env = {
        **os.environ,
        "EPIC_BRIDGE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "EPIC_BRIDGE_SCHEMA_REGISTRY_URL": registry_url,
        "EPIC_BRIDGE_INSTANCE_ID": f"crash-{uuid.uuid4().hex[:8]}",  # the same across restarts, like a pod
        "EPIC_BRIDGE_HTTP_PORT": "0",  # metrics/health on a free port
        # a restarted process waits for its killed predecessor's group session to expire
        "EPIC_BRIDGE_SESSION_TIMEOUT_S": "6",
        "EPIC_BRIDGE_HEARTBEAT_INTERVAL_S": "2",
    }
    bridge = BridgeProcess(config_dir, tmp_path / "state", env, tmp_path / "bridge.log")
    harness = SinkHarness(config, kafka_bootstrap, schema_registry)
    records = plan(patients, rng)
    sent = Counter(r["command_id"] for _, _, r in records)
    try:
        bridge.start()
        _wait_for_topics(harness, SinkTopics.of(config), bridge)
        producer = threading.Thread(target=_produce, args=(harness, records), daemon=True)
        producer.start()

        def answered() -> int:
            harness.collect(0.5)
            return sum(min(len(harness.results.get(c, [])), n) for c, n in sent.items())

        kills = 0
        deadline = time.monotonic() + 360
        while answered() < len(records):
            assert time.monotonic() < deadline, f"{answered()} of {len(records)} answered; see {bridge.log}"
            if kills < KILLS:
                if kills % 4 == 3:  # now and then during start-up (ledger catch-up, group join)
                    _collect_for(harness, rng.uniform(0.2, 2.0))
                else:  # mostly mid-flow: once this process has answered something
                    before, started = answered(), time.monotonic()
                    while answered() == before and time.monotonic() - started < 30:
                        pass
                    _collect_for(harness, rng.uniform(0.0, 1.5))
                bridge.kill()
                kills += 1
                bridge.start()
        producer.join(30)
        harness.flush()
        time.sleep(2)
        harness.collect(1.0)
    finally:
        bridge.stop()
        harness.close()

    assert kills >= MIN_KILLS and bridge.starts == kills + 1
    # 1. every record has exactly one result
    got = Counter({c: len(rs) for c, rs in harness.results.items()})
    assert got == sent, {c: (sent[c], got[c]) for c in set(sent) | set(got) if sent[c] != got[c]}
    originals = [rs[0] for rs in harness.results.values()]
    assert all(r["replayed"] is False for r in originals)
    statuses = Counter(r["status"] for r in originals)
    assert statuses == Counter({"SUCCEEDED": len(sent)}), [r["error"] for r in originals if r["error"]]
    for command_id, results in harness.results.items():
        assert all(r["resource_ids"] == results[0]["resource_ids"] for r in results), command_id
    # 2. nothing was created twice
    by_type = {r["command_id"]: (t, r) for t, _, r in records}
    created = [r for r in originals if r["effect"] == "CREATED"]
    for result in created:
        rtype, _ = by_type[result["command_id"]]
        marked = _with_marker(sim, rtype, f"crash/{result['command_id']}")
        assert marked == result["resource_ids"], (result["command_id"], marked)
    ensures = Counter(r["criteria"]["identifier"] for _, _, r in records if r["action"] == "ENSURE")
    for identifier in ensures:
        system, value = identifier.split("|")
        holders = sim.sim.store.scalar(
            "SELECT count(*) FROM idents WHERE type='Patient' AND system=? AND value=?", (system, value)
        )
        assert holders == 1, identifier
    assert sim.stats()["counts"]["Patient"] == patients_before + 300 + 100
    creates = Counter(by_type[r["command_id"]][0] for r in created)
    assert creates == Counter({"Patient": 400, "Observation": 250})
    log = bridge.log.read_text(errors="replace")
    recovered = log.count("had gone through")
    summary = (
        f"{len(records)} records, {kills} SIGKILLs, results {dict(statuses)}, created {dict(creates)}, "
        f"{log.count('was interrupted; searching first')} interrupted creates searched for, "
        f"{recovered} of them found already created"
    )
    print(f"\ncrash test: {summary}")


def _collect_for(harness: SinkHarness, seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        harness.collect(0.1)


def _wait_for_topics(harness: SinkHarness, topics: SinkTopics, bridge: BridgeProcess) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": harness.bootstrap})
    wanted = {*topics.commands, topics.results, topics.dlq}
    deadline = time.monotonic() + 60
    while not wanted <= set(admin.list_topics(timeout=10).topics):
        assert bridge.proc is not None and bridge.proc.poll() is None, f"the bridge exited; see {bridge.log}"
        assert time.monotonic() < deadline, "the bridge did not create its topics"
        time.sleep(0.2)


def _produce(harness: SinkHarness, records: list[tuple[str, bytes, dict[str, Any]]]) -> None:
    for index, (rtype, key, record) in enumerate(records):
        harness.send_raw(rtype, harness.encode(rtype, record), key=key)
        if index % 50 == 49:
            harness.flush()
            time.sleep(1.0)  # a steady flow, so kills land while commands arrive
    harness.flush()


def _with_marker(sim: Any, rtype: str, marker: str) -> list[str]:
    rows = sim.sim.store.query(
        "SELECT seq, type, id, version, last_updated, json FROM resources WHERE seq IN "
        "(SELECT seq FROM idents WHERE type=? AND system=? AND value=?)",
        (rtype, MARKER_SYSTEM, marker),
    )
    return [str(r.id) for r in rows]
