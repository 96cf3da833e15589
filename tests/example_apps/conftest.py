"""One simulator and one real `epic-bridge run` process for all the example-app tests of a session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apps_support import WORKFLOW_RESOURCES, BridgeRun, Records, examples_python, free_port, wait_until
from confluent_kafka.schema_registry import SchemaRegistryClient
from integration.sink_support import write_connection

from bridge.client import Topics


@pytest.fixture(scope="session")
def apps_python() -> Path:
    return examples_python()


@pytest.fixture(scope="session")
def records(kafka_bootstrap: str, schema_registry: SchemaRegistryClient) -> Records:
    return Records(kafka_bootstrap, schema_registry)


@pytest.fixture(scope="session")
def bridge_run(
    kafka_bootstrap: str, registry_url: str, records: Records, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeRun]:
    from epic_sim.server import SimServer, make_config

    root = tmp_path_factory.mktemp("workflows")
    sim = SimServer(make_config(profile="epic", patients=3, seed=23, port=0, short_page_rate=0))
    config = write_connection(
        sim,
        root / "connect-configs",
        "local-sim",
        resources=WORKFLOW_RESOURCES,
        topic_prefix=f"ex{uuid.uuid4().hex[:8]}",
        poll_interval_s=1,
        initial_sync="snapshot",
        roster={"source": "group", "group_id": sim.stats()["roster_group"]},
    )
    env = {
        **os.environ,
        "EPIC_BRIDGE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "EPIC_BRIDGE_SCHEMA_REGISTRY_URL": registry_url,
        "EPIC_BRIDGE_HTTP_PORT": str(free_port()),
        "EPIC_BRIDGE_INSTANCE_ID": f"workflows-{uuid.uuid4().hex[:6]}",
    }
    run = BridgeRun(sim, Topics(config.name, config.topic_prefix), root / "connect-configs", root / "state",
                    root / "bridge.log", env)  # fmt: skip
    run.start()
    try:
        wanted = [run.topics.events(r) for r in WORKFLOW_RESOURCES] + [run.topics.results]
        wanted += [run.topics.commands(r) for r in WORKFLOW_RESOURCES]

        def snapshot_published() -> bool:
            assert run.proc is not None and run.proc.poll() is None, "the bridge exited:\n" + run.log_tail()
            existing = _topics(kafka_bootstrap)
            return set(wanted) <= existing and all(
                records.raw(run.topics.events(r)) for r in WORKFLOW_RESOURCES
            )

        wait_until(snapshot_published, "the bridge's topics and snapshot events", 120, run.log_tail)
        yield run
    finally:
        run.stop()
        sim.stop()


def _topics(bootstrap: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    found: dict[str, Any] = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return set(found)
