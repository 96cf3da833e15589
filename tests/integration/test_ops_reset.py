"""`epic-bridge reset-cursor` against the real simulator, broker and registry: a reset re-scans everything
and publishes what changed since the last poll (in both initial_sync modes), and it is refused while a
bridge owns the connection."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from process_support import bridge_environment, epic_bridge
from source_support import (
    SourceRun,
    connection_config,
    kafka_context,
    owning_engine,
    read_events,
    sim_create,
    sim_read,
    sim_resources,
    sim_update,
    topic_of,
)

from bridge.ops.exclusive import ConnectionOwned
from bridge.ops.owners import owners
from bridge.ops.reset import reset_cursor
from bridge.ops.status import read_cursors

TASKS = ("encounter", "documentreference")


def searches_of(sim: Any, rtype: str, since: int) -> list[dict[str, Any]]:
    return [r for r in sim.requests(since) if r["method"] == "GET" and r["path"].endswith(f"/R4/{rtype}")]


def events_after(
    bootstrap: str, registry: SchemaRegistryClient, topic: str, earlier: list[dict[str, Any]], expect: int
) -> list[tuple[str, str]]:
    """(trigger, resource id) of the events on `topic` beyond `earlier`."""
    known = {e["event_id"] for e in earlier}
    found = read_events(bootstrap, registry, topic, expect=len(earlier) + expect)
    return sorted((e["trigger"], e["resource_id"]) for e in found if e["event_id"] not in known)


@pytest.mark.integration
@pytest.mark.parametrize("initial_sync", ["from-now", "snapshot"])
def test_a_reset_rescans_everything_and_publishes_what_changed_since_the_last_poll(
    initial_sync: str,
    epic_sim_factory: Any,
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(patients=3, seed=5)
    cfg = connection_config(
        sim, tmp_path, prefix=f"rs{uuid.uuid4().hex[:8]}", initial_sync=initial_sync,
        source={"date_window_days": 30, "full_scan_interval_s": 86_400},
        resources={"Encounter": {}, "DocumentReference": {"categories": ["clinical-note"]}},
    )  # fmt: skip
    kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / "state")
    run = SourceRun(cfg, kafka)
    run.cycles(2)  # the initial sync, then an incremental cycle: per-patient _lastUpdated marks, date window
    run.close()
    cursors = read_cursors(kafka, cfg.topic_prefix)
    assert any(task.startswith("documentreference:patient:") for _, task in cursors)
    earlier = {r: read_events(kafka_bootstrap, schema_registry, topic_of(cfg, r)) for r in TASKS}
    assert bool(earlier["encounter"]) == (initial_sync == "snapshot")

    # changes after the last poll, before the reset: one update of each type, one new encounter
    encounter = sim_read(sim, "Encounter", sim_resources(sim, "Encounter")[0])
    sim_update(sim, {**encounter, "status": "cancelled"})
    document = sim_read(sim, "DocumentReference", sim_resources(sim, "DocumentReference")[0])
    sim_update(sim, {**document, "description": "amended"})
    new = sim_create(sim, {k: v for k, v in encounter.items() if k not in ("id", "meta")})

    for task in TASKS:
        reset_cursor(kafka, cfg.topic_prefix, cfg.name, task)

    before = max((r["seq"] for r in sim.requests()), default=0)
    run = SourceRun(cfg, kafka)  # a bridge started after the reset
    run.cycles(1)
    run.close()

    published = {
        task: events_after(kafka_bootstrap, schema_registry, topic_of(cfg, task), earlier[task], expect)
        for task, expect in (("encounter", 2), ("documentreference", 1))
    }
    assert published == {
        "encounter": sorted([("UPDATED", encounter["id"]), ("CREATED", new["id"])]),
        "documentreference": [("UPDATED", document["id"])],
    }
    # a full re-scan: neither the per-patient _lastUpdated marks nor the date window narrow it
    for rtype in ("Encounter", "DocumentReference"):
        searches = searches_of(sim, rtype, before)
        assert searches and not any({"_lastUpdated", "date"} & set(r["query"]) for r in searches), searches


@pytest.mark.integration
async def test_a_reset_is_refused_while_a_bridge_owns_the_connection(
    epic_sim_factory: Any, kafka_bootstrap: str, registry_url: str, tmp_path: Path
) -> None:
    sim = epic_sim_factory(patients=2, seed=7)
    resources = {"Encounter": {}, "Patient": {"triggers": [], "actions": ["find"]}}  # one poll task, a sink
    cfg = connection_config(sim, tmp_path, prefix=f"rs{uuid.uuid4().hex[:8]}", resources=resources)
    kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / "state", instance="reset-owner")
    env = bridge_environment(kafka_bootstrap, registry_url, tmp_path / "cli")
    reset = ("reset-cursor", cfg.name, "encounter", "--yes")
    async with owning_engine(cfg, kafka):
        deadline = asyncio.get_running_loop().time() + 60
        while (cfg.name, "encounter") not in await asyncio.to_thread(read_cursors, kafka, cfg.topic_prefix):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.5)
        owner = f"instance reset-owner on .*group epic-bridge.{cfg.topic_prefix}"
        with pytest.raises(ConnectionOwned, match=owner):
            await asyncio.to_thread(reset_cursor, kafka, cfg.topic_prefix, cfg.name, "encounter")
        cli = await asyncio.to_thread(epic_bridge, tmp_path, env, *reset)
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert "reset-cursor refused" in cli.stderr and "reset-owner" in cli.stderr and "Stop" in cli.stderr
    # the owner stopped; an instance that runs only the sink side (`--only sink`) writes no cursor
    sink_only = kafka_context(kafka_bootstrap, registry_url, tmp_path / "sink", instance="sink-owner")
    async with owning_engine(cfg, sink_only, frozenset({"sink"})):
        found = await asyncio.to_thread(owners, kafka, cfg.topic_prefix, [cfg.name], {})
        assert [(o.group, o.instance) for o in found if o.instance] == [
            (f"epic-bridge.{cfg.topic_prefix}.sink", "sink-owner")
        ]
        cli = await asyncio.to_thread(epic_bridge, tmp_path, env, *reset)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    after = (await asyncio.to_thread(read_cursors, kafka, cfg.topic_prefix))[(cfg.name, "encounter")]
    assert after["full"] and after["started"] is None and after["after"] is None
