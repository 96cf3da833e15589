"""The MLLP listener on loopback, against a real MLLP client (the `hl7` package), the real broker and
registry: AA only once the hint is in the hints topic, AE/AR with the reason otherwise; floods of
connections, messages and oversized blocks are refused within the limits, the listener stays up, and
nothing beyond the limits reaches Kafka."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from hints_support import (
    LIN,
    MRN_SYSTEM,
    ack_code,
    hints_config,
    hl7_message,
    mllp_client,
    read_hints,
)

from bridge.config.models import ConnectionConfig
from bridge.hints.listener import MLLPListener
from bridge.hints.service import build_listener, open_writer, prepare_hints
from bridge.hints.writer import HintWriter
from bridge.kafka.avro import TopicCodec, load_schema
from bridge.kafka.context import KafkaContext, KafkaSettings
from bridge.metrics import Metrics

pytestmark = pytest.mark.integration


@dataclass
class Running:
    cfg: ConnectionConfig
    topic: str
    listener: MLLPListener
    writer: HintWriter
    metrics: Metrics

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"connection": "sim", **labels}) or 0.0


@pytest.fixture
def kafka(kafka_bootstrap: str, registry_url: str) -> KafkaContext:
    return KafkaContext(KafkaSettings(kafka_bootstrap=kafka_bootstrap, schema_registry_url=registry_url))


@pytest.fixture
async def start(
    kafka: KafkaContext, unique_name: Callable[[str], str]
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Start a listener (hints config overrides as keyword arguments) writing to a fresh hints topic."""
    running: list[Running] = []

    async def go(**hints: Any) -> Running:
        cfg = hints_config(unique_name("h"), **hints)
        topic = await asyncio.to_thread(prepare_hints, kafka, cfg)
        writer = await asyncio.to_thread(open_writer, kafka, cfg)
        metrics = Metrics()
        listener = build_listener(cfg, writer, metrics)
        await listener.start()
        running.append(Running(cfg, topic, listener, writer, metrics))
        return running[-1]

    yield go
    for r in running:
        await r.listener.stop()
        r.writer.close()


async def test_acks_for_good_malformed_and_unsupported_messages(
    start: Callable[..., Awaitable[Running]], kafka_bootstrap: str, schema_registry: SchemaRegistryClient
) -> None:
    r = await start()
    before = dt.datetime.now(dt.UTC)
    async with mllp_client(r.listener.port) as client:
        good = await client.send(hl7_message(control="CTRL-GOOD"))
        garbage = await client.send_raw(b"this is not HL7")
        unsupported = await client.send(hl7_message(type_="VXU^V04^VXU_V04", control="CTRL-VXU"))
        no_patient = await client.send(hl7_message(authority="OTHER", control="CTRL-NOPID"))
        unframed = await client.send_raw(b"")  # an empty block: no MSH
        client.writer.write(b"stray bytes\x1c\r")  # no <VT>: the framing is broken for this block
        framing = await asyncio.wait_for(client.reader.readmessage(), 30)
        second = await client.send(hl7_message(mrn="203713", type_="ORU^R01^ORU_R01", control="CTRL-ORU"))
    assert (ack_code(good), str(good["MSA.F2"])) == ("AA", "CTRL-GOOD")
    assert ack_code(garbage) == "AE" and "MSH" in garbage["MSA.F3"]
    assert (ack_code(unsupported), str(unsupported["MSA.F2"])) == ("AR", "CTRL-VXU")
    assert str(unsupported["ERR.F3.R1.C1"]) == "200" and "VXU" in unsupported["MSA.F3"]
    assert (ack_code(no_patient), str(no_patient["MSA.F2"])) == ("AE", "CTRL-NOPID")
    assert "PID-3" in no_patient["MSA.F3"]
    assert ack_code(unframed) == "AE"
    assert ack_code(framing) == "AE" and "<VT>" in framing["MSA.F3"]
    assert ack_code(second) == "AA"

    records = read_hints(kafka_bootstrap, schema_registry, r.topic, expect=2)
    assert len(records) == 2
    first = records[0]
    assert {k: first[k] for k in ("patient_id", "mrn", "mrn_system", "resource_types", "source")} == {
        "patient_id": None,
        "mrn": LIN[0],
        "mrn_system": MRN_SYSTEM,
        "resource_types": ["Patient", "Encounter"],
        "source": "mllp",
    }
    assert (first["reason"], first["message_control_id"]) == ("ADT^A08", "CTRL-GOOD")
    assert before - dt.timedelta(seconds=1) <= first["received_at"] <= dt.datetime.now(dt.UTC)
    assert records[1]["resource_types"] == ["Observation"]

    assert r.count("epic_bridge_hint_acks_total", code="AA") == 2
    assert r.count("epic_bridge_hint_acks_total", code="AE") == 4
    assert r.count("epic_bridge_hint_acks_total", code="AR") == 1
    assert r.count("epic_bridge_hints_received_total", stage="listener") == 7
    assert r.count("epic_bridge_hints_accepted_total", stage="listener") == 2
    for reason, n in (("malformed", 2), ("framing", 1), ("unsupported-type", 1), ("no-patient", 1)):
        assert r.count("epic_bridge_hints_rejected_total", stage="listener", reason=reason) == n


async def test_no_aa_unless_the_hint_is_stored(
    kafka: KafkaContext, unique_name: Callable[[str], str]
) -> None:
    """The writer points at a topic that does not exist (the broker does not auto-create topics): the
    delivery report fails, so the sender gets AE and will resend."""
    cfg = hints_config(unique_name("h"), mllp={"ack_timeout_s": 2})
    topic = await asyncio.to_thread(prepare_hints, kafka, cfg)
    codec = await asyncio.to_thread(TopicCodec, kafka.registry, topic, load_schema("hint.avsc"))
    writer = HintWriter(kafka.config, unique_name("missing"), codec.encode, timeout_s=2)
    metrics = Metrics()
    listener = build_listener(cfg, writer, metrics)
    await listener.start()
    try:
        async with mllp_client(listener.port) as client:
            ack = await client.send(hl7_message(control="CTRL-LOST"))
    finally:
        await listener.stop()
        writer.close(1)
    assert (ack_code(ack), str(ack["MSA.F2"])) == ("AE", "CTRL-LOST")
    assert "resend" in ack["MSA.F3"]
    labels = {"connection": "sim", "stage": "listener", "reason": "store-failed"}
    assert metrics.registry.get_sample_value("epic_bridge_hints_rejected_total", labels) == 1


async def test_per_connection_rate_connection_count_and_size_limits(
    start: Callable[..., Awaitable[Running]], kafka_bootstrap: str, schema_registry: SchemaRegistryClient
) -> None:
    r = await start(
        mllp={
            "max_connections": 3,
            "connection_messages_per_second": 0.001,  # a fresh connection gets its burst, then AE
            "messages_per_second": 1000,
            "burst": 4,
            "max_message_bytes": 4096,
        }
    )
    port = r.listener.port
    aa = 0
    async with mllp_client(port) as one, mllp_client(port) as two, mllp_client(port) as three:
        codes = [ack_code(await one.send(hl7_message())) for _ in range(10)]
        assert codes == ["AA"] * 4 + ["AE"] * 6
        aa += 4
        for client in (two, three):  # now registered: the listener holds three connections
            assert ack_code(await client.send(hl7_message())) == "AA"
            aa += 1
        async with mllp_client(port) as fourth, mllp_client(port) as fifth:
            assert await fourth.closed_by_peer() and await fifth.closed_by_peer()
        too_big = await two.send(hl7_message(padding=8000, control="CTRL-BIG"))
        assert ack_code(too_big) == "AR" and "larger than 4096 bytes" in too_big["MSA.F3"]
        assert await two.closed_by_peer()
    async with mllp_client(port) as again:  # the listener is still up, with room again
        assert ack_code(await again.send(hl7_message())) == "AA"
        aa += 1
    assert len(read_hints(kafka_bootstrap, schema_registry, r.topic, expect=aa)) == aa
    assert r.count("epic_bridge_hints_rejected_total", stage="listener", reason="rate-limited") == 6
    assert r.count("epic_bridge_hints_rejected_total", stage="listener", reason="oversized") == 1
    assert r.count("epic_bridge_hint_listener_connections_total", outcome="refused") == 2
    for _ in range(100):  # the listener notices the last client's close
        if r.count("epic_bridge_hint_listener_open_connections") == 0:
            break
        await asyncio.sleep(0.05)
    assert r.count("epic_bridge_hint_listener_open_connections") == 0


async def test_a_flood_of_clients_is_served_within_the_total_rate_and_writes_nothing_more(
    start: Callable[..., Awaitable[Running]], kafka_bootstrap: str, schema_registry: SchemaRegistryClient
) -> None:
    r = await start(
        mllp={
            "max_connections": 10,
            "messages_per_second": 0.001,  # only the burst is ever accepted, over all connections
            "connection_messages_per_second": 1000,
            "burst": 25,
        }
    )
    answered: list[str] = []
    refused = 0

    async def sender(n: int) -> None:
        nonlocal refused
        try:
            async with mllp_client(r.listener.port) as client:
                for m in range(10):
                    answered.append(ack_code(await client.send(hl7_message(control=f"F{n}-{m}"))))
        except (asyncio.IncompleteReadError, ConnectionError):
            refused += 1  # closed on arrival: over max_connections

    await asyncio.gather(*(sender(n) for n in range(40)))
    assert answered.count("AA") == 25
    assert set(answered) == {"AA", "AE"}
    assert refused > 0 and len(answered) == 10 * (40 - refused)
    assert r.count("epic_bridge_hint_listener_connections_total", outcome="refused") == refused
    assert len(read_hints(kafka_bootstrap, schema_registry, r.topic, expect=25)) == 25
    async with mllp_client(r.listener.port) as late:  # still answering, still within the limit
        ack = await late.send(hl7_message(control="LATE"))
        assert (ack_code(ack), str(ack["MSA.F2"])) == ("AE", "LATE")


async def test_an_idle_connection_is_closed_and_a_stopped_listener_refuses_new_ones(
    start: Callable[..., Awaitable[Running]],
) -> None:
    r = await start(mllp={"idle_timeout_s": 0.5})
    async with mllp_client(r.listener.port) as idle:
        assert ack_code(await idle.send(hl7_message())) == "AA"
        assert await idle.closed_by_peer(timeout_s=10)
    port = r.listener.port
    await r.listener.stop()
    with pytest.raises(OSError):
        async with mllp_client(port):
            pass
