"""/metrics, /healthz and /readyz over real HTTP, with the real broker and registry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from bridge.health import Heartbeat, add_health_routes, kafka_check, registry_check, token_check
from bridge.metrics import Metrics
from bridge.web import WebServer


@pytest.fixture
def server() -> Iterator[WebServer]:
    with WebServer("127.0.0.1", 0) as web:
        yield web


@pytest.mark.integration
async def test_ready_when_kafka_registry_and_tokens_answer(
    server: WebServer, kafka_admin: AdminClient, schema_registry: SchemaRegistryClient
) -> None:
    metrics = Metrics()
    metrics.events.labels("sim", "patient", "CREATED").inc()
    heartbeat = Heartbeat()
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat.run(stop))

    async def token() -> str:
        return "a token"

    async def no_token() -> str:
        raise RuntimeError("invalid_client: the registered JWK Set has no key with kid abc")

    loop = asyncio.get_running_loop()
    add_health_routes(
        server,
        metrics=metrics,
        heartbeat=heartbeat,
        checks={
            "kafka": kafka_check(kafka_admin.list_topics),
            "registry": registry_check(schema_registry.get_subjects),
            "connection:sim": token_check(loop, token),
        },
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"kafka": "ok", "registry": "ok", "connection:sim": "ok"}
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        page = await http.get("/metrics")
        assert page.headers["content-type"].startswith("text/plain")
        assert (
            'epic_bridge_events_total{connection="sim",resource="patient",trigger="CREATED"} 1.0' in page.text
        )

        # a connection whose token cannot be had makes the bridge not ready, and says why
        add_health_routes(
            server,
            metrics=metrics,
            heartbeat=heartbeat,
            checks={
                "kafka": kafka_check(kafka_admin.list_topics),
                "connection:prod": token_check(loop, no_token),
            },
        )
        not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503
        assert "invalid_client" in not_ready.json()["checks"]["connection:prod"]
    stop.set()
    await beating


@pytest.mark.integration
async def test_unreachable_kafka_is_not_ready_and_a_stalled_loop_is_not_healthy(server: WebServer) -> None:
    heartbeat = Heartbeat(stale_after_s=0.2)
    dead_kafka = AdminClient({"bootstrap.servers": "127.0.0.1:1", "socket.connection.setup.timeout.ms": 1000})
    add_health_routes(
        server,
        metrics=Metrics(),
        heartbeat=heartbeat,
        checks={"kafka": kafka_check(dead_kafka.list_topics, 1.0)},
    )
    await asyncio.sleep(0.3)  # no heartbeat task runs: the loop looks stalled
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.get("/readyz")).status_code == 503
        health = await http.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "stalled"
