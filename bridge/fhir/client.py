"""Async FHIR R4 client: one pooled httpx client per connection, retries, request budget, typed errors.

- every request sends ``Accept: application/fhir+json`` (Epic answers XML otherwise) and ``Epic-Client-ID``;
- ``next`` links are followed exactly as given, but only on the connection's own origin;
- ``search.mode = outcome`` entries (and any OperationOutcome entry) are messages, not resources;
- search results stream page by page (``search_pages``) or resource by resource (``search``);
- every request (each retry too) draws from the connection's request budget at the client's priority.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx

from bridge.auth.manager import CrossOriginAuthError, origin_of
from bridge.fhir.budget import Priority, RequestBudget
from bridge.fhir.capabilities import Capabilities
from bridge.fhir.errors import (
    CrossOriginLinkError,
    FHIRInvalidRequest,
    FHIRNotSent,
    FHIRProtocolError,
    error_from_response,
    issue_code,
    issue_text,
    outcome_issues,
    translate_transport_error,
)
from bridge.metrics import Metrics
from bridge.retry import RetryPolicy, Sleep, parse_retry_after, send_with_retry

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
Params = httpx.QueryParams | Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]]
_Primitive = str | int | float | bool | None


def _query(params: Params | None) -> httpx.QueryParams | None:
    """Normalise the accepted parameter shapes (pairs keep their order and repeats)."""
    if params is None or isinstance(params, httpx.QueryParams):
        return params
    if isinstance(params, Mapping):
        return httpx.QueryParams(params)
    pairs: list[tuple[str, _Primitive]] = [(k, v) for k, v in params]
    return httpx.QueryParams(pairs)


_ID = re.compile(r"[A-Za-z0-9\-.]{1,200}")
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


def _check_type(resource_type: str) -> None:
    if not _TYPE.fullmatch(resource_type):
        raise FHIRInvalidRequest(f"not a FHIR resource type: {resource_type!r}")


@dataclass(frozen=True)
class OutcomeMessage:
    """An informational/warning issue the server put in a Bundle (e.g. Epic 4101 "no results")."""

    severity: str
    code: str | None
    text: str


# Epic 4101 "Resource request returns no results" comes as a warning but only says the search is empty.
NOT_INCOMPLETE_CODES = frozenset({"4101"})


@dataclass(frozen=True)
class SearchPage:
    resources: list[dict[str, Any]]
    messages: list[OutcomeMessage] = field(default_factory=list)
    included: list[dict[str, Any]] = field(default_factory=list)
    total: int | None = None
    next_url: str | None = None
    number: int = 1

    @property
    def warnings(self) -> list[OutcomeMessage]:
        """The warnings (and errors) of a successful search: the page may be incomplete. Epic answers 200
        with what the client may see and a warning such as 59204 "Client not authorized for ..." for the
        rest, so an empty or short page with a warning is not the whole truth."""
        return [
            m
            for m in self.messages
            if m.severity in ("warning", "error", "fatal") and m.code not in NOT_INCOMPLETE_CODES
        ]


@dataclass(frozen=True)
class CreateResult:
    resource_type: str
    id: str | None
    location: str | None
    status: int
    resource: dict[str, Any] | None


def _messages(outcome: dict[str, Any]) -> list[OutcomeMessage]:
    return [
        OutcomeMessage(str(i.get("severity") or "information"), issue_code(i), issue_text(i))
        for i in outcome_issues(outcome)
    ]


def parse_bundle(bundle: dict[str, Any], *, number: int = 1) -> SearchPage:
    if bundle.get("resourceType") != "Bundle":
        raise FHIRProtocolError(f"expected a Bundle, got {bundle.get('resourceType')!r}")
    resources: list[dict[str, Any]] = []
    included: list[dict[str, Any]] = []
    messages: list[OutcomeMessage] = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        res = entry["resource"]
        search: dict[str, Any] = entry["search"] if isinstance(entry.get("search"), dict) else {}
        mode = search.get("mode")
        if mode == "outcome" or res.get("resourceType") == "OperationOutcome":
            messages.extend(_messages(res))
        elif mode == "include":
            included.append(res)
        else:
            resources.append(res)
    next_url = None
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            next_url = link["url"]
    total = bundle.get("total")
    return SearchPage(
        resources, messages, included, total if isinstance(total, int) else None, next_url, number
    )


def _id_from_location(location: str, resource_type: str) -> str | None:
    parts = httpx.URL(location).path.strip("/").split("/")
    for i, part in enumerate(parts[:-1]):
        if part == resource_type:
            return parts[i + 1]
    return None


class FHIRClient:
    """The FHIR side of one connection. Share one instance among all tasks of the connection."""

    def __init__(
        self,
        *,
        base_url: str,
        http: httpx.AsyncClient,
        auth: httpx.Auth | None = None,
        client_id: str | None = None,
        budget: RequestBudget | None = None,
        priority: Priority = Priority.SCHEDULED,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        connection: str = "",
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._origin = origin_of(self.base_url)
        self._http = http
        self._auth = auth
        self._client_id = client_id
        self.budget = budget or RequestBudget(10.0, 10)
        self.priority = priority
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._capabilities: Capabilities | None = None
        self._cap_lock = asyncio.Lock()
        self.retries = 0
        self._metrics = metrics
        self._connection = connection

    def __repr__(self) -> str:
        return f"FHIRClient(base_url={self.base_url!r}, priority={self.priority.label})"

    # -- URLs -------------------------------------------------------------------------------------
    def resolve(self, url: str) -> str:
        """Absolute URL for ``url`` (relative to the base); refuse anything off the connection's origin."""
        absolute = urljoin(self.base_url, url)
        if origin_of(absolute) != self._origin:
            raise CrossOriginLinkError(
                f"refusing to follow a link to {httpx.URL(absolute).host!r}: it is not this connection's "
                f"server ({self._origin[1]}), and the bearer token must not leave it"
            )
        return absolute

    def _headers(self, body: bool = False) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON}
        if self._client_id:
            headers["Epic-Client-ID"] = self._client_id
        if body:
            headers["Content-Type"] = FHIR_JSON
        return headers

    # -- transport --------------------------------------------------------------------------------
    def _on_retry(
        self, attempt: int, wait: float, response: httpx.Response | None, exc: BaseException | None
    ) -> None:
        self.retries += 1
        if self._metrics is not None:
            reason = str(response.status_code) if response is not None else type(exc).__name__
            self._metrics.fhir_retries.labels(self._connection, reason).inc()

    def _on_throttled(self, retry_after: float | None) -> None:
        self.budget.on_throttled(retry_after)
        if self._metrics is not None:
            self._metrics.fhir_throttled.labels(self._connection).inc()
            self._metrics.rate_limit.labels(self._connection).set(self.budget.rate)

    async def _acquire(self) -> None:
        waited = await self.budget.acquire(self.priority)
        if waited and self._metrics is not None:
            self._metrics.rate_limiter_wait.labels(self._connection).inc(waited)

    def _observe(self, method: str, status: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.fhir_requests.labels(self._connection, method, status).inc()
            self._metrics.fhir_request_duration.labels(self._connection, method).observe(
                time.monotonic() - started
            )

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Params | None = None,
        body: dict[str, Any] | None = None,
        idempotent: bool = True,
        authenticated: bool = True,
        not_after: float | None = None,
    ) -> httpx.Response:
        """Send with rate limit, retries and auth; return a success response or raise a typed error.

        `not_after` (a time.monotonic() value): the request must not leave after it. It is checked as late
        as the client can, once the budget let it through and the token is on it (FHIRNotSent)."""
        target = self.resolve(url)
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode()
        path = httpx.URL(target).path
        query = _query(params)

        auth: httpx.Auth | None = self._auth if authenticated else None
        if not_after is not None:
            auth = _NotAfter(auth, not_after, f"{method} {path}")

        async def once() -> httpx.Response:
            await self._acquire()
            return await self._http.request(
                method,
                target,
                params=query,
                content=content,
                headers=self._headers(body is not None),
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
            )

        started = time.monotonic()
        try:
            response = await send_with_retry(
                once,
                self._retry,
                idempotent=idempotent,
                sleep=self._sleep,
                rng=self._rng,
                on_retry=self._on_retry,
                on_throttled=self._on_throttled,
            )
        except httpx.TransportError as exc:
            self._observe(method, "transport_error", started)
            raise translate_transport_error(exc, method, path) from None
        except CrossOriginAuthError as exc:
            raise CrossOriginLinkError(str(exc)) from None
        log.debug(
            "%s %s -> %d in %.0f ms", method, path, response.status_code, (time.monotonic() - started) * 1000
        )
        self._observe(method, f"{response.status_code // 100}xx", started)
        if response.is_success:
            return response
        raise error_from_response(
            response, retry_after=parse_retry_after(response.headers.get("Retry-After"))
        )

    @staticmethod
    def json_of(response: httpx.Response) -> dict[str, Any]:
        ctype = response.headers.get("Content-Type", "")
        if "json" not in ctype:
            raise FHIRProtocolError(
                f"{response.request.method} {response.request.url.path}: expected FHIR JSON, got "
                f"{ctype or 'no content type'}"
            )
        try:
            doc = response.json()
        except ValueError:
            raise FHIRProtocolError(f"{response.request.url.path}: body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise FHIRProtocolError(f"{response.request.url.path}: body is not a JSON object")
        return doc

    # -- FHIR interactions ------------------------------------------------------------------------
    async def capabilities(self, *, refresh: bool = False) -> Capabilities:
        """The CapabilityStatement, read once and kept."""
        async with self._cap_lock:
            if self._capabilities is None or refresh:
                doc = self.json_of(await self.send("GET", "metadata"))
                if doc.get("resourceType") != "CapabilityStatement":
                    raise FHIRProtocolError("metadata did not answer a CapabilityStatement")
                self._capabilities = Capabilities.from_statement(doc)
            return self._capabilities

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        _check_type(resource_type)
        if not _ID.fullmatch(resource_id):
            raise FHIRInvalidRequest(
                f"not a FHIR id: {resource_id!r}"
            )  # ids may come from commands: no path tricks
        doc = self.json_of(await self.send("GET", f"{resource_type}/{resource_id}"))
        if doc.get("resourceType") != resource_type:
            raise FHIRProtocolError(
                f"read {resource_type}/{resource_id} answered {doc.get('resourceType')!r}"
            )
        return doc

    async def search_pages(
        self, resource_type: str, params: Params | None = None, *, max_pages: int | None = None
    ) -> AsyncIterator[SearchPage]:
        """Yield each page of a search; follows ``next`` exactly as given, same origin only."""
        _check_type(resource_type)
        response = await self.send("GET", resource_type, params=params)
        number = 1
        seen: set[str] = set()
        while True:
            page = parse_bundle(self.json_of(response), number=number)
            yield page
            if page.next_url is None or (max_pages is not None and number >= max_pages):
                return
            if page.next_url in seen:
                raise FHIRProtocolError(f"paging loop: the server repeated a next link on page {number}")
            seen.add(page.next_url)
            next_url = self.resolve(page.next_url)  # raises CrossOriginLinkError before any request
            number += 1
            response = await self.send("GET", next_url)

    async def search(self, resource_type: str, params: Params | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield matching resources of ``resource_type`` across all pages (messages are logged)."""
        async for page in self.search_pages(resource_type, params):
            for msg in page.messages:
                # warnings such as Epic 59204 ("Client not authorized for some ...") mean incomplete results;
                # the code and type only: the server's text can name what it withheld
                level = logging.WARNING if msg in page.warnings else logging.DEBUG
                log.log(level, "search %s: %s %s", resource_type, msg.severity, msg.code)
            for res in page.resources:
                yield res

    async def create(
        self, resource_type: str, resource: dict[str, Any], *, not_after: float | None = None
    ) -> CreateResult:
        """POST a new resource. Not retried once it may have reached the server (no duplicates); not sent
        at all after `not_after` (see send)."""
        _check_type(resource_type)
        if resource.get("resourceType") != resource_type:
            raise ValueError(f"resourceType must be {resource_type}")
        response = await self.send(
            "POST", resource_type, body=resource, idempotent=False, not_after=not_after
        )
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        body: dict[str, Any] | None = None
        if response.content.strip():
            doc = self.json_of(response)
            body = doc if doc.get("resourceType") == resource_type else None
        rid = (body or {}).get("id") or (_id_from_location(location, resource_type) if location else None)
        return CreateResult(resource_type, str(rid) if rid else None, location, response.status_code, body)

    async def operation(
        self,
        url: str,
        parameters: dict[str, Any],
        *,
        idempotent: bool = False,
        not_after: float | None = None,
    ) -> dict[str, Any]:
        """POST a FHIR operation (e.g. ``../STU3/Appointment/$find``), relative to the base or absolute."""
        response = await self.send("POST", url, body=parameters, idempotent=idempotent, not_after=not_after)
        return self.json_of(response)


class _NotAfter(httpx.Auth):
    """Wraps the request's auth flow: each request it yields for sending (with its token on, after a
    refresh too) is refused once `not_after` has passed."""

    requires_response_body = False

    def __init__(self, inner: httpx.Auth | None, not_after: float, what: str) -> None:
        self._inner = inner
        self._not_after = not_after
        self._what = what

    def sync_auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        raise RuntimeError("works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self._inner.async_auth_flow(request) if self._inner is not None else _as_is(request)
        outgoing = await flow.__anext__()
        while True:
            late = time.monotonic() - self._not_after
            if late > 0:
                raise FHIRNotSent(f"{self._what} not sent: its time had passed {late:.1f}s ago")
            response = yield outgoing
            try:
                outgoing = await flow.asend(response)
            except StopAsyncIteration:
                return


async def _as_is(request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
    yield request
