"""`epic-bridge backfill` re-publishes existing data as snapshot events, against the real simulator,
broker and registry, without making the poller announce it again; it is refused while a bridge owns the
connection."""

from __future__ import annotations

import asyncio
import datetime as dt
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
    sim_resources,
    topic_of,
)

from bridge.connection import Connection
from bridge.ops.backfill import BackfillResult, Progress, backfill
from bridge.ops.exclusive import ConnectionOwned


def run_backfill(
    cfg: Any, kafka: Any, rtype: str, since: dt.date | None = None
) -> tuple[BackfillResult, list[int]]:
    calls: list[int] = []

    async def go() -> BackfillResult:
        async with await Connection.open(cfg) as connection:
            return await backfill(
                cfg, rtype, kafka, connection, since=since, progress=Progress(advance=calls.append)
            )

    return asyncio.run(go()), calls


@pytest.mark.integration
def test_backfill_republishes_everything_as_snapshots_once(
    epic_sim_factory: Any,
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(patients=3, seed=11, short_page_rate=0.3)
    cfg = connection_config(
        sim, tmp_path, prefix=f"bf{uuid.uuid4().hex[:8]}",
        resources={"Encounter": {}, "DocumentReference": {"categories": ["clinical-note"]}},
    )  # fmt: skip
    kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / "state")
    run = SourceRun(cfg, kafka)
    run.cycles(1)  # the initial snapshot sync: every encounter once, as CREATED
    encounters = set(sim_resources(sim, "Encounter"))
    first = read_events(kafka_bootstrap, schema_registry, topic_of(cfg, "encounter"), expect=len(encounters))
    assert {e["resource_id"] for e in first} == encounters and not any(e["snapshot"] for e in first)

    result, patients_done = run_backfill(cfg, kafka, "Encounter")
    assert result.events == len(encounters) and result.patients == 3 and len(patients_done) == 3
    events = read_events(
        kafka_bootstrap, schema_registry, topic_of(cfg, "encounter"), expect=2 * len(encounters)
    )
    snapshots = [e for e in events if e["snapshot"]]
    assert {e["resource_id"] for e in snapshots} == encounters and len(snapshots) == len(encounters)
    assert {e["trigger"] for e in snapshots} == {"CREATED"}
    # a consumer deduplicating on event ids still receives the re-publication
    assert not {e["event_id"] for e in snapshots} & {e["event_id"] for e in first}

    run.cycles(1)  # the poller knows these fingerprints: nothing announced again
    run.close()
    assert len(read_events(kafka_bootstrap, schema_registry, topic_of(cfg, "encounter"))) == 2 * len(
        encounters
    )

    # --since narrows with _lastUpdated where the server supports it (DocumentReference on Epic)
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    assert run_backfill(cfg, kafka, "DocumentReference", since=tomorrow)[0].events == 0
    requests = sim.requests()
    assert any("_lastUpdated" in r["query"] for r in requests if r["path"].endswith("/DocumentReference"))


@pytest.mark.integration
async def test_backfill_is_refused_while_a_bridge_owns_the_connection_and_runs_once_none_does(
    epic_sim_factory: Any,
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(patients=2, seed=13)
    cfg = connection_config(sim, tmp_path, prefix=f"bf{uuid.uuid4().hex[:8]}", resources={"Encounter": {}})
    kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / "state", instance="backfill-owner")
    env = bridge_environment(kafka_bootstrap, registry_url, tmp_path / "cli")
    topic = topic_of(cfg, "encounter")
    encounters = set(sim_resources(sim, "Encounter"))
    async with owning_engine(cfg, kafka):
        owner = f"backfill refused: .*instance backfill-owner on .*group epic-bridge.{cfg.topic_prefix}"
        with pytest.raises(ConnectionOwned, match=owner):
            async with await Connection.open(cfg) as connection:
                await backfill(cfg, "Encounter", kafka, connection)
        cli = await asyncio.to_thread(epic_bridge, tmp_path, env, "backfill", cfg.name, "Encounter")
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert "backfill refused" in cli.stderr and "backfill-owner" in cli.stderr and "Stop" in cli.stderr
    before = read_events(kafka_bootstrap, schema_registry, topic)  # the owner's own events
    assert not any(e["snapshot"] for e in before)  # the refused backfills published nothing

    # the owner stopped (it left the group): the same command re-publishes every encounter
    cli = await asyncio.to_thread(epic_bridge, tmp_path, env, "backfill", cfg.name, "Encounter")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    events = read_events(kafka_bootstrap, schema_registry, topic, expect=len(before) + len(encounters))
    assert sorted(e["resource_id"] for e in events if e["snapshot"]) == sorted(encounters)


@pytest.mark.integration
async def test_a_backfill_stops_before_its_next_batch_once_a_bridge_took_the_connection(
    epic_sim_factory: Any,
    kafka_bootstrap: str,
    registry_url: str,
    schema_registry: SchemaRegistryClient,
    tmp_path: Path,
) -> None:
    sim = epic_sim_factory(patients=10, seed=17)
    # one request a second: the scan of ten patients outlasts the start of a bridge
    cfg = connection_config(
        sim, tmp_path, prefix=f"bf{uuid.uuid4().hex[:8]}", resources={"Encounter": {}}, rate=1.0
    )
    kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / "state", instance="late-owner")
    SourceRun(cfg, kafka).close()  # the topics
    scanning = asyncio.Event()
    async with await Connection.open(cfg) as connection:
        job = asyncio.create_task(
            backfill(cfg, "Encounter", kafka, connection, progress=Progress(start=lambda _: scanning.set()))
        )
        await asyncio.wait_for(scanning.wait(), 60)
        async with owning_engine(cfg, kafka):
            assert not job.done()
            with pytest.raises(ConnectionOwned, match=r"backfill refused: .*instance late-owner"):
                await asyncio.wait_for(job, 120)
    events = read_events(kafka_bootstrap, schema_registry, topic_of(cfg, "encounter"))
    assert not any(e["snapshot"] for e in events)
