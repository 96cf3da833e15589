"""FHIR R4 endpoints: metadata, SMART discovery, read, search (+ paging sessions), create."""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from epic_sim import outcomes
from epic_sim.capability import capability_statement
from epic_sim.config import FHIR_PREFIX
from epic_sim.edge import LOG_ENTRY_KEY
from epic_sim.oauth import Interaction, OAuthHTTPException
from epic_sim.paging import PageState, chance, count_matches, fetch_page
from epic_sim.partial import not_authorized_warning
from epic_sim.render import bundle, fhir_response, html_not_found, match_entry, outcome_entry, resource_text
from epic_sim.roster import join_roster
from epic_sim.search_rules import SEARCHABLE_TYPES, SearchError, build_plan
from epic_sim.seed import MRN_SYSTEM
from epic_sim.state import SimState, sim_of
from epic_sim.store import RESOURCE_TYPES
from epic_sim.writes import (
    EPIC_CREATE_VALIDATORS,
    EPIC_NO_CREATE_TEXT,
    WriteError,
    drop_unknown_identifiers,
)


class FhirError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers


def _guard(request: Request, rtype: str, interaction: Interaction) -> Response | None:
    """The OAuth refusal to answer with, or None when the token allows the call."""
    sim = sim_of(request)
    try:
        sim.oauth.authorize(request, rtype, interaction)
    except OAuthHTTPException as exc:
        outcome = getattr(exc, "outcome", None)
        if outcome is not None:
            return fhir_response(request, sim.config.profile, outcome, status=exc.response.status_code)
        return exc.response
    return None


def _error(request: Request, status: int, body: dict[str, Any]) -> Response:
    return fhir_response(request, sim_of(request).config.profile, body, status=status)


async def metadata(request: Request) -> Response:
    sim = sim_of(request)
    return fhir_response(request, sim.config.profile, capability_statement(sim.config))


async def smart_configuration(request: Request) -> Response:
    return JSONResponse(sim_of(request).oauth.smart_configuration())


async def not_found(request: Request) -> Response:
    return html_not_found()


# --- search ---------------------------------------------------------------------------------------


def _page_response(request: Request, sim: SimState, state: PageState, self_url: str) -> Response:
    config = sim.config
    plan = state.plan
    if state.total is None and not (config.profile == "epic" and plan.count_given):
        state = dataclasses.replace(state, total=count_matches(sim.store, plan))
    page = fetch_page(sim.store, state, seed=config.seed, short_rate=config.effective_short_page_rate)
    partial = sim.partial.rule_for((request.scope.get("state") or {}).get("client_id"), plan.rtype)
    shown = [] if partial is not None and partial.hide else page.rows
    entries = [match_entry(config.fhir_base, row, config.profile) for row in shown]
    if config.profile == "epic" and plan.count_given:
        total = len(shown)
    elif partial is not None and partial.hide:
        total = 0
    else:
        total = state.total or 0
    outcome_issues: list[dict[str, Any]] = []
    if state.page_no == 0:
        outcome_issues += plan.informational
    if config.profile == "epic":
        if state.page_no == 0 and not page.rows and page.next_state is None:
            outcome_issues.append(
                outcomes.issue(
                    "warning",
                    "processing",
                    outcomes.DISPLAYS[outcomes.NO_RESULTS],
                    epic_code=outcomes.NO_RESULTS,
                )
            )
        if partial is not None or chance(config.seed, plan, state.page_no, "warn", config.warning_rate):
            outcome_issues.append(not_authorized_warning(plan.rtype))
    if outcome_issues:
        entries.append(outcome_entry(outcomes.outcome(*outcome_issues)))
    next_url = None
    if page.next_state is not None:
        sid = sim.sessions.add(page.next_state)
        if config.profile == "epic":
            next_url = f"{config.fhir_base}{plan.rtype}?sessionID={sid}"
        else:
            next_url = (
                f"{config.fhir_base}?_getpages={sid}&_getpagesoffset={page.next_state.offset}"
                f"&_count={plan.page_size}&_bundletype=searchset"
            )
    body = bundle(total=total, self_url=self_url, next_url=next_url, entries=entries)
    return fhir_response(request, config.profile, body)


def _self_url(sim: SimState, rtype: str, pairs: list[tuple[str, str]]) -> str:
    query = urlencode(pairs)
    return f"{sim.config.fhir_base}{rtype}" + (f"?{query}" if query else "")


def _search(request: Request, rtype: str, pairs: list[tuple[str, str]]) -> Response:
    sim = sim_of(request)
    if rtype not in RESOURCE_TYPES:
        return html_not_found()
    denied = _guard(request, rtype, "search")
    if denied is not None:
        return denied
    if rtype not in SEARCHABLE_TYPES:
        return _error(request, 405, outcomes.error("not-supported", f"Search is not supported for {rtype}."))
    session_id = next((v for k, v in pairs if k == "sessionID"), None)
    if session_id is not None and sim.config.profile == "epic":
        state = sim.sessions.get(session_id)
        if state is None or state.plan.rtype != rtype:
            return _error(
                request, 400, outcomes.error("invalid", "The search session is invalid or has expired.")
            )
        return _page_response(request, sim, state, _self_url(sim, rtype, pairs))
    strict = "handling=strict" in request.headers.get("prefer", "")
    try:
        plan = build_plan(sim.config.profile, rtype, pairs, strict=strict and sim.config.profile == "generic")
    except SearchError as exc:
        return _error(request, exc.status, exc.body)
    return _page_response(request, sim, PageState(plan), _self_url(sim, rtype, pairs))


async def type_endpoint(request: Request) -> Response:
    rtype = request.path_params["rtype"]
    if request.method == "GET":
        return _search(request, rtype, parse_qsl(request.url.query, keep_blank_values=True))
    return await _create(request, rtype)


async def search_post(request: Request) -> Response:
    body = (await request.body()).decode()
    form = parse_qsl(body, keep_blank_values=True)
    entry = request.scope.get(LOG_ENTRY_KEY)
    if entry is not None:
        for name, value in form:
            entry["query"].setdefault(name, []).append(value)
    pairs = parse_qsl(request.url.query, keep_blank_values=True) + form
    return _search(request, request.path_params["rtype"], pairs)


async def base_endpoint(request: Request) -> Response:
    """Generic-profile paging links (`?_getpages=`) point at the base."""
    sim = sim_of(request)
    pages = request.query_params.get("_getpages")
    if sim.config.profile != "generic" or not pages:
        return html_not_found()
    state = sim.sessions.get(pages)
    if state is None:
        return _error(request, 410, outcomes.error("not-found", "Search paging session expired or unknown."))
    denied = _guard(request, state.plan.rtype, "search")
    if denied is not None:
        return denied
    return _page_response(request, sim, state, str(request.url))


# --- read -----------------------------------------------------------------------------------------


async def instance_endpoint(request: Request) -> Response:
    sim = sim_of(request)
    rtype, rid = request.path_params["rtype"], request.path_params["rid"]
    if rtype not in RESOURCE_TYPES:
        return html_not_found()
    if request.method != "GET":
        denied = _guard(request, rtype, "read")
        if denied is not None:
            return denied
        return _error(
            request, 405, outcomes.error("not-supported", f"{request.method} is not supported on {rtype}.")
        )
    denied = _guard(request, rtype, "read")
    if denied is not None:
        return denied
    row = sim.store.get(rtype, rid)
    if row is None:
        return _error(
            request,
            404,
            outcomes.error(
                "not-found",
                outcomes.DISPLAYS[outcomes.NOT_FOUND],
                epic_code=outcomes.NOT_FOUND,
                diagnostics=f"{rtype}/{rid}",
            ),
        )
    headers = (
        {"ETag": f'W/"{row.version}"', "Last-Modified": row.last_updated}
        if sim.config.profile == "generic"
        else None
    )
    return fhir_response(request, sim.config.profile, resource_text(row, sim.config.profile), headers=headers)


# --- create ---------------------------------------------------------------------------------------


async def _parse_resource(request: Request, rtype: str) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if "xml" in content_type:
        raise FhirError(415, outcomes.error("not-supported", "Only JSON request bodies are supported."))
    try:
        resource = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise FhirError(400, outcomes.error("structure", "The request body is not valid JSON.")) from None
    if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
        raise FhirError(400, outcomes.error("invalid", f"The body must be a {rtype} resource."))
    return resource


async def _create(request: Request, rtype: str) -> Response:
    sim = sim_of(request)
    if rtype not in RESOURCE_TYPES:
        return html_not_found()
    denied = _guard(request, rtype, "create")
    if denied is not None:
        return denied
    epic = sim.config.profile == "epic"
    if epic and rtype not in EPIC_CREATE_VALIDATORS:
        return _error(request, 405, outcomes.error("not-supported", EPIC_NO_CREATE_TEXT[rtype]))
    if not epic and rtype == "Group":
        return _error(request, 405, outcomes.error("not-supported", "Create is not supported for Group."))
    try:
        resource = await _parse_resource(request, rtype)
        if epic:
            EPIC_CREATE_VALIDATORS[rtype](resource, sim.store)
    except FhirError as exc:
        return _error(request, exc.status, exc.body)
    except WriteError as exc:
        return _error(request, exc.status, exc.body)
    resource["id"] = sim.new_id(rtype)
    if rtype in sim.config.drop_unknown_identifiers:
        drop_unknown_identifiers(resource)
    if epic and rtype == "Patient":
        assign_mrn(resource, sim)
    row = sim.store.insert(resource)
    if rtype == "Patient":
        join_roster(sim.store, row.id)
    location = f"{sim.config.fhir_base}{rtype}/{row.id}"
    if epic:
        # Epic answers a create with an empty body; the new id is only in Location.
        return Response(status_code=201, headers={"Location": location})
    return fhir_response(
        request,
        sim.config.profile,
        resource_text(row, sim.config.profile),
        status=201,
        headers={"Location": f"{location}/_history/{row.version}", "ETag": f'W/"{row.version}"'},
    )


def assign_mrn(patient: dict[str, Any], sim: SimState) -> None:
    """Epic registers every new patient with an MRN; one is added when the client sent none."""
    identifiers = patient.setdefault("identifier", [])
    if any(isinstance(i, dict) and i.get("system") == MRN_SYSTEM for i in identifiers):
        return
    number = 700_000 + sim.store.count("Patient")
    while sim.store.scalar(
        "SELECT 1 FROM idents WHERE type='Patient' AND value=? AND system=?", (str(number), MRN_SYSTEM)
    ):
        number += 1
    identifiers.append({"use": "usual", "type": {"text": "EPI"}, "system": MRN_SYSTEM, "value": str(number)})


def routes() -> list[BaseRoute]:
    p = FHIR_PREFIX
    return [
        Route(f"{p}/metadata", metadata, methods=["GET"]),
        Route(f"{p}/.well-known/smart-configuration", smart_configuration, methods=["GET"]),
        Route(f"{p}/", base_endpoint, methods=["GET"]),
        Route(f"{p}/{{rtype}}/_search", search_post, methods=["POST"]),
        Route(f"{p}/{{rtype}}", type_endpoint, methods=["GET", "POST"]),
        Route(f"{p}/{{rtype}}/{{rid}}", instance_endpoint, methods=["GET", "PUT", "DELETE", "PATCH"]),
        Route(f"{p}/{{rest:path}}", not_found),
    ]
