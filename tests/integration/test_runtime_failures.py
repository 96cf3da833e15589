"""Failures stay small in `epic-bridge run`: one connection's broken task, a connection that cannot be
opened at all, or Kafka away at start-up, neither stops the process nor the other connections, and
/readyz and /metrics say what is wrong."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from process_support import BridgeProcess, readyz, wait_for
from source_support import RESOURCES, connection_config, sim_read, sim_resources, sim_update
from tcp_proxy import TcpProxy
from test_source_crash import events_by_resource

pytestmark = pytest.mark.integration


def metrics_of(log: Path) -> str:
    url = readyz(log).url.copy_with(path="/metrics")
    return httpx.get(url, timeout=10).text


def test_a_failing_task_restarts_alone_while_everything_else_goes_on(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    """Two connections in one process: `good`, and `poisoned`, whose server holds an appointment the
    bridge cannot encode (minutesDuration beyond Avro's int). The process stays up, `good` and the rest
    of `poisoned` publish everything, the appointment task restarts with backoff (counted, and named on
    /readyz) and recovers once the data is fixed."""
    good_sim = epic_sim_factory(profile="epic", patients=2, seed=21)
    bad_sim = epic_sim_factory(profile="epic", patients=2, seed=22)
    appointment = sim_read(bad_sim, "Appointment", sim_resources(bad_sim, "Appointment")[0])
    sim_update(bad_sim, {**appointment, "minutesDuration": 2**40})
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    prefix = unique_name("src")
    good = connection_config(good_sim, config_dir, name="good", prefix=prefix)
    poisoned = connection_config(bad_sim, config_dir, name="poisoned", prefix=prefix)

    process = BridgeProcess(config_dir, bridge_env, tmp_path / "bridge.log")
    processes.append(process)
    process.start()
    wait_for(lambda: "appointment failed (ValueError" in process.log.read_text(), 60, "the broken task")
    expected = {(r, i) for r in RESOURCES for i in sim_resources(good_sim, r)}
    wait_for(lambda: set(events_by_resource(kafka_bootstrap, schema_registry, good)) == expected, 90, "good")
    others = {(r, i) for r in RESOURCES if r != "Appointment" for i in sim_resources(bad_sim, r)}
    wait_for(
        lambda: others <= set(events_by_resource(kafka_bootstrap, schema_registry, poisoned)),
        90,
        "the poisoned connection's other tasks",
    )
    assert process.proc is not None and process.proc.poll() is None

    ready = readyz(process.log)
    checks = ready.json()["checks"]
    assert ready.status_code == 503, ready.text
    assert checks["connection:good"] == "ok"
    assert checks["connection:poisoned"].startswith("RuntimeError: appointment: ValueError")
    assert 'epic_bridge_task_restarts_total{connection="poisoned",error="ValueError",task="appointment"}' in (
        metrics_of(process.log)
    )

    sim_update(bad_sim, appointment)  # the data is fixed: the task's next restart publishes it all
    wanted = {("Appointment", i) for i in sim_resources(bad_sim, "Appointment")}
    wait_for(
        lambda: wanted <= set(events_by_resource(kafka_bootstrap, schema_registry, poisoned)),
        90,
        "the appointment task to recover",
    )
    assert process.terminate() == 0
    for cfg in (good, poisoned):
        events = events_by_resource(kafka_bootstrap, schema_registry, cfg)
        assert all(len(v) == 1 for v in events.values()), "published twice"


def test_a_connection_that_never_opens_is_listed_on_readyz_with_its_reason(
    epic_sim_factory: Callable[..., Any],
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    sim = epic_sim_factory(profile="epic", patients=1, seed=23)
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    connection_config(sim, config_dir, name="good", prefix=unique_name("src"))
    broken = json.loads((config_dir / "good.json").read_text())
    broken.update(name="unreachable", fhir_base_url="http://127.0.0.1:9/api/FHIR/R4/")  # nothing listens
    (config_dir / "unreachable.json").write_text(json.dumps(broken))
    process = BridgeProcess(config_dir, bridge_env, tmp_path / "bridge.log")
    processes.append(process)
    process.start()
    wait_for(lambda: "good/patient: cycle 2" in process.log.read_text(), 60, "the good connection to poll")
    wait_for(lambda: "unreachable" in readyz(process.log).text, 30, "the unreachable connection on /readyz")
    ready = readyz(process.log)
    checks = ready.json()["checks"]
    assert ready.status_code == 503 and checks["connection:good"] == "ok", ready.text
    assert checks["connection:unreachable"].startswith("RuntimeError: cannot open the connection: "), (
        ready.text
    )
    assert process.terminate() == 0


def test_kafka_away_at_start_keeps_the_process_up_not_ready_and_it_starts_once_kafka_answers(
    epic_sim_factory: Callable[..., Any],
    kafka_bootstrap: str,
    schema_registry: SchemaRegistryClient,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    bridge_env: dict[str, str],
    processes: list[BridgeProcess],
) -> None:
    """The bridge reaches Kafka through a proxy that is down for the first 40 s (longer than any of the
    client's own timeouts): the process stays up, healthy but not ready, saying why, and retries; once
    Kafka answers it starts and publishes."""
    host, port = kafka_bootstrap.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    proxy.cut()
    try:
        sim = epic_sim_factory(profile="epic", patients=1, seed=24)
        config_dir = tmp_path / "configs"
        config_dir.mkdir()
        cfg = connection_config(sim, config_dir, name="later", prefix=unique_name("src"))
        env = {**bridge_env, "EPIC_BRIDGE_KAFKA_BOOTSTRAP": f"127.0.0.1:{proxy.port}"}
        process = BridgeProcess(config_dir, env, tmp_path / "bridge.log")
        processes.append(process)
        process.start()
        wait_for(lambda: "cannot start" in process.log.read_text(), 60, "the first failed start")
        time.sleep(40 - 30)  # the first attempt alone waits 30 s for Kafka's metadata
        assert process.proc is not None and process.proc.poll() is None, process.log.read_text()[-2000:]
        url = readyz(process.log).url
        assert httpx.get(url.copy_with(path="/healthz"), timeout=10).status_code == 200
        ready = readyz(process.log)
        assert (
            ready.status_code == 503
            and "cannot start" in ready.json()["checks"]["membership:" + cfg.topic_prefix]
        )
        proxy.restore()
        wait_for(
            lambda: "later/patient: cycle 2" in process.log.read_text(), 120, "the start once Kafka answers"
        )
        assert readyz(process.log).status_code == 200
        assert process.terminate() == 0
        expected = {(r, i) for r in RESOURCES for i in sim_resources(sim, r)}
        assert set(events_by_resource(kafka_bootstrap, schema_registry, cfg)) == expected
    finally:
        proxy.close()
