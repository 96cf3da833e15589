"""Response rendering: content negotiation, resources from stored text, bundles by concatenation."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from epic_sim.config import Profile
from epic_sim.store import StoredRow, dumps
from epic_sim.xml import to_xml

JSON_TYPE = "application/fhir+json; charset=utf-8"
XML_TYPE = "application/fhir+xml; charset=utf-8"
_JSON_ACCEPTS = ("application/fhir+json", "application/json", "application/json+fhir")
_XML_ACCEPTS = ("application/fhir+xml", "application/xml", "application/xml+fhir", "text/xml")


def wants_json(request: Request, profile: Profile) -> bool:
    """Epic: JSON only when asked for; no Accept, */* or an unknown type gets XML."""
    accept = request.headers.get("accept", "").lower()
    if any(t in accept for t in _JSON_ACCEPTS):
        return True
    if profile == "generic":
        return not any(t in accept for t in _XML_ACCEPTS)
    return False


def resource_text(row: StoredRow, profile: Profile) -> str:
    if profile == "epic":
        return row.json
    meta = f'{{"versionId":"{row.version}","lastUpdated":"{row.last_updated}"}}'
    if '"meta":' not in row.json:
        return f'{{"meta":{meta},{row.json[1:]}'
    resource = json.loads(row.json)
    resource["meta"] = {**resource.get("meta", {}), **json.loads(meta)}
    return dumps(resource)


def fhir_response(
    request: Request,
    profile: Profile,
    body: str | dict[str, Any],
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    if wants_json(request, profile):
        text = body if isinstance(body, str) else dumps(body)
        return Response(text, status_code=status, media_type=JSON_TYPE, headers=headers)
    parsed = json.loads(body) if isinstance(body, str) else body
    return Response(to_xml(parsed), status_code=status, media_type=XML_TYPE, headers=headers)


def match_entry(fhir_base: str, row: StoredRow, profile: Profile) -> str:
    return (
        f'{{"fullUrl":"{fhir_base}{row.type}/{row.id}","resource":{resource_text(row, profile)},'
        '"search":{"mode":"match"}}'
    )


def outcome_entry(outcome: dict[str, Any]) -> str:
    return f'{{"resource":{dumps(outcome)},"search":{{"mode":"outcome"}}}}'


def bundle(*, total: int | None, self_url: str, next_url: str | None, entries: list[str]) -> str:
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    head = '{"resourceType":"Bundle","type":"searchset",'
    if total is not None:
        head += f'"total":{total},'
    if not entries:
        return f'{head}"link":{dumps(links)}}}'
    return f'{head}"link":{dumps(links)},"entry":[{",".join(entries)}]}}'


NOT_FOUND_HTML = """<!DOCTYPE html>
<html><head><title>404 - File or directory not found.</title></head>
<body><div id="header"><h1>Server Error</h1></div>
<div id="content"><h2>404 - File or directory not found.</h2>
<h3>The resource you are looking for might have been removed, had its name changed,
or is temporarily unavailable.</h3></div></body></html>
"""


def html_not_found() -> Response:
    return HTMLResponse(NOT_FOUND_HTML, status_code=404)
