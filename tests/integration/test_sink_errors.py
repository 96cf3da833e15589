"""Every error class against the simulator's fault injection: retriable ones retried within the command's
deadline, permanent ones answered at once with Epic's code, unsupported criteria refused before any request,
and interrupted creates searched for before they are tried again (never created twice)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from sink_support import (
    RunningSink,
    encounter_of,
    kafka_context,
    next_weekday,
    resources_of,
    start_sink,
    write_connection,
)

from bridge.kafka.topics import TopicSpec, ensure_topics
from bridge.sink.identity import MARKER_SYSTEM
from bridge.sink.ledger import ledger_key

pytestmark = pytest.mark.integration


@dataclass
class Env:
    sim: Any
    sink: RunningSink
    patient: str

    def requests(
        self, since: int, method: str | None = None, contains: str = "/api/FHIR/"
    ) -> list[dict[str, Any]]:
        return [
            r
            for r in self.sim.requests(since)
            if contains in r["path"] and (method is None or r["method"] == method)
        ]

    def last_seq(self) -> int:
        requests = self.sim.requests(0)
        return int(requests[-1]["seq"]) if requests else 0

    def with_marker(self, rtype: str, command_id: str) -> list[str]:
        marker = f"{self.sink.harness.config.name}/{command_id}"
        rows = self.sim.sim.store.query(
            "SELECT seq, type, id, version, last_updated, json FROM resources WHERE seq IN "
            "(SELECT seq FROM idents WHERE type=? AND system=? AND value=?)",
            (rtype, MARKER_SYSTEM, marker),
        )
        return [str(r.id) for r in rows]


MakeEnv = Callable[..., Any]


@pytest.fixture
async def make_env(
    epic_sim_factory: Any, tmp_path: Path, kafka_bootstrap: str, registry_url: str
) -> AsyncIterator[MakeEnv]:
    started: list[Env] = []

    async def make(
        profile: str = "epic", before_start: Callable[[Any], None] | None = None, **over: Any
    ) -> Env:
        sim = epic_sim_factory(profile=profile, patients=2, seed=5, short_page_rate=0)
        config = write_connection(sim, tmp_path / f"cfg{len(started)}", f"{profile}-errors", **over)
        kafka = kafka_context(kafka_bootstrap, registry_url, tmp_path / f"state{len(started)}")
        if before_start is not None:
            before_start(config, kafka_bootstrap)
        env = Env(sim, await start_sink(config, kafka), sim.sim.store.ids("Patient", limit=1)[0])
        started.append(env)
        # Learn the CapabilityStatement now, so request counts below are the command's own.
        await env.sink.run("Patient", "FIND", criteria={"_id": env.patient})
        return env

    yield make
    for env in started:
        await env.sink.close()


# -- retriable --------------------------------------------------------------------------------------------
async def test_429_and_503_are_retried_and_the_command_succeeds(make_env: MakeEnv) -> None:
    env = await make_env()
    env.sim.set_faults(
        rules=[
            {"kind": "429", "retry_after": "0", "count": 1, "resource": "Patient", "method": "POST"},
            {"kind": "503", "count": 1, "resource": "Patient", "method": "POST"},
        ]
    )
    seq = env.last_seq()
    result = await env.sink.run("Patient", "CREATE", fields={"family_name": "Retry"})
    assert (result["status"], result["effect"]) == ("SUCCEEDED", "CREATED"), result["error"]
    assert result["attempts"] == 4  # 429, 503, 201, read-back
    assert len(env.requests(seq, "POST")) == 3
    assert len(result["resource_ids"]) == 1


async def test_5xx_and_timeouts_on_a_find_are_retried(make_env: MakeEnv) -> None:
    env = await make_env(timeouts={"read_s": 0.5})
    env.sim.set_faults(
        rules=[
            {"kind": "500", "count": 1, "resource": "Patient", "method": "GET"},
            {"kind": "latency", "latency_ms": 1500, "count": 1, "resource": "Patient", "method": "GET"},
            {"kind": "drop", "count": 1, "resource": "Patient", "method": "GET"},
        ]
    )
    result = await env.sink.run("Patient", "FIND", criteria={"_id": env.patient})
    assert (result["status"], result["resource_ids"]) == ("SUCCEEDED", [env.patient]), result["error"]
    # The first request is both slowed (timeout) and answered 500; the second dropped; the third answers.
    assert result["attempts"] == 3


async def test_expired_token_is_renewed_and_the_command_succeeds(make_env: MakeEnv) -> None:
    env = await make_env()
    env.sim.expire_tokens()
    seq = env.last_seq()
    result = await env.sink.run("Patient", "CREATE", fields={"family_name": "Token"})
    assert (result["status"], result["effect"]) == ("SUCCEEDED", "CREATED"), result["error"]
    assert env.requests(seq, contains="/oauth2/token")  # a new token was fetched
    assert len(env.with_marker("Patient", result["command_id"])) == 1


async def test_a_retriable_failure_that_outlasts_the_deadline_is_failed(make_env: MakeEnv) -> None:
    env = await make_env()
    env.sim.set_faults(rules=[{"kind": "503", "resource": "Patient"}])  # every Patient request
    started = time.monotonic()
    result = await env.sink.run("Patient", "FIND", criteria={"_id": env.patient}, deadline_ms=1500)
    elapsed = time.monotonic() - started
    assert result["status"] == "FAILED"
    error = result["error"]
    assert error["http_status"] == 503 and error["retriable"] is True
    assert "deadline passed" in error["message"]
    assert result["attempts"] > 1
    assert elapsed < 10
    env.sim.clear_faults()
    creates = await env.sink.run(
        "Patient", "CREATE", fields={"family_name": "Late"}, deadline_ms=1000
    )  # after the faults: fine again
    assert creates["status"] == "SUCCEEDED"


# -- permanent ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 403, 404, 422])
async def test_permanent_statuses_are_answered_at_once(make_env: MakeEnv, status: int) -> None:
    env = await make_env()
    env.sim.set_faults(
        rules=[{"kind": "status", "status": status, "count": 1, "resource": "Patient", "method": "POST"}]
    )
    seq = env.last_seq()
    result = await env.sink.run("Patient", "CREATE", fields={"family_name": "Refused"})
    assert result["status"] == "FAILED"
    assert result["error"]["http_status"] == status and result["error"]["retriable"] is False
    assert result["attempts"] == 1
    assert len(env.requests(seq, "POST")) == 1  # not retried
    assert json.loads(result["error"]["operation_outcome_json"])["resourceType"] == "OperationOutcome"


async def test_epic_400_carries_epics_code_and_operation_outcome(make_env: MakeEnv) -> None:
    env = await make_env()
    result = await env.sink.run("Patient", "FIND", criteria={"family": "Lin"})  # Epic needs more than a name
    assert result["status"] == "FAILED"
    error = result["error"]
    assert (error["http_status"], error["epic_code"], error["retriable"]) == (400, "59159", False)
    assert "59159" in error["operation_outcome_json"]
    assert result["attempts"] == 1


async def test_unsupported_criteria_are_rejected_before_any_request(make_env: MakeEnv) -> None:
    env = await make_env()
    seq = env.last_seq()
    cases = [
        ("Encounter", {"patient": env.patient, "_lastUpdated": "ge2020-01-01"}, "_lastUpdated"),
        ("Patient", {"identifier": "x|1", "_sort": "family"}, "_sort"),
        ("Patient", {"family:exact": "Lin", "birthdate": "1973-06-03"}, "family:exact"),
        ("Observation", {"patient": env.patient, "category": "vital-signs", "bogus": "1"}, "bogus"),
    ]
    for rtype, criteria, culprit in cases:
        result = await env.sink.run(rtype, "FIND", criteria=criteria)
        assert result["status"] == "REJECTED", (rtype, criteria)
        assert culprit in result["error"]["message"]
        assert result["attempts"] == 0
    ensure = await env.sink.run(
        "Patient", "ENSURE", criteria={"name": "Lin"}, fields={"family_name": "Lin"}
    )  # would match everyone on Epic, then create nothing or the wrong thing
    assert ensure["status"] == "REJECTED"
    assert env.requests(seq) == []  # not one FHIR request


# -- interrupted creates: look before creating again ----------------------------------------------------
async def test_create_failing_with_500_is_checked_then_retried_once(make_env: MakeEnv) -> None:
    env = await make_env()
    encounter = encounter_of(env.sim, env.patient)
    env.sim.set_faults(rules=[{"kind": "500", "count": 1, "resource": "DocumentReference", "method": "POST"}])
    seq = env.last_seq()
    fields = {"patient_id": env.patient, "encounter_id": encounter, "note_text": "after a 500"}
    result = await env.sink.run("DocumentReference", "CREATE", fields=fields)
    assert (result["status"], result["effect"]) == ("SUCCEEDED", "CREATED"), result["error"]
    assert len(env.requests(seq, "POST")) == 2
    searches = [r for r in env.requests(seq, "GET") if r["path"].endswith("/DocumentReference")]
    assert searches, "the sink must search before creating again"
    assert env.with_marker("DocumentReference", result["command_id"]) == result["resource_ids"]


async def test_create_whose_answer_was_lost_is_not_repeated(make_env: MakeEnv) -> None:
    env = await make_env(profile="generic")
    # The server creates the patient, then the connection drops halfway through the answer.
    env.sim.set_faults(rules=[{"kind": "truncate", "count": 1, "resource": "Patient", "method": "POST"}])
    seq = env.last_seq()
    result = await env.sink.run("Patient", "CREATE", fields={"family_name": "Lost"})
    assert (result["status"], result["effect"]) == ("SUCCEEDED", "CREATED"), result["error"]
    assert len(env.requests(seq, "POST")) == 1
    assert env.with_marker("Patient", result["command_id"]) == result["resource_ids"]


async def test_create_that_timed_out_is_searched_for_then_sent_again_and_exists_once(
    make_env: MakeEnv,
) -> None:
    env = await make_env(timeouts={"read_s": 0.5}, sink={"ambiguous_settle_s": 1.0})
    env.sim.set_faults(
        rules=[{"kind": "latency", "latency_ms": 1200, "count": 1, "resource": "Patient", "method": "POST"}]
    )
    seq = env.last_seq()
    result = await env.sink.run("Patient", "CREATE", fields={"family_name": "Slow"})
    assert (result["status"], result["effect"]) == ("SUCCEEDED", "CREATED"), result["error"]
    requests = [r for r in env.requests(seq) if r["path"].endswith("/Patient")]
    # create (timed out) -> search by the marker (nothing: the simulator drops a create whose client left)
    # -> create again
    assert [r["method"] for r in requests] == ["POST", "GET", "POST"]
    assert env.with_marker("Patient", result["command_id"]) == result["resource_ids"]


async def test_book_whose_answer_was_lost_is_not_repeated(make_env: MakeEnv) -> None:
    env = await make_env()
    env.sim.set_faults(rules=[{"kind": "truncate", "count": 1, "path": r"/\$book$"}])
    start = dt.datetime.combine(next_weekday(dt.date(2031, 5, 5)), dt.time(10, 0), dt.UTC)
    seq = env.last_seq()
    result = await env.sink.run(
        "Appointment",
        "CREATE",
        fields={"patient_id": env.patient, "start": start, "end": start + dt.timedelta(hours=3)},
    )
    assert (result["status"], result["effect"]) == ("SUCCEEDED", "CREATED"), result["error"]
    assert len([r for r in env.requests(seq, "POST", contains="/STU3/") if r["path"].endswith("$book")]) == 1
    booked = env.sim.sim.store.query(
        "SELECT seq, type, id, version, last_updated, json FROM resources "
        "WHERE type='Appointment' AND patient=? AND status='booked' AND date >= ?",
        (env.patient, "2031-05-01"),
    )
    assert [r.id for r in booked] == result["resource_ids"]


def intents(config: Any, bootstrap: str, command_ids: list[str]) -> None:
    """Leave intents without results in the ledger, as a crash after Epic's answer would."""
    ledger = f"{config.topic_prefix}._command-results"
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), [TopicSpec.compacted(ledger)])
    producer = Producer({"bootstrap.servers": bootstrap})
    for cid in command_ids:
        producer.produce(ledger, key=ledger_key(config.name, cid), value=b'{"state":"intent","at":0}')
    assert producer.flush(10) == 0


async def test_a_command_with_an_intent_but_no_result_finds_the_earlier_create(make_env: MakeEnv) -> None:
    """What a crash between Epic's 201 and the result's commit leaves: an intent, and the resource."""
    command_id = "crashed-command-1"
    precreated: dict[str, str] = {}

    def leave_an_intent(config: Any, bootstrap: str) -> None:
        intents(config, bootstrap, [command_id, "crashed-command-2"])
        precreated["config"] = config.name

    env = await make_env(before_start=leave_an_intent)
    # The earlier attempt's patient, as Epic holds it.
    made = env.sim.admin.post(
        "/admin/resources/Patient",
        json={
            "resourceType": "Patient",
            "name": [{"family": "Crash"}],
            "identifier": [{"system": MARKER_SYSTEM, "value": f"{precreated['config']}/{command_id}"}],
        },
    )
    made.raise_for_status()
    seq = env.last_seq()
    result = await env.sink.run("Patient", "CREATE", command_id=command_id, fields={"family_name": "Crash"})
    assert (result["status"], result["effect"], result["resource_ids"]) == (
        "SUCCEEDED",
        "CREATED",
        [made.json()["id"]],
    )
    assert env.requests(seq, "POST") == []  # found, not created again

    nothing_before = await env.sink.run(
        "Patient", "CREATE", command_id="crashed-command-2", fields={"family_name": "Crash2"}
    )  # the crash happened before Epic saw it: created now, once
    assert (nothing_before["status"], nothing_before["effect"]) == ("SUCCEEDED", "CREATED")
    assert len(env.with_marker("Patient", "crashed-command-2")) == 1


async def test_replayed_command_is_answered_from_the_ledger_without_calling_epic(make_env: MakeEnv) -> None:
    env = await make_env()
    first = await env.sink.run("Patient", "CREATE", command_id="once", fields={"family_name": "Once"})
    seq = env.last_seq()
    env.sink.send("Patient", "CREATE", command_id="once", fields={"family_name": "Once"})
    await env.sink.harness.wait_for(lambda: len(env.sink.harness.results.get("once", [])) == 2)
    replay = env.sink.harness.results["once"][1]
    assert (replay["replayed"], replay["resource_ids"]) == (True, first["resource_ids"])
    assert env.requests(seq) == []
    # The ledger keeps ids, not chart content: the replay says so instead of repeating the resources.
    assert resources_of(first) and resources_of(replay) == []
    assert any("by id" in w for w in replay["warnings"])


async def test_an_interrupted_booking_is_found_not_booked_twice(make_env: MakeEnv) -> None:
    env = await make_env(
        before_start=lambda config, bootstrap: intents(config, bootstrap, ["crashed-booking"])
    )
    start = dt.datetime.combine(next_weekday(dt.date(2031, 6, 2)), dt.time(11, 0), dt.UTC)
    # What the interrupted attempt booked (Epic appointments carry no marker: note and window identify it).
    booked = env.sim.admin.post(
        "/admin/resources/Appointment",
        json={
            "resourceType": "Appointment",
            "status": "booked",
            "start": (start + dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": (start + dt.timedelta(minutes=60)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "comment": "post-op check",
            "participant": [{"actor": {"reference": f"Patient/{env.patient}"}, "status": "accepted"}],
        },
    )
    booked.raise_for_status()
    seq = env.last_seq()
    result = await env.sink.run(
        "Appointment",
        "CREATE",
        command_id="crashed-booking",
        fields={
            "patient_id": env.patient,
            "start": start,
            "end": start + dt.timedelta(hours=2),
            "note": "post-op check",
        },
    )
    assert (result["status"], result["effect"], result["resource_ids"]) == (
        "SUCCEEDED",
        "CREATED",
        [booked.json()["id"]],
    )
    assert env.requests(seq, "POST", contains="/STU3/") == []  # no $find, no $book


async def test_every_retriable_class_ends_failed_after_the_deadline(make_env: MakeEnv) -> None:
    env = await make_env(timeouts={"read_s": 0.4})
    cases: list[tuple[dict[str, Any], int | None, str]] = [
        ({"kind": "429", "retry_after": "0"}, 429, "HTTP 429"),
        ({"kind": "503"}, 503, "HTTP 503"),
        ({"kind": "500"}, 500, "HTTP 500"),
        ({"kind": "status", "status": 502}, 502, "HTTP 502"),
        ({"kind": "status", "status": 401}, 401, "refused even after a refresh"),
        ({"kind": "drop"}, None, "Server disconnected"),
        ({"kind": "latency", "latency_ms": 1000}, None, "timed out"),
    ]
    for rule, status, text in cases:
        env.sim.set_faults(rules=[{**rule, "resource": "Patient"}])
        result = await env.sink.run("Patient", "FIND", criteria={"_id": env.patient}, deadline_ms=1200)
        error = result["error"]
        assert (result["status"], error["retriable"], error["http_status"]) == ("FAILED", True, status), rule
        assert "deadline passed" in error["message"] and text in error["message"], (rule, error["message"])
        assert result["attempts"] >= 2, rule
    env.sim.clear_faults()
