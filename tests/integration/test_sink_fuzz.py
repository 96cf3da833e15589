"""Hypothesis throws malformed and hostile records at a command topic of a running sink: each must land in
the DLQ (no usable command id) or get a REJECTED result (a command, but refused before any request), and
the consumer must keep going (a good command sent after each example is answered)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sink_support import SinkHarness, kafka_context, run_sink, write_connection

from epic_sim.search_rules import EPIC_PARAMS

pytestmark = pytest.mark.integration

MAX_COMMAND_BYTES = 20_000
# What the simulator (like Epic) searches on Patient: fuzzed criteria names avoid them, so each one
# is an unsupported criterion the sink must reject.
EPIC_PATIENT_PARAMS = set(EPIC_PARAMS["Patient"])
OTHER_SCHEMA = json.dumps(
    {
        "type": "record",
        "name": "NotACommand",
        "namespace": "fuzz",
        "fields": [{"name": "x", "type": "string"}],
    }
)


@dataclass(frozen=True)
class Case:
    """One record and what must become of it: 'dlq' or 'rejected'."""

    kind: str
    expect: str
    value: bytes | None = None  # raw bytes (DLQ cases)
    record: dict[str, Any] | None = None  # an Avro PatientCommand
    other_schema: dict[str, Any] | None = None


texts = st.text(max_size=60)
names = st.text(min_size=1, max_size=40).filter(lambda n: n not in EPIC_PATIENT_PARAMS)


def _command(**fields: Any) -> dict[str, Any]:
    return {"command_id": f"fz-{uuid.uuid4().hex}", "action": "CREATE", **fields}


not_a_json_object = texts.filter(lambda t: not _is_json_object(t))


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


rejected_cases = st.one_of(
    not_a_json_object.map(lambda t: Case("bad-json", "rejected", record=_command(resource_json=t))),
    texts.filter(lambda t: t != "Patient").map(
        lambda t: Case(
            "wrong-type", "rejected", record=_command(resource_json=json.dumps({"resourceType": t}))
        )
    ),
    st.dictionaries(names, texts, min_size=1, max_size=4).map(
        lambda c: Case("unsupported-criteria", "rejected", record=_command(action="FIND", criteria=c))
    ),
    st.integers(min_value=-(2**63), max_value=0).map(
        lambda d: Case(
            "deadline", "rejected", record=_command(action="FIND", criteria={"_id": "x"}, deadline_ms=d)
        )
    ),
    st.text(min_size=1, max_size=80)
    .filter(lambda t: any(not (ch.isascii() and (ch.isalnum() or ch in "._-")) for ch in t))
    .map(
        lambda t: Case(
            "reply-topic", "rejected", record=_command(action="FIND", criteria={"_id": "x"}, reply_topic=t)
        )
    ),
    st.builds(lambda: Case("nothing-to-create", "rejected", record=_command())),
    st.builds(
        lambda family, given: Case(
            "no-name",
            "rejected",
            record=_command(fields={"family_name": family, "given_names": given}),
        ),
        st.sampled_from([None, "", "   "]),
        st.lists(texts, max_size=3),
    ),
    st.builds(
        lambda: Case(
            "ensure-without-criteria",
            "rejected",
            record=_command(action="ENSURE", fields={"family_name": "X"}),
        )
    ),
    st.builds(
        lambda c: Case("bad-fields", "rejected", record=_command(fields={"family_name": "X", "gender": c})),
        texts.filter(lambda g: g.strip() not in ("", "male", "female", "other", "unknown")),
    ),
)

dlq_cases = st.one_of(
    st.binary(max_size=200)
    .filter(lambda b: not b or b[0] != 0)
    .map(lambda b: Case("garbage", "dlq", value=b)),
    st.builds(  # Confluent wire format naming a schema id the registry does not have
        lambda schema_id, tail: Case(
            "unknown-schema", "dlq", value=b"\x00" + schema_id.to_bytes(4, "big") + tail
        ),
        st.integers(min_value=2**30, max_value=2**31 - 1),
        st.binary(max_size=60),
    ),
    st.just(Case("empty", "dlq", value=b"")),
    st.just(Case("null", "dlq", value=None)),
    texts.map(lambda x: Case("other-schema", "dlq", other_schema={"x": x})),
    st.sampled_from(["", " ", "x" * 201]).map(
        lambda cid: Case("bad-command-id", "dlq", record={"command_id": cid, "action": "FIND"})
    ),
    st.integers(min_value=MAX_COMMAND_BYTES, max_value=3 * MAX_COMMAND_BYTES).map(
        lambda n: Case(
            "oversized", "dlq", record=_command(action="FIND", criteria={"_id": "x"}, correlation_id="y" * n)
        )
    ),
)


class BackgroundSink:
    """The sink on its own event loop in a thread, so hypothesis can drive a plain (sync) test."""

    def __init__(self, config: Any, kafka: Any) -> None:
        self.config, self.kafka = config, kafka
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        async def main() -> None:
            self.stop_event = asyncio.Event()
            await run_sink(self.config, self.kafka, self.stop_event)

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self.loop.close()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        if self.stop_event is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(60)


@pytest.fixture
def fuzz_sink(
    epic_sim_factory: Any, kafka_bootstrap: str, registry_url: str, schema_registry: Any, tmp_path: Path
) -> Iterator[tuple[SinkHarness, BackgroundSink]]:
    sim = epic_sim_factory(profile="epic", patients=2, seed=9, short_page_rate=0)
    config = write_connection(
        sim, tmp_path / "cfg", "fuzz", resources={"Patient": {"actions": ["create", "find"], "triggers": []}},
        sink={"max_command_bytes": MAX_COMMAND_BYTES},
    )  # fmt: skip
    sink = BackgroundSink(config, kafka_context(kafka_bootstrap, registry_url, tmp_path / "state"))
    harness = SinkHarness(config, kafka_bootstrap, schema_registry)
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    deadline = time.monotonic() + 60
    while harness.topics.dlq not in admin.list_topics(timeout=10).topics:
        assert sink.alive and time.monotonic() < deadline, sink.error
        time.sleep(0.2)
    yield harness, sink
    sink.stop()
    harness.close()
    assert sink.error is None, sink.error


def test_malformed_and_hostile_records_land_in_the_dlq_or_are_rejected(
    fuzz_sink: tuple[SinkHarness, BackgroundSink], schema_registry: Any
) -> None:
    harness, sink = fuzz_sink
    topic = harness.topic_of("Patient")
    other = AvroSerializer(schema_registry, OTHER_SCHEMA)
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": harness.bootstrap, "message.max.bytes": 10_000_000})
    seen_kinds: set[str] = set()

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(cases=st.lists(st.one_of(rejected_cases, dlq_cases), min_size=1, max_size=8))
    def check(cases: list[Case]) -> None:
        offsets: dict[int, tuple[int, int]] = {}

        def delivered(index: int) -> Any:
            def report(error: Any, message: Any) -> None:
                assert error is None, error
                offsets[index] = (message.partition(), message.offset())

            return report

        for index, case in enumerate(cases):
            seen_kinds.add(case.kind)
            if case.other_schema is not None:
                value = other(case.other_schema, SerializationContext(topic, MessageField.VALUE))
            elif case.record is not None:
                value = harness.encode("Patient", case.record)
            else:
                value = case.value
            producer.produce(topic, value=value, key=b"fuzz", on_delivery=delivered(index))
        good = {"command_id": f"good-{uuid.uuid4().hex}", "action": "FIND", "criteria": {"_id": "nobody"}}
        producer.produce(topic, value=harness.encode("Patient", good), key=b"fuzz")
        assert producer.flush(30) == 0

        deadline = time.monotonic() + 60
        while good["command_id"] not in harness.results:  # same key: everything before it is done
            assert sink.alive, f"the sink stopped: {sink.error!r}"
            assert time.monotonic() < deadline, "the consumer stopped moving"
            harness.collect(0.2)
        harness.collect(0.2)
        dead = {
            (int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
            for h in (dict((k, v.decode()) for k, v in m.headers() or []) for m in harness.dead)
        }
        for index, case in enumerate(cases):
            if case.expect == "dlq":
                assert offsets[index] in dead, case
            else:
                assert case.record is not None
                results = harness.results.get(case.record["command_id"], [])
                assert [r["status"] for r in results] == ["REJECTED"], (case, results)
                assert results[0]["attempts"] == 0 and results[0]["error"]["message"]
        assert harness.results[good["command_id"]][0]["status"] == "NOT_FOUND"

    check()
    assert len(seen_kinds) >= 10, seen_kinds
