"""`epic-bridge status` reads cursors from the real `_offsets` topic and the bridge's /metrics;
`reset-cursor` starts a fresh full cycle of a task."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from prometheus_client import generate_latest
from source_support import connection_config, kafka_context, owning_engine

from bridge.kafka.context import KafkaContext, KafkaSettings
from bridge.kafka.topics import TopicSpec, ensure_topics, offsets_topic
from bridge.kafka.transactions import TransactionalProducer
from bridge.metrics import Metrics
from bridge.ops.owners import Owner, owners
from bridge.ops.reset import NothingToReset, reset_cursor
from bridge.ops.status import read_cursors, scrape, statuses
from bridge.source.cursors import cursor_key
from bridge.web import WebResponse, WebServer


@pytest.mark.integration
def test_status_merges_cursors_and_metrics_and_reset_starts_a_full_cycle(
    kafka_bootstrap: str, registry_url: str, kafka_admin: AdminClient, unique_name: Callable[[str], str]
) -> None:
    prefix = f"st{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_admin, [TopicSpec.compacted(offsets_topic(prefix))])
    producer = TransactionalProducer({"bootstrap.servers": kafka_bootstrap}, unique_name("tx"))
    producer.init()
    with producer.transaction():
        for task, value in (
            ("patient", b'{"cycle":4,"position":"cycle=4;after=p9"}'),
            ("encounter", b'{"cycle":2,"position":"cycle=2"}'),
            ("encounter:patient:p1", b'{"since":"2026-11-25T00:00:00Z"}'),
            ("encounter:patient:p2", b'{"since":"2026-11-25T00:00:00Z"}'),
        ):
            producer.produce(offsets_topic(prefix), value, key=cursor_key("prod", task))
        producer.produce(offsets_topic(prefix), b'{"cycle":1}', key=cursor_key("other", "patient"))
    producer.close()

    metrics = Metrics()
    metrics.last_poll.labels("prod", "patient").set(time.time() - 5)
    metrics.events.labels("prod", "patient", "CREATED").inc(3)
    metrics.events.labels("prod", "patient", "UPDATED").inc(2)
    metrics.poll_errors.labels("prod", "encounter", "FHIRServerError").inc()
    with WebServer() as web:
        web.add_route("/metrics", lambda: WebResponse(200, generate_latest(metrics.registry)))
        scraped = scrape(f"{web.url}/metrics")

    kafka = KafkaContext(KafkaSettings(kafka_bootstrap=kafka_bootstrap, schema_registry_url=registry_url))
    rows = {row.task: row for row in statuses(read_cursors(kafka, prefix), scraped, ["prod"])}
    assert sorted(rows) == [
        "encounter",
        "patient",
    ]  # per-patient marks fold into their task; "other" is not asked for
    assert rows["patient"].cursor == {"cycle": 4, "position": "cycle=4;after=p9"}
    assert rows["patient"].events == 5 and rows["patient"].last_poll is not None
    assert rows["encounter"].errors == 1 and rows["encounter"].patient_marks == 2

    assert reset_cursor(kafka, prefix, "prod", "encounter").marks == 2
    rows = {row.task: row for row in statuses(read_cursors(kafka, prefix), scraped, ["prod"])}
    assert rows["encounter"].patient_marks == 0
    assert rows["encounter"].cursor == {
        "cycle": 3, "started": None, "initial": True, "since": None, "after": None, "full": True,
        "last_full": None, "position": "cycle=3",
    }  # fmt: skip
    # the other task and the other connection are untouched
    assert rows["patient"].cursor == {"cycle": 4, "position": "cycle=4;after=p9"}
    assert read_cursors(kafka, prefix)[("other", "patient")] == {"cycle": 1}
    with pytest.raises(
        NothingToReset, match=r"prod/typo has no cursor .*\(tasks with one: encounter, patient\)"
    ):
        reset_cursor(kafka, prefix, "prod", "typo")
    assert scrape("http://127.0.0.1:9/metrics").reachable is False


@pytest.mark.integration
async def test_status_names_the_live_owner_of_each_connection_and_since_when(
    epic_sim_factory: Any, kafka_bootstrap: str, registry_url: str, tmp_path: Path
) -> None:
    sim = epic_sim_factory(patients=1, seed=3)
    prefix = f"own{uuid.uuid4().hex[:8]}"
    cfg = connection_config(sim, tmp_path, name="owned", prefix=prefix)
    kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / "state", instance="status-test")

    async def rows() -> dict[str, Owner]:
        cursors = await asyncio.to_thread(read_cursors, kafka, prefix)
        found = await asyncio.to_thread(owners, kafka, prefix, ["owned", "never"], cursors)
        return {row.connection: row for row in found}

    async with owning_engine(cfg, kafka):  # topics made, owned
        deadline = asyncio.get_running_loop().time() + 60
        while (now := await rows())["owned"].since is None:
            assert asyncio.get_running_loop().time() < deadline, now
            await asyncio.sleep(0.5)
        owned = now["owned"]
        assert (owned.group, owned.instance) == (f"epic-bridge.{prefix}", "status-test")
        assert owned.host and owned.since.endswith("Z")
        never = now["never"]
        assert (never.instance, never.since, never.last_known) == (None, None, None)
    after = (await rows())["owned"]  # left the group: nobody runs it, the record says who did
    assert after.instance is None and after.last_known is not None
    assert after.last_known["instance"] == "status-test"
