"""`epic-bridge status` reads cursors from the real `_offsets` topic and the bridge's /metrics;
`reset-cursor` deletes one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient
from prometheus_client import generate_latest

from bridge.kafka.context import KafkaContext, KafkaSettings
from bridge.kafka.topics import TopicSpec, ensure_topics, offsets_topic
from bridge.kafka.transactions import TransactionalProducer
from bridge.metrics import Metrics
from bridge.ops.status import read_cursors, reset_cursor, scrape, statuses
from bridge.source.cursors import cursor_key
from bridge.web import WebResponse, WebServer


@pytest.mark.integration
def test_status_merges_cursors_and_metrics_and_reset_deletes_a_cursor(
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

    reset_cursor(kafka, prefix, "prod", "patient")
    assert ("prod", "patient") not in read_cursors(kafka, prefix)
    assert scrape("http://127.0.0.1:9/metrics").reachable is False
