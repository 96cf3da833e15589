from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from bridge.fhir.budget import RequestBudget
from bridge.fhir.client import FHIRClient, SearchPage, parse_bundle
from bridge.fhir.errors import (
    EPIC_CODE_SYSTEM,
    CrossOriginLinkError,
    FHIRBadRequest,
    FHIRConnectionError,
    FHIRForbidden,
    FHIRNotFound,
    FHIRNotSent,
    FHIRProtocolError,
    FHIRRateLimited,
    FHIRServerError,
    FHIRTimeout,
)
from bridge.retry import RetryPolicy

BASE = "https://epic.example.org/interconnect-fhir-oauth/api/FHIR/R4/"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def outcome(code: str, text: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": severity,
                "code": "processing",
                "details": {
                    "coding": [{"system": EPIC_CODE_SYSTEM, "code": code, "display": text}],
                    "text": text,
                },
            }
        ],
    }


def bundle(
    resources: list[dict[str, Any]], next_url: str | None = None, extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    links = [{"relation": "self", "url": BASE + "x"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    entries = [{"resource": r, "search": {"mode": "match"}} for r in resources] + (extra or [])
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": links,
        "entry": entries,
    }


class Recorder:
    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def client(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> tuple[FHIRClient, list[float]]:
    slept: list[float] = []
    now = [0.0]

    async def sleep(s: float) -> None:  # a fake clock shared by the retry loop and the limiter
        slept.append(s)
        now[0] += s

    async def limiter_sleep(s: float) -> None:
        now[0] += s

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    kw.setdefault("retry", RetryPolicy(max_attempts=4, base_delay_s=0.01))
    budget = RequestBudget(1000, 1000, clock=lambda: now[0], sleep=limiter_sleep)
    c = FHIRClient(base_url=BASE, http=http, client_id="client-1", sleep=sleep, budget=budget, **kw)
    return c, slept


async def test_headers_on_every_request() -> None:
    rec = Recorder(
        lambda r: httpx.Response(200, json={"resourceType": "Patient", "id": "p1"}, headers=FHIR_JSON)
    )
    c, _ = client(rec)
    assert (await c.read("Patient", "p1"))["id"] == "p1"
    [req] = rec.requests
    assert req.headers["Accept"] == "application/fhir+json"
    assert req.headers["Epic-Client-ID"] == "client-1"
    assert str(req.url) == BASE + "Patient/p1"


async def test_paging_follows_next_exactly_and_streams() -> None:
    next1 = BASE + "Observation?sessionID=16-E90E%2F7A&weird=a+b"
    next2 = BASE + "Observation?sessionID=16-FFFF"

    def handle(r: httpx.Request) -> httpx.Response:
        if "sessionID=16-E90E" in str(r.url):
            return httpx.Response(200, json=bundle([], next2), headers=FHIR_JSON)  # an empty page mid-way
        if "sessionID=16-FFFF" in str(r.url):
            return httpx.Response(
                200, json=bundle([{"resourceType": "Observation", "id": "o3"}]), headers=FHIR_JSON
            )
        return httpx.Response(
            200,
            json=bundle(
                [{"resourceType": "Observation", "id": "o1"}, {"resourceType": "Observation", "id": "o2"}],
                next1,
            ),
            headers=FHIR_JSON,
        )

    rec = Recorder(handle)
    c, _ = client(rec)
    pages = [p async for p in c.search_pages("Observation", {"patient": "p1", "category": "laboratory"})]
    assert [len(p.resources) for p in pages] == [2, 0, 1] and [p.number for p in pages] == [1, 2, 3]
    assert str(rec.requests[1].url) == next1 and str(rec.requests[2].url) == next2
    assert rec.requests[0].url.params["category"] == "laboratory"
    ids = [r["id"] async for r in c.search("Observation", [("patient", "p1"), ("category", "laboratory")])]
    assert ids == ["o1", "o2", "o3"]


async def test_cross_origin_next_refused_before_any_request() -> None:
    def handle(r: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json=bundle(
                [{"resourceType": "Patient", "id": "p"}], "https://attacker.example.com/steal?sessionID=1"
            ),
            headers=FHIR_JSON,
        )

    rec = Recorder(handle)
    c, _ = client(rec)
    pages = []
    with pytest.raises(CrossOriginLinkError, match=r"attacker\.example\.com"):
        async for page in c.search_pages("Patient", {"_id": "p"}):
            pages.append(page)
    assert len(pages) == 1 and len(rec.requests) == 1
    for bad in ("http://epic.example.org/x", "https://epic.example.org:8443/x", "//evil.example.com/x"):
        with pytest.raises(CrossOriginLinkError):
            c.resolve(bad)


async def test_outcome_entries_are_messages_not_resources() -> None:
    empty = bundle(
        [],
        extra=[
            {
                "resource": outcome("4101", "Resource request returns no results.", "warning"),
                "search": {"mode": "outcome"},
            }
        ],
    )
    page = parse_bundle(empty)
    assert page.resources == [] and page.messages[0].code == "4101" and page.messages[0].severity == "warning"
    mixed = bundle(
        [{"resourceType": "Patient", "id": "p"}],
        extra=[
            {"resource": outcome("59204", "Client not authorized for some", "warning")},
            {"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}},
        ],
    )
    page = parse_bundle(mixed)
    assert [r["id"] for r in page.resources] == ["p"] and page.messages[0].code == "59204"
    assert page.included[0]["id"] == "o"


def test_a_warning_in_a_successful_search_marks_the_page_incomplete_but_no_results_does_not() -> None:
    def page_with(*issues: tuple[str, str]) -> SearchPage:
        extra = [{"resource": outcome(code, "text", severity)} for code, severity in issues]
        return parse_bundle(bundle([], extra=extra))

    assert [m.code for m in page_with(("59204", "warning")).warnings] == ["59204"]
    assert page_with(("4101", "warning")).warnings == []
    assert page_with(("59100", "information")).warnings == []
    assert [m.code for m in page_with(("4101", "warning"), ("99999", "error")).warnings] == ["99999"]


@pytest.mark.parametrize(
    ("status", "cls"), [(400, FHIRBadRequest), (403, FHIRForbidden), (404, FHIRNotFound)]
)
async def test_operation_outcome_becomes_typed_error(status: int, cls: type[Exception]) -> None:
    body = outcome("59159", "Search requires demographics")
    c, _ = client(lambda r: httpx.Response(status, json=body, headers=FHIR_JSON))
    with pytest.raises(cls) as exc:
        await c.send("GET", "Patient", params={"name": "x"})
    err = exc.value
    assert err.status == status and err.code == "59159" and err.outcome == body  # type: ignore[attr-defined]
    assert "Search requires demographics" in str(err)


async def test_html_404_and_xml_answers() -> None:
    c, _ = client(
        lambda r: httpx.Response(404, text="<html>nope</html>", headers={"Content-Type": "text/html"})
    )
    with pytest.raises(FHIRNotFound, match="HTML page"):
        await c.read("Foo", "1")
    c, _ = client(
        lambda r: httpx.Response(200, text="<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    )
    with pytest.raises(FHIRProtocolError, match="expected FHIR JSON"):
        await c.read("Patient", "1")


async def test_retries_honour_retry_after_then_succeed() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(503, headers={"Retry-After": "1"}),
        httpx.Response(504),
        httpx.Response(200, json={"resourceType": "Patient", "id": "p"}, headers=FHIR_JSON),
    ]
    c, slept = client(lambda r: answers.pop(0))
    await c.read("Patient", "p")
    assert slept[0] >= 3 and slept[1] >= 1 and slept[2] < 1
    assert c.budget.throttles == 2 and c.retries == 3


async def test_gives_up_with_typed_error() -> None:
    c, slept = client(lambda r: httpx.Response(429, headers={"Retry-After": "2"}))
    with pytest.raises(FHIRRateLimited) as exc:
        await c.read("Patient", "p")
    assert exc.value.retry_after == 2 and len(slept) == 3
    c, _ = client(lambda r: httpx.Response(500))
    with pytest.raises(FHIRServerError):
        await c.read("Patient", "p")


async def test_transport_errors_translated_and_retried() -> None:
    calls = 0

    def handle(r: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.RemoteProtocolError("server disconnected", request=r)
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p"}, headers=FHIR_JSON)

    c, _ = client(handle)
    await c.read("Patient", "p")
    assert calls == 3

    def timeout(r: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=r)

    c, _ = client(timeout)
    with pytest.raises(FHIRTimeout):
        await c.read("Patient", "p")

    def refused(r: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=r)

    c, _ = client(refused)
    with pytest.raises(FHIRConnectionError):
        await c.read("Patient", "p")


async def test_create_not_retried_when_it_may_have_happened() -> None:
    rec = Recorder(lambda r: httpx.Response(500))
    c, _ = client(rec)
    with pytest.raises(FHIRServerError):
        await c.create("Patient", {"resourceType": "Patient"})
    assert len(rec.requests) == 1

    def timeout(r: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=r)

    rec = Recorder(timeout)
    c, _ = client(rec)
    with pytest.raises(FHIRTimeout):
        await c.create("Patient", {"resourceType": "Patient"})
    assert len(rec.requests) == 1


async def test_create_retried_on_429_and_id_from_location() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "1"}),
        httpx.Response(201, headers={"Location": BASE + "Patient/eNEW123/_history/1"}),
    ]
    rec = Recorder(lambda r: answers.pop(0))
    c, _ = client(rec)
    result = await c.create("Patient", {"resourceType": "Patient", "name": [{"family": "Lin"}]})
    assert result.id == "eNEW123" and result.status == 201 and result.resource is None
    assert len(rec.requests) == 2
    assert rec.requests[1].headers["Content-Type"] == "application/fhir+json"
    assert json.loads(rec.requests[1].content)["name"][0]["family"] == "Lin"


async def test_capabilities_read_once() -> None:
    rec = Recorder(
        lambda r: httpx.Response(
            200,
            headers=FHIR_JSON,
            json={
                "resourceType": "CapabilityStatement",
                "software": {"name": "Epic"},
                "fhirVersion": "4.0.1",
                "rest": [
                    {"mode": "server", "resource": [{"type": "Patient", "interaction": [{"code": "create"}]}]}
                ],
            },
        )
    )
    c, _ = client(rec)
    caps = await c.capabilities()
    assert caps.supports_create("Patient") and (await c.capabilities()) is caps
    assert len(rec.requests) == 1


async def test_paging_loop_detected() -> None:
    loop = BASE + "Patient?sessionID=same"
    c, _ = client(lambda r: httpx.Response(200, json=bundle([], loop), headers=FHIR_JSON))
    with pytest.raises(FHIRProtocolError, match="paging loop"):
        async for _ in c.search_pages("Patient", {"_id": "x"}):
            pass


async def test_metrics_recorded() -> None:
    from bridge.metrics import Metrics

    metrics = Metrics()
    answers = [
        httpx.Response(429, headers={"Retry-After": "1"}),
        httpx.Response(200, json={"resourceType": "Patient", "id": "p"}, headers=FHIR_JSON),
    ]
    c, _ = client(lambda r: answers.pop(0), metrics=metrics, connection="conn")
    await c.read("Patient", "p")

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("epic_bridge_fhir_requests_total", connection="conn", method="GET", status_class="2xx") == 1
    assert value("epic_bridge_fhir_retries_total", connection="conn", reason="429") == 1
    assert value("epic_bridge_fhir_throttled_total", connection="conn") == 1


async def test_ids_and_types_are_validated_before_any_request() -> None:
    rec = Recorder(lambda r: httpx.Response(200))
    c, _ = client(rec)
    for bad_id in ("../Observation", "a/b", "", "x?y=1"):
        with pytest.raises(ValueError, match="not a FHIR id"):
            await c.read("Patient", bad_id)
    with pytest.raises(ValueError, match="not a FHIR resource type"):
        await c.read("patient/../x", "1")
    assert rec.requests == []


async def test_a_create_is_never_sent_after_its_not_after_time() -> None:
    """The sink promises, in a create's intent, not to send it after a time: the client checks the clock
    once the request is ready to go (budget passed, token on), and refuses it rather than send it late."""
    rec = Recorder(lambda r: httpx.Response(201, headers={"Location": BASE + "Patient/eNEW"}))
    c, _ = client(rec)
    with pytest.raises(FHIRNotSent, match="not sent"):
        await c.create("Patient", {"resourceType": "Patient"}, not_after=time.monotonic() - 0.01)
    assert rec.requests == []
    result = await c.create("Patient", {"resourceType": "Patient"}, not_after=time.monotonic() + 30)
    assert result.id == "eNEW" and len(rec.requests) == 1
