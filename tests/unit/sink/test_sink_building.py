"""Builders, criteria checks, failure classification, recovery queries, and the executor against a mock
server (httpx.MockTransport): no network."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from typing import Any

import httpx
import pytest

from bridge.auth.errors import InvalidClientError, TokenEndpointError
from bridge.fhir.capabilities import Capabilities
from bridge.fhir.client import FHIRClient
from bridge.fhir.errors import (
    FHIRBadRequest,
    FHIRConnectionError,
    FHIRForbidden,
    FHIRProtocolError,
    FHIRRateLimited,
    FHIRServerError,
    FHIRTimeout,
    FHIRUnauthorized,
)
from bridge.retry import RetryPolicy
from bridge.sink.builders import Invalid, build, check_for_server, instant, patient_of
from bridge.sink.calls import AmbiguousCreate, Backoff, CommandCalls
from bridge.sink.criteria import UnsupportedCriteria, check_criteria
from bridge.sink.executor import FHIRExecutor
from bridge.sink.failures import GiveUp, classify
from bridge.sink.identity import (
    MARKER_SYSTEM,
    carries_marker,
    marker_value,
    natural_key_query,
    recovery_query,
    same_natural_key,
    with_marker,
)
from bridge.sink.model import Action, Command, Effect, Source, Status


def caps(epic: bool = True) -> Capabilities:
    params = {
        "Patient": ["_id", "identifier", "family", "given", "birthdate", "_count"],
        "Observation": ["patient", "category", "code", "date", "_count"],
        "DocumentReference": ["patient", "category", "date", "_lastUpdated"],
        "Encounter": ["patient", "date", "identifier"],
        "Appointment": ["patient", "date", "identifier", "status"],
    }
    creatable = {"Patient", "Observation", "DocumentReference"} if epic else set(params)
    return Capabilities.from_statement(
        {
            "resourceType": "CapabilityStatement",
            "software": {"name": "Epic" if epic else "HAPI"},
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": t,
                            "interaction": [{"code": "read"}, {"code": "search-type"}]
                            + ([{"code": "create"}] if t in creatable else []),
                            "searchParam": [{"name": p} for p in ps],
                        }
                        for t, ps in params.items()
                    ],
                }
            ],
        }
    )


# -- builders -----------------------------------------------------------------------------------------
def test_patient_from_fields() -> None:
    patient = build(
        "Patient",
        {
            "family_name": " Lin ",
            "given_names": ["Derrick", " "],
            "birth_date": dt.date(1973, 6, 3),
            "gender": "male",
            "identifiers": [{"system": "urn:oid:1", "value": "203711", "use": None}],
            "phone": "555-0100",
            "address_lines": ["1 Main St"],
            "city": "Verona",
        },
    )
    assert patient == {
        "resourceType": "Patient",
        "name": [{"use": "official", "family": "Lin", "given": ["Derrick"]}],
        "identifier": [{"system": "urn:oid:1", "value": "203711"}],
        "gender": "male",
        "birthDate": "1973-06-03",
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "address": [{"line": ["1 Main St"], "city": "Verona"}],
    }


@pytest.mark.parametrize(
    ("rtype", "fields", "reason"),
    [
        ("Patient", {"given_names": ["A"]}, "family_name"),
        ("Patient", {"family_name": "A", "gender": "m"}, "gender"),
        ("Observation", {"patient_id": "p", "value_quantity": 1.0}, "fields.code"),
        ("Observation", {"patient_id": "p", "code": {"code": "x"}}, "value"),
        ("Observation", {"patient_id": "p", "code": {"code": "x"}, "value_quantity": float("nan")}, "finite"),
        ("DocumentReference", {"patient_id": "p"}, "note_text"),
        ("Appointment", {"patient_id": "p"}, "fields.start"),
        ("Encounter", {}, "patient_id"),
    ],
)
def test_builders_refuse_what_the_resource_cannot_do_without(
    rtype: str, fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Invalid, match=reason):
        build(rtype, fields)


def test_document_reference_is_base64_text_and_epic_needs_an_encounter() -> None:
    doc = build(
        "DocumentReference",
        {"patient_id": "p1", "note_text": "héllo", "date": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)},
    )
    assert base64.b64decode(doc["content"][0]["attachment"]["data"]).decode() == "héllo"
    assert doc["date"] == "2030-01-01T00:00:00Z" and patient_of(doc) == "p1"
    with pytest.raises(Invalid, match=r"context\.encounter"):
        check_for_server(doc, epic=True)
    check_for_server(doc, epic=False)
    check_for_server({**doc, "context": {"encounter": [{"reference": "Encounter/e1"}]}}, epic=True)


def test_instants_are_utc_with_milliseconds_only_when_needed() -> None:
    assert instant(dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC), "t") == "2030-01-01T12:00:00Z"
    assert (
        instant(dt.datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC), "t") == "2030-01-01T12:00:00.250Z"
    )
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert instant(dt.datetime(2030, 1, 1, 12, tzinfo=plus_two), "t") == "2030-01-01T10:00:00Z"


# -- criteria -------------------------------------------------------------------------------------------
def test_supported_criteria_pass_and_unsupported_ones_are_named() -> None:
    assert check_criteria(caps(), "Patient", {"identifier": "a|b"}) == {"identifier": "a|b"}
    with pytest.raises(UnsupportedCriteria) as refused:
        check_criteria(caps(), "Encounter", {"patient": "p", "_lastUpdated": "ge2020", "family:exact": "x"})
    message = str(refused.value)
    assert "_lastUpdated is not a search parameter this server supports" in message
    assert "'family:exact'" in message and "supported for Encounter: date, identifier, patient" in message
    for bad in ({"_count": "0"}, {"family": " "}, {"_include": "x"}, {"given": "x" * 1001}):
        with pytest.raises(UnsupportedCriteria):
            check_criteria(caps(), "Patient", bad)


# -- classification -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "retriable", "ambiguous_for_create"),
    [
        (FHIRRateLimited(429, "slow down", retry_after=2.0), True, False),
        (FHIRServerError(503, "unavailable"), True, False),
        (FHIRServerError(500, "boom"), True, True),
        (FHIRServerError(502, "bad gateway"), True, True),
        (FHIRTimeout("read timed out"), True, True),
        (FHIRConnectionError("dropped"), True, True),
        (FHIRUnauthorized(401, "invalid_token"), True, False),
        (FHIRBadRequest(400, "bad", code="59159"), False, False),
        (FHIRBadRequest(422, "unprocessable"), False, False),
        (FHIRForbidden(403, "no scope"), False, False),
        (TokenEndpointError(503), True, False),
        (InvalidClientError(400, "invalid_client"), False, False),
        (FHIRProtocolError("expected FHIR JSON, got text/html"), True, True),
    ],
)
def test_classification(exc: Exception, retriable: bool, ambiguous_for_create: bool) -> None:
    failure = classify(exc, creating=True)
    assert failure is not None
    assert (failure.retriable, failure.ambiguous) == (retriable, ambiguous_for_create)
    plain = classify(exc, creating=False)
    assert plain is not None and plain.ambiguous is False
    assert plain.retriable == (retriable and not isinstance(exc, FHIRProtocolError))
    assert classify(RuntimeError("a bug"), creating=True) is None


# -- calls: deadline and backoff --------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_retriable_failures_are_retried_until_the_deadline_then_given_up() -> None:
    clock = FakeClock()
    calls = CommandCalls(
        deadline=5.0, backoff=Backoff(0.5, 2.0), rng=random.Random(1), sleep=clock.sleep, clock=clock
    )

    async def unavailable() -> None:
        raise FHIRServerError(503, "unavailable")

    with pytest.raises(GiveUp) as gave_up:
        await calls.call(unavailable)
    error = gave_up.value.failure.error
    assert error.http_status == 503 and error.retriable and "deadline passed" in error.message
    assert calls.attempts > 2 and clock.now <= 5.0
    assert all(s <= 2.0 for s in clock.slept)


async def test_retry_after_is_honoured_and_permanent_errors_are_not_retried() -> None:
    clock = FakeClock()
    calls = CommandCalls(deadline=60.0, rng=random.Random(1), sleep=clock.sleep, clock=clock)
    answers: list[Exception | None] = [FHIRRateLimited(429, "slow", retry_after=7.0), None]

    async def flaky() -> str:
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return "ok"

    assert await calls.call(flaky) == "ok"
    assert clock.slept[0] >= 7.0 and calls.attempts == 2

    async def refused() -> None:
        raise FHIRBadRequest(400, "bad")

    with pytest.raises(GiveUp):
        await calls.call(refused)
    assert calls.attempts == 3


async def test_an_ambiguous_create_is_handed_back_not_retried() -> None:
    clock = FakeClock()
    calls = CommandCalls(deadline=60.0, sleep=clock.sleep, clock=clock)

    async def timed_out() -> None:
        raise FHIRTimeout("read timed out")

    with pytest.raises(AmbiguousCreate):
        await calls.call(timed_out, creating=True)
    assert calls.attempts == 1 and clock.slept == []


# -- identity: marker and recovery query --------------------------------------------------------------------
def test_marker_values_are_safe_in_a_token_search() -> None:
    assert marker_value("conn", "order-17.a:b@c") == "conn/order-17.a:b@c"
    for hostile in ("a,b", "a|b", "a\\,b", "ä", "a b", "x" * 129):
        value = marker_value("conn", hostile)
        assert value.startswith("conn/sha256-") and not set(value) & set(",|\\$ ")
    assert marker_value("conn", "a,b") != marker_value("conn", "a|b")


def test_marker_is_added_once_and_recognised() -> None:
    marked = with_marker(
        with_marker({"resourceType": "Patient", "identifier": [{"value": "1"}]}, "c/1"), "c/1"
    )
    assert [i.get("system") for i in marked["identifier"]] == [None, MARKER_SYSTEM]
    assert carries_marker(marked, "c/1") and not carries_marker(marked, "c/2")


def test_recovery_queries_use_what_the_server_searches() -> None:
    patient = with_marker({"resourceType": "Patient", "name": [{"family": "X"}]}, "c/1")
    assert recovery_query(caps(), patient, "c/1") == [("identifier", f"{MARKER_SYSTEM}|c/1")]
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "effectiveDateTime": "2031-01-02T10:00:00Z",
    }
    assert recovery_query(caps(), obs, "c/1") == [
        ("patient", "p1"),
        ("code", "http://loinc.org|85354-9"),
        ("date", "ge2031-01-01"),
        ("date", "le2031-01-03"),
    ]
    assert recovery_query(caps(), {**obs, "subject": None}, "c/1") is None  # Epic needs a patient
    encounter = {"resourceType": "Encounter", "subject": {"reference": "Patient/p1"}}
    assert recovery_query(caps(epic=False), encounter, "c/1") == [
        ("patient", "p1"),
        ("identifier", f"{MARKER_SYSTEM}|c/1"),
    ]


def test_natural_keys_find_what_a_resource_is_without_the_marker() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "effectiveDateTime": "2031-01-02T10:00:00Z",
    }
    assert natural_key_query(caps(), obs) == [
        ("patient", "p1"),
        ("code", "http://loinc.org|85354-9"),
        ("date", "ge2031-01-01"),
        ("date", "le2031-01-03"),
    ]
    assert same_natural_key(obs, {**obs, "id": "o1", "effectiveDateTime": "2031-01-02T10:00:00.000+00:00"})
    assert not same_natural_key(obs, {**obs, "effectiveDateTime": "2031-01-02T10:01:00Z"})
    assert not same_natural_key(obs, {**obs, "subject": {"reference": "Patient/p2"}})
    note = {
        "resourceType": "DocumentReference",
        "subject": {"reference": "Patient/p1"},
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "context": {"encounter": [{"reference": "Encounter/e1"}]},
        "date": "2031-01-02T10:00:00Z",
    }
    assert same_natural_key(note, {**note, "id": "d1"})
    assert not same_natural_key(note, {**note, "context": {"encounter": [{"reference": "Encounter/e2"}]}})
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "Lin", "given": ["Derrick"]}],
        "birthDate": "1973-06-03",
        "identifier": [{"system": MARKER_SYSTEM, "value": "c/1"}],
    }
    assert natural_key_query(caps(), patient) == [
        ("family", "Lin"),
        ("given", "Derrick"),
        ("birthdate", "1973-06-03"),
    ]
    assert same_natural_key(
        patient, {**patient, "name": [{"family": "LIN", "given": ["derrick"]}], "id": "p"}
    )
    with_mrn = {**patient, "identifier": [{"system": "urn:mrn", "value": "42"}]}
    assert natural_key_query(caps(), with_mrn) == [("identifier", "urn:mrn|42")]
    assert natural_key_query(caps(), {"resourceType": "Encounter"}) is None


# -- the executor against a mock server ------------------------------------------------------------------
BASE = "https://epic.example.org/api/FHIR/R4/"
BASE_PATH = "/api/FHIR/R4/Patient"


class MockEhr:
    """Answers like Epic: empty-bodied 201 creates (optionally without Location), Bundle searches."""

    def __init__(
        self, *, location: bool = True, existing: list[dict[str, Any]] | None = None, more_pages: bool = False
    ) -> None:
        self.location = location
        self.more_pages = more_pages
        self.stored: list[dict[str, Any]] = list(existing or [])
        self.requests: list[tuple[str, str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        rtype = request.url.path.rsplit("/", 1)[-1]
        headers = {"Content-Type": "application/fhir+json"}
        if request.method == "POST":
            resource = json.loads(request.content)
            resource["id"] = f"new{len(self.stored)}"
            self.stored.append(resource)
            location = {"Location": f"{BASE}{rtype}/{resource['id']}"} if self.location else {}
            return httpx.Response(201, headers=location)
        if request.url.path.count("/") > BASE_PATH.count("/"):  # a read: <base><Type>/<id>
            rid = request.url.path.rsplit("/", 1)[-1]
            found = [r for r in self.stored if r["id"] == rid]
            return httpx.Response(200, json=found[0], headers=headers)
        identifier = request.url.params.get("identifier", "")
        matches = [
            r
            for r in self.stored
            if r["resourceType"] == rtype
            and any(f"{i.get('system')}|{i.get('value')}" == identifier for i in r.get("identifier", []))
        ]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in matches],
        }
        if self.more_pages:  # an endless next link, like a search far larger than the page cap
            bundle["link"] = [{"relation": "next", "url": f"{BASE}{rtype}?sessionID={len(self.requests)}"}]
        return httpx.Response(200, json=bundle, headers=headers)


def executor(ehr: MockEhr, make_config: Any, **sink: Any) -> FHIRExecutor:
    config = make_config(
        resources={
            t: {"triggers": [], "actions": ["create", "find"]}
            for t in ("Patient", "Encounter", "Observation")
        },
        sink={"ambiguous_settle_s": 0, **sink},
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(ehr.handle))
    fhir = FHIRClient(base_url=BASE, http=http, retry=RetryPolicy(max_attempts=1))

    async def capabilities() -> Capabilities:
        return caps()

    return FHIRExecutor(fhir, config, capabilities=capabilities)


def command(rtype: str, action: str, command_id: str = "c1", **extra: Any) -> Command:
    return Command(command_id, Action(action), rtype, Source("t", 0, 0, None), **extra)


async def test_a_create_answered_without_any_id_is_found_by_its_marker(make_config: Any) -> None:
    ehr = MockEhr(location=False)
    outcome = await executor(ehr, make_config).execute(
        command("Patient", "CREATE", fields={"family_name": "Lin"}), recovering=False
    )
    assert (outcome.status, outcome.effect, outcome.resource_ids) == (
        Status.SUCCEEDED,
        Effect.CREATED,
        ("new0",),
    )
    assert [m for m, _ in ehr.requests] == ["POST", "GET"]
    assert carries_marker(outcome.resources[0], "test/c1")


async def test_recovering_finds_the_earlier_create_and_does_not_post(make_config: Any) -> None:
    earlier = with_marker({"resourceType": "Patient", "id": "old1", "name": [{"family": "Lin"}]}, "test/c1")
    ehr = MockEhr(existing=[earlier])
    outcome = await executor(ehr, make_config).execute(
        command("Patient", "CREATE", fields={"family_name": "Lin"}), recovering=True
    )
    assert (outcome.effect, outcome.resource_ids) == (Effect.CREATED, ("old1",))
    assert [m for m, _ in ehr.requests] == ["GET"]


async def test_recovering_without_a_way_to_check_fails_instead_of_creating(make_config: Any) -> None:
    ehr = MockEhr()
    outcome = await executor(ehr, make_config, mark_creates=False).execute(
        command("Patient", "CREATE", fields={"family_name": "Lin"}), recovering=True
    )
    assert outcome.status is Status.FAILED and outcome.error is not None
    assert "may have created it" in outcome.error.message
    assert ehr.requests == []


async def test_encounter_create_and_ensure_are_rejected_on_epic_without_a_request(make_config: Any) -> None:
    ehr = MockEhr()
    run = executor(ehr, make_config)
    for action, extra in (("CREATE", {}), ("ENSURE", {"criteria": {"patient": "p1"}})):
        outcome = await run.execute(
            command("Encounter", action, fields={"patient_id": "p1"}, **extra), recovering=False
        )
        assert outcome.status is Status.REJECTED and outcome.error is not None
        assert "Epic does not allow creating an Encounter" in outcome.error.message
    assert ehr.requests == []


async def test_actions_not_enabled_for_the_connection_are_rejected(make_config: Any) -> None:
    ehr = MockEhr()
    outcome = await executor(ehr, make_config).execute(
        command("DocumentReference", "FIND", criteria={"patient": "p1"}), recovering=False
    )
    assert outcome.status is Status.REJECTED and ehr.requests == []


async def test_ensure_does_not_create_when_the_page_cap_hid_part_of_the_search(make_config: Any) -> None:
    ehr = MockEhr(more_pages=True)
    outcome = await executor(ehr, make_config, find_max_pages=2).execute(
        command("Patient", "ENSURE", criteria={"identifier": "a|b"}, fields={"family_name": "Lin"}),
        recovering=False,
    )
    assert (outcome.status, outcome.truncated) == (Status.FAILED, True)
    assert outcome.error is not None and "more than 2 pages" in outcome.error.message
    assert [m for m, _ in ehr.requests] == ["GET", "GET"]  # no POST


def test_committed_results_and_dead_letters_are_counted() -> None:
    from prometheus_client import CollectorRegistry

    from bridge.metrics import Metrics
    from bridge.sink.decode import DeadLetter, DeadLetterReason
    from bridge.sink.service import metrics_recorder

    registry = CollectorRegistry()
    record = metrics_recorder(Metrics(registry), "conn")
    cmd = command("Patient", "CREATE")
    record(cmd, {"status": "SUCCEEDED", "received_at": 1_000, "completed_at": 1_250}, None)
    record(cmd, {"status": "SUCCEEDED", "replayed": True, "received_at": 0, "completed_at": 0}, None)
    record(None, None, DeadLetter(DeadLetterReason.OVERSIZED, "too big"))
    labels = {"connection": "conn", "resource": "patient", "action": "CREATE"}
    assert registry.get_sample_value("epic_bridge_commands_total", {**labels, "status": "SUCCEEDED"}) == 2
    assert registry.get_sample_value("epic_bridge_command_duration_seconds_sum", labels) == 0.25
    assert (
        registry.get_sample_value(
            "epic_bridge_dlq_records_total", {"connection": "conn", "reason": "oversized"}
        )
        == 1
    )
