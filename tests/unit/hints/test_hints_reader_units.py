"""The hint reader's flow over records (the FHIR server behind an httpx mock transport): DLQ staging, MRN
misses, the roster policy, coalescing and checkpoints; the MRN cache's bounds; and the structural promise
that nothing the reader is made of can publish."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import importlib.util
import io
import json
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest

from bridge.fhir.client import FHIRClient
from bridge.fhir.errors import FHIRServerError
from bridge.hints.decode import RawHint
from bridge.hints.latency import record_hint_latency
from bridge.hints.model import ScanRequest
from bridge.hints.mrn import Miss, MRNResolver
from bridge.hints.reader import HintReader, ReaderSettings
from bridge.metrics import Metrics
from bridge.retry import RetryPolicy

BASE = "https://epic.example.org/api/FHIR/R4/"
SYSTEM = "urn:mrn"
SCHEMA = fastavro.parse_schema(
    json.loads((Path(__file__).resolve().parents[3] / "schemas" / "hint.avsc").read_text())
)
T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def patient(pid: str, mrn: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "identifier": [{"system": SYSTEM, "value": mrn}]}


class Server:
    """Patient?identifier=... answers from a dict MRN -> list of patients; records every request."""

    def __init__(self, by_mrn: dict[str, list[dict[str, Any]]]) -> None:
        self.by_mrn = by_mrn
        self.requests: list[str] = []
        self.fail = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.fail:
            return httpx.Response(500)
        mrn = request.url.params["identifier"].split("|", 1)[1]
        entries = [{"resource": r, "search": {"mode": "match"}} for r in self.by_mrn.get(mrn, [])]
        body = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        return httpx.Response(200, json=body, headers={"Content-Type": "application/fhir+json"})


def fhir(server: Server) -> FHIRClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return FHIRClient(base_url=BASE, http=http, retry=RetryPolicy(max_attempts=1))


class Roster:
    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)
        self.added: list[str] = []

    async def contains(self, patient_id: str) -> bool:
        return patient_id in self.ids

    async def add(self, patient_id: str) -> None:
        self.ids.add(patient_id)
        self.added.append(patient_id)


def wire(**record: Any) -> bytes:
    out = io.BytesIO(b"\x00" + struct.pack(">I", 1))
    out.seek(5)
    fastavro.schemaless_writer(out, SCHEMA, {"resource_types": [], **record})
    return out.getvalue()


def deserialize(value: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), SCHEMA, SCHEMA)


async def records(values: list[bytes | None], partition: int = 0) -> AsyncIterator[RawHint]:
    for offset, value in enumerate(values):
        yield RawHint("epic.sim.hints", partition, offset, b"k", value, T0)


def reader(
    server: Server, roster: Roster, metrics: Metrics, clock: Callable[[], float] | None = None, **over: Any
) -> HintReader:
    settings = ReaderSettings(
        connection="sim",
        dlq_topic="epic.sim.dlq",
        enabled_resources=("Patient", "Encounter", "Observation"),
        default_mrn_system=SYSTEM,
        coalesce_window_s=0.0,
        **over,
    )
    resolver = MRNResolver(
        fhir(server), connection="sim", metrics=metrics, **({"clock": clock} if clock else {})
    )
    return HintReader(settings, deserialize=deserialize, resolver=resolver, roster=roster, metrics=metrics)


async def drain(r: HintReader, values: list[bytes | None]) -> list[ScanRequest]:
    """Take every record first (so whatever can coalesce does), then everything handed over."""
    await r.run(records(values))
    return [req async for req in r]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_records_become_scan_requests_and_bad_ones_are_staged_for_the_dlq() -> None:
    server = Server({"203711": [patient("p-lin", "203711")]})
    metrics = Metrics()
    r = reader(server, Roster("p-lin", "p-2"), metrics)
    values = [
        wire(mrn="203711", resource_types=["Patient", "Encounter"], reason="ADT^A08"),
        b"not avro",
        wire(patient_id="p-2", resource_types=["Observation", "Appointment"]),  # Appointment: not enabled
        wire(mrn="203711"),  # every enabled resource; merges with nothing already handed over
        wire(patient_id="p-2", resource_types=["Appointment"]),  # nothing enabled left
    ]
    got = await drain(r, values)
    assert [(q.patient_id, q.resource_type) for q in got] == [
        ("p-lin", "Patient"),
        ("p-lin", "Encounter"),
        ("p-2", "Observation"),
        ("p-lin", "Observation"),
    ]
    assert got[0].reason == "ADT^A08" and got[0].received_at == T0
    cp = r.checkpoint()
    assert cp.offsets == {0: 5}
    [dead] = cp.dead_letters
    assert (dead.topic, dead.value) == ("epic.sim.dlq", b"not avro")
    assert dict(dead.headers)["dlq.error.reason"] == b"undecodable"
    r.committed(cp)
    assert r.checkpoint().dead_letters == ()
    assert len(server.requests) == 1  # the MRN was resolved once
    assert sample(metrics, "epic_bridge_hints_coalesced_total", connection="sim") == 2
    assert sample(metrics, "epic_bridge_hint_mrn_lookups_total", connection="sim", result="hit") == 1
    assert sample(metrics, "epic_bridge_hints_received_total", connection="sim", stage="reader") == 5
    assert sample(metrics, "epic_bridge_hints_accepted_total", connection="sim", stage="reader") == 3
    reasons = {"undecodable": 1, "no-enabled-resource": 1}
    for reason, count in reasons.items():
        labels = {"connection": "sim", "stage": "reader", "reason": reason}
        assert sample(metrics, "epic_bridge_hints_rejected_total", **labels) == count


async def test_hints_outside_the_roster_are_dropped_or_add_the_patient() -> None:
    for policy, expected in (("drop", []), ("add", ["p-new"])):
        metrics = Metrics()
        roster = Roster("p-old")
        r = reader(Server({}), roster, metrics, outside_roster=policy)
        got = await drain(r, [wire(patient_id="p-new", resource_types=["Patient"])])
        assert [q.patient_id for q in got] == expected
        assert roster.added == expected
        dropped = {"connection": "sim", "stage": "reader", "reason": "outside-roster"}
        assert sample(metrics, "epic_bridge_hints_rejected_total", **dropped) == (policy == "drop")


async def test_unknown_ambiguous_and_failed_mrn_lookups_are_counted_and_dropped() -> None:
    server = Server(
        {
            "twice": [patient("a", "twice"), patient("b", "twice")],
            "loose": [patient("c", "other-mrn")],  # a loose match that does not carry the MRN
        }
    )
    metrics = Metrics()
    r = reader(server, Roster("a", "b", "c"), metrics)
    got = await drain(r, [wire(mrn="none"), wire(mrn="twice"), wire(mrn="loose"), wire(mrn="none")])
    assert got == []
    counts = {"mrn-unknown": 3, "mrn-ambiguous": 1}
    for reason, count in counts.items():
        labels = {"connection": "sim", "stage": "reader", "reason": reason}
        assert sample(metrics, "epic_bridge_hints_rejected_total", **labels) == count
    assert len(server.requests) == 3  # the second "none" was a cached miss
    server.fail = True
    r = reader(server, Roster(), metrics)
    assert await drain(r, [wire(mrn="x")]) == []
    failed = {"connection": "sim", "stage": "reader", "reason": "mrn-lookup-failed"}
    assert sample(metrics, "epic_bridge_hints_rejected_total", **failed) == 1


async def test_a_full_queue_pauses_intake_and_offsets_wait_for_hand_over() -> None:
    metrics = Metrics()
    r = reader(Server({}), Roster(*[f"p{n}" for n in range(10)]), metrics, max_pending=2)
    values = [wire(patient_id=f"p{n}", resource_types=["Patient"]) for n in range(10)]
    intake = asyncio.create_task(r.run(records(values)))
    await asyncio.sleep(0.05)
    assert not intake.done()
    assert r.checkpoint().offsets == {0: 0}  # p0 and p1 wait; nothing handed over yet
    first = await r.__anext__()
    assert first.patient_id == "p0"
    await asyncio.sleep(0.05)
    assert r.checkpoint().offsets == {0: 1}
    rest = [q.patient_id async for q in r]
    await intake
    assert rest == [f"p{n}" for n in range(1, 10)]
    assert r.checkpoint().offsets == {0: 10}


async def test_mrn_cache_is_a_bounded_lru_with_ttls() -> None:
    server = Server({m: [patient(f"id-{m}", m)] for m in ("1", "2", "3")})
    now = [0.0]
    resolver = MRNResolver(
        fhir(server), connection="sim", size=2, ttl_s=100.0, miss_ttl_s=10.0, clock=lambda: now[0]
    )
    assert await resolver.resolve(SYSTEM, "1") == "id-1"
    assert await resolver.resolve(SYSTEM, "2") == "id-2"
    assert await resolver.resolve(SYSTEM, "1") == "id-1"  # hit; "2" is now the least recently used
    assert await resolver.resolve(SYSTEM, "3") == "id-3"  # evicts "2"
    assert len(resolver) == 2 and len(server.requests) == 3
    assert await resolver.resolve(SYSTEM, "2") == "id-2"
    assert len(server.requests) == 4
    assert await resolver.resolve(SYSTEM, "9") is Miss.UNKNOWN
    now[0] = 9.0
    assert await resolver.resolve(SYSTEM, "9") is Miss.UNKNOWN
    assert len(server.requests) == 5
    now[0] = 10.5  # the miss expired: asked again
    server.by_mrn["9"] = [patient("id-9", "9")]
    assert await resolver.resolve(SYSTEM, "9") == "id-9"
    assert len(server.requests) == 6
    server.fail = True
    with pytest.raises(FHIRServerError):
        await resolver.resolve(SYSTEM, "fails")
    server.fail = False
    server.by_mrn["fails"] = [patient("id-f", "fails")]
    assert await resolver.resolve(SYSTEM, "fails") == "id-f"  # failures are not cached


def test_hint_latency_hook_observes_seconds_since_received_at() -> None:
    metrics = Metrics()
    request = ScanRequest("p", "Observation", T0, "ORU^R01")
    assert record_hint_latency(metrics, "sim", request, T0 + dt.timedelta(seconds=4)) == 4.0
    labels = {"connection": "sim", "resource": "observation"}
    assert sample(metrics, "epic_bridge_hint_to_event_seconds_sum", **labels) == 4.0


# -- a hint can only ever cause a scan ----------------------------------------------------------------

PUBLISHERS = {
    "bridge.hints.writer",
    "bridge.kafka.transactions",
    "bridge.source.publish",
    "bridge.source.events",
    "bridge.source.batch",
    "bridge.sink.worker",
}


def _bridge_imports(module: str) -> set[str]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "confluent_kafka":
                assert not any(a.name in ("Producer", "SerializingProducer") for a in node.names), module
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("bridge.")}


def test_nothing_the_reader_is_made_of_can_produce_to_kafka() -> None:
    seen: set[str] = set()
    todo = ["bridge.hints.reader"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_bridge_imports(module))
    assert "bridge.hints.mrn" in seen and "bridge.fhir.client" in seen  # the walk does follow imports
    assert not seen & PUBLISHERS
    for module in seen:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None
        assert ".produce(" not in Path(spec.origin).read_text(), module
