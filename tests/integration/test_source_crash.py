"""Crash safety of `epic-bridge run`: SIGKILL at random moments of a multi-page snapshot, restart,
and the topics end up holding every change exactly once; SIGTERM and Ctrl-C stop cleanly; a second
process stands by and takes over; a process sharing another's instance id steps aside."""

from __future__ import annotations

import collections
import random
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from process_support import BridgeProcess, readyz, wait_for
from source_support import (
    RESOURCES,
    connection_config,
    read_all_events,
    sim_read,
    sim_resources,
    sim_update,
    topic_of,
)

from bridge.config.models import ConnectionConfig
from bridge.source.fingerprint import fingerprint

pytestmark = pytest.mark.integration


def expected_fingerprints(sim: Any) -> dict[tuple[str, str], str]:
    return {(r, rid): fingerprint(sim_read(sim, r, rid)) for r in RESOURCES for rid in sim_resources(sim, r)}


def events_by_resource(
    kafka_bootstrap: str, registry: SchemaRegistryClient, cfg: ConnectionConfig, expect: int = 0
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    found = read_all_events(kafka_bootstrap, registry, [topic_of(cfg, r) for r in RESOURCES], expect)
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for events in found.values():
        for e in events:
            grouped[(e["resource_type"], e["resource_id"])].append(e)
    return grouped


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    sim = epic_sim_factory(profile="epic", patients=24, seed=5)  # ~1000 resources, short pages on
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    cfg = connection_config(
        sim,
        config_dir,
        name="crash",
        prefix=unique_name("src"),
        initial_sync="snapshot",
        # pages of 4 and commits every 25 resources: a full sync is hundreds of pages and dozens of
        # transactions, so kills land mid-page, mid-batch, mid-commit and during start-up
        source={"page_size": 4, "batch_max_resources": 25, "batch_max_seconds": 1},
    )
    rng = random.Random(20261125)
    bridge = BridgeProcess(config_dir, bridge_env, tmp_path / "bridge.log")
    processes.append(bridge)
    updated: list[tuple[str, str]] = []
    kills = terms = 0
    while kills < 20:
        offset = bridge.log.stat().st_size if bridge.log.exists() else 0
        bridge.start()
        if (kills + terms) % 5 == 4:
            # a graceful stop mid-sync (once it polls): the open batch is committed, the process exits 0
            wait_for(
                lambda at=offset: "polling Patient" in bridge.log.read_text()[at:],
                60,
                "the bridge to start polling",
            )
            time.sleep(rng.uniform(0.2, 2.0))
            started = time.monotonic()
            assert bridge.terminate() == 0, (tmp_path / "bridge.log").read_text()[-3000:]
            assert time.monotonic() - started < 30
            terms += 1
            continue
        time.sleep(rng.uniform(0.3, 4.0))
        bridge.kill()
        kills += 1
        if kills % 5 == 0:
            # the hospital keeps working while the bridge is down
            rtype = RESOURCES[kills // 5 % len(RESOURCES)]
            rid = sim_resources(sim, rtype)[kills]
            resource = sim_read(sim, rtype, rid)
            resource["meta"] = {"security": [{"code": f"crash-{kills}"}]}
            sim_update(sim, resource)
            updated.append((rtype, rid))
        if kills % 7 == 0:  # lose the local caches now and then: rebuilt from the compacted topics
            shutil.rmtree(tmp_path / "state", ignore_errors=True)
    assert terms >= 4

    # the last start runs to the end of a full cycle, then stops on SIGTERM
    expected = expected_fingerprints(sim)
    bridge.start()

    def complete() -> bool:
        grouped = events_by_resource(kafka_bootstrap, schema_registry, cfg)
        return all(grouped.get(key) and grouped[key][-1]["fingerprint"] == fp for key, fp in expected.items())

    wait_for(complete, 240, "every resource's current content on the topics")
    time.sleep(3)  # one more poll cycle (interval 1 s): must add nothing
    assert bridge.terminate() == 0, (tmp_path / "bridge.log").read_text()[-3000:]

    grouped = events_by_resource(kafka_bootstrap, schema_registry, cfg)
    assert set(grouped) == set(expected)
    for key, events in grouped.items():
        triggers = [e["trigger"] for e in events]
        pairs = [e["fingerprint"] for e in events]
        assert triggers[0] == "CREATED" and triggers.count("CREATED") == 1, (key, triggers)
        assert len(pairs) == len(set(pairs)), f"{key}: a change was published twice"
        assert len({e["event_id"] for e in events}) == len(events)
        assert events[-1]["fingerprint"] == expected[key]
        assert len(events) <= (2 if key in updated else 1), (key, triggers)
    log = (tmp_path / "bridge.log").read_text()
    assert log.count("SIGTERM: finishing the open batches") == terms + 1
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:3000]


def test_sigterm_stops_promptly_even_while_the_server_is_slow(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    """Every Observation search takes 30 s: SIGTERM must not wait for it. The other tasks' batches are
    committed, the process exits 0, and a restart completes the sync with nothing published twice."""
    sim = epic_sim_factory(profile="epic", patients=3, seed=6)
    sim.set_faults(rules=[{"kind": "latency", "latency_ms": 30000, "resource": "Observation"}])
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    cfg = connection_config(sim, config_dir, name="slow", prefix=unique_name("src"), initial_sync="snapshot")
    bridge = BridgeProcess(config_dir, bridge_env, tmp_path / "bridge.log")
    processes.append(bridge)
    bridge.start()
    wait_for(
        lambda: "slow/encounter: cycle 2" in bridge.log.read_text(), 60, "the fast tasks to finish a cycle"
    )
    # the process's HTTP port: JWKS, /metrics, /healthz
    url = re.search(r"serving (http://[0-9.]+:[0-9]+)", bridge.log.read_text())
    assert url is not None
    metrics = httpx.get(url.group(1) + "/metrics", timeout=10).text
    assert 'epic_bridge_polls_total{connection="slow",resource="encounter",result="ok"}' in metrics
    assert 'epic_bridge_events_total{connection="slow",resource="encounter",trigger="CREATED"}' in metrics
    assert httpx.get(url.group(1) + "/healthz", timeout=10).status_code == 200
    started = time.monotonic()
    assert bridge.terminate(timeout_s=30) == 0, bridge.log.read_text()[-3000:]
    assert time.monotonic() - started < 10
    before = events_by_resource(kafka_bootstrap, schema_registry, cfg)
    assert not any(rtype == "Observation" for rtype, _ in before)

    sim.clear_faults()
    expected = expected_fingerprints(sim)
    bridge.start()

    def complete() -> bool:
        return set(events_by_resource(kafka_bootstrap, schema_registry, cfg)) == set(expected)

    wait_for(complete, 120, "the restarted sync")
    assert bridge.terminate() == 0
    grouped = events_by_resource(kafka_bootstrap, schema_registry, cfg)
    assert all([e["trigger"] for e in v] == ["CREATED"] for v in grouped.values())


def two_processes(
    config_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
    processes: list[BridgeProcess],
    instance: str | None,
) -> tuple[BridgeProcess, BridgeProcess]:
    """Two `epic-bridge run` on the same configs, with their own state; the second with `instance` as its
    instance id (None: the same as the first)."""
    second_env = {**env, "EPIC_BRIDGE_STATE_DIR": str(tmp_path / "s2")}
    if instance is not None:
        second_env["EPIC_BRIDGE_INSTANCE_ID"] = instance
    pair = (
        BridgeProcess(config_dir, env, tmp_path / "first.log"),
        BridgeProcess(config_dir, second_env, tmp_path / "second.log"),
    )
    processes += pair
    return pair


def wait_for_an_update(
    bootstrap: str, registry: SchemaRegistryClient, cfg: ConnectionConfig, who: str
) -> None:
    wait_for(
        lambda: any(
            e["trigger"] == "UPDATED"
            for v in events_by_resource(bootstrap, registry, cfg).values()
            for e in v
        ),
        60,
        f"{who} to publish the change",
    )


def cancel_an_encounter(sim: Any) -> None:
    sim_update(sim, {**sim_read(sim, "Encounter", sim_resources(sim, "Encounter")[0]), "status": "cancelled"})


def test_a_second_process_stands_by_and_takes_over_at_once_on_sigterm(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    """Two processes on the same config: one owns the connection, the other says on /readyz that it
    stands by. SIGTERM to the owner commits its batches, leaves the group, and the standby takes over
    within seconds (not a session timeout): nothing is published twice, nothing missed."""
    sim = epic_sim_factory(profile="epic", patients=3, seed=8)
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    cfg = connection_config(sim, config_dir, name="dup", prefix=unique_name("src"), initial_sync="snapshot")
    first, second = two_processes(config_dir, bridge_env, tmp_path, processes, "second-instance")
    first.start()
    wait_for(lambda: "dup/encounter: cycle 2" in first.log.read_text(), 60, "the first process to poll")
    second.start()
    wait_for(lambda: "joining the group" in second.log.read_text(), 60, "the second process to join")
    wait_for(lambda: readyz(second.log).status_code == 200, 30, "the second process to be ready")
    ready = readyz(second.log)
    assert ready.status_code == 200 and "another instance owns this connection" in ready.text, ready.text
    assert "polling" not in second.log.read_text()

    expected = expected_fingerprints(sim)
    started = time.monotonic()
    assert first.terminate() == 0
    wait_for(lambda: "dup/encounter: cycle" in second.log.read_text(), 30, "the takeover")
    assert time.monotonic() - started < 6, "the handover waited for a session timeout"
    cancel_an_encounter(sim)
    wait_for_an_update(kafka_bootstrap, schema_registry, cfg, "the second process")
    assert second.terminate() == 0
    grouped = events_by_resource(kafka_bootstrap, schema_registry, cfg)
    assert set(grouped) == set(expected)
    assert sum(len(v) for v in grouped.values()) == len(expected) + 1  # nothing twice


def test_a_killed_owner_is_replaced_within_the_session_timeout(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    """SIGKILL the owner in the middle of its snapshot: the standby resumes from the last committed
    cursor once the session timed out (6 s here), and every resource is published exactly once."""
    sim = epic_sim_factory(profile="epic", patients=12, seed=10)
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    cfg = connection_config(
        sim, config_dir, name="kill", prefix=unique_name("src"), initial_sync="snapshot",
        source={"page_size": 3, "batch_max_resources": 20, "batch_max_seconds": 1},
    )  # fmt: skip
    first, second = two_processes(config_dir, bridge_env, tmp_path, processes, "standby")
    first.start()
    wait_for(lambda: "committed" in first.log.read_text(), 60, "the first commits")
    second.start()
    wait_for(lambda: "joining the group" in second.log.read_text(), 60, "the second process to join")
    wait_for(lambda: "standby" in readyz(second.log).text, 30, "the second process to stand by")
    first.kill()
    killed = time.monotonic()
    wait_for(lambda: "took over kill" in second.log.read_text(), 60, "the takeover")
    # the session timeout (6 s) plus the time to settle the killed process's open transaction
    assert time.monotonic() - killed < 6 + 10 + 5
    expected = expected_fingerprints(sim)

    def complete() -> bool:
        grouped = events_by_resource(kafka_bootstrap, schema_registry, cfg)
        return all(grouped.get(key) and grouped[key][-1]["fingerprint"] == fp for key, fp in expected.items())

    wait_for(complete, 180, "every resource on the topics")
    assert second.terminate() == 0
    grouped = events_by_resource(kafka_bootstrap, schema_registry, cfg)
    assert set(grouped) == set(expected)
    assert all([e["trigger"] for e in events] == ["CREATED"] for events in grouped.values()), (
        "published twice"
    )


def test_a_process_started_with_another_ones_instance_id_steps_aside(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    """Two processes with the same EPIC_BRIDGE_INSTANCE_ID share one transactional.id: the newer one
    fences the older, which then commits nothing, leaves the group (so the newer gets the work), stays up
    without crash-looping and says why on /readyz. Nothing is published twice."""
    sim = epic_sim_factory(profile="epic", patients=3, seed=8)
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    cfg = connection_config(sim, config_dir, name="twin", prefix=unique_name("src"), initial_sync="snapshot")
    old, new = two_processes(config_dir, bridge_env, tmp_path, processes, None)
    old.start()
    wait_for(lambda: "twin/encounter: cycle 2" in old.log.read_text(), 60, "the first process to poll")
    new.start()
    wait_for(lambda: "commits nothing any more" in old.log.read_text(), 60, "the older process to be fenced")
    wait_for(lambda: "twin/encounter: cycle" in new.log.read_text(), 60, "the newer process to take the work")
    assert old.proc is not None and old.proc.poll() is None  # alive, not crash-looping
    ready = readyz(old.log)
    assert ready.status_code == 503 and "another process uses the instance id" in ready.text, ready.text

    expected = expected_fingerprints(sim)
    cancel_an_encounter(sim)
    wait_for_an_update(kafka_bootstrap, schema_registry, cfg, "the newer process")
    assert new.terminate() == 0
    assert old.terminate() == 0
    grouped = events_by_resource(kafka_bootstrap, schema_registry, cfg)
    assert set(grouped) == set(expected)
    assert sum(len(v) for v in grouped.values()) == len(expected) + 1  # nothing twice


def test_ctrl_c_during_per_patient_scans_is_a_clean_stop(
    epic_sim_factory: Callable[..., Any],
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole process group, and a supervising script (like
    `make run`) forwards its own SIGTERM right after. That is one stop request: while searches are in
    flight, page after page, the open batches are committed and the process exits 0, never "stopped by
    an unexpected error"."""
    sim = epic_sim_factory(profile="epic", patients=12, seed=9)
    sim.set_faults(rules=[{"kind": "latency", "latency_ms": 20, "method": "GET"}])
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    connection_config(
        sim, config_dir, name="ctrlc", prefix=unique_name("src"), initial_sync="snapshot",
        source={"page_size": 2, "batch_max_resources": 10, "batch_max_seconds": 1},
    )  # fmt: skip
    bridge = BridgeProcess(config_dir, bridge_env, tmp_path / "bridge.log")
    processes.append(bridge)
    rng = random.Random(7)
    for stop in range(10):
        offset = bridge.log.stat().st_size if bridge.log.exists() else 0
        bridge.start()
        wait_for(lambda at=offset: "polling Observation" in bridge.log.read_text()[at:], 60, "the poll tasks")
        time.sleep(rng.uniform(0.0, 1.5))
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        bridge.proc.send_signal(signal.SIGTERM)
        code = bridge.proc.wait(timeout=60)
        text = bridge.log.read_text()[offset:]
        assert code == 0 and "unexpected error" not in text and "Traceback" not in text, (stop, text[-4000:])
