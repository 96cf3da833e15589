"""Epic's STU3 scheduling operations: Appointment/$find proposes slots, Appointment/$book books one.

A booked slot becomes an ordinary R4 Appointment in the store, so it shows up in R4 searches.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from epic_sim import outcomes
from epic_sim.config import STU3_PREFIX
from epic_sim.fhir_routes import _guard
from epic_sim.render import fhir_response
from epic_sim.seed import APPT_SYSTEM, appointment_resource
from epic_sim.state import SimState, sim_of
from epic_sim.timefmt import normalize_instant

SLOT_MINUTES = 30
MAX_PROPOSALS = 20
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-"


class OperationError(Exception):
    def __init__(self, text: str, status: int = 400, code: str = "invalid") -> None:
        super().__init__(text)
        self.status = status
        self.body = outcomes.error(code, text)


def _params(body: bytes) -> dict[str, dict[str, Any]]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise OperationError("The request body is not valid JSON.", code="structure") from None
    if not isinstance(parsed, dict) or parsed.get("resourceType") != "Parameters":
        raise OperationError("The body must be a Parameters resource.")
    return {p["name"]: p for p in parsed.get("parameter", []) if isinstance(p, dict) and "name" in p}


def _reference_id(param: dict[str, Any] | None, rtype: str) -> str | None:
    if param is None:
        return None
    if isinstance(param.get("resource"), dict):
        rid = param["resource"].get("id")
        return str(rid) if rid else None
    if isinstance(param.get("valueReference"), dict):
        ref = str(param["valueReference"].get("reference", ""))
        return ref.split("/", 1)[1] if ref.startswith(f"{rtype}/") else (ref or None)
    for key in ("valueString", "valueId"):
        if param.get(key):
            value = str(param[key])
            return value.split("/", 1)[1] if value.startswith(f"{rtype}/") else value
    return None


def _patient(sim: SimState, params: dict[str, dict[str, Any]]) -> str:
    pid = _reference_id(params.get("patient"), "Patient")
    if not pid or not sim.store.exists("Patient", pid):
        raise OperationError("Valid patient required")
    return pid


def _time(params: dict[str, dict[str, Any]], name: str) -> datetime:
    param = params.get(name) or {}
    raw = param.get("valueDateTime") or param.get("valueInstant")
    value = normalize_instant(raw) if isinstance(raw, str) else None
    if not value or "T" not in value:
        raise OperationError(f"{name} is required as a dateTime with a time")
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _slot_id(pid: str, start: datetime) -> str:
    digest = hashlib.blake2b(f"{pid}|{start.isoformat()}".encode(), digest_size=22).digest()
    return "e" + "".join(_ID_CHARS[b % len(_ID_CHARS)] for b in digest) + "3"


def _booked_starts(sim: SimState, low: datetime, high: datetime) -> set[str]:
    rows = sim.store.query(
        "SELECT seq, type, id, version, last_updated, json FROM resources "
        "WHERE type='Appointment' AND date >= ? AND date < ? AND status='booked'",
        (low.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), high.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    )
    return {json.loads(r.json)["start"] for r in rows}


async def find(request: Request) -> Response:
    sim = sim_of(request)
    denied = _guard(request, "Appointment", "operation")
    if denied is not None:
        return denied
    try:
        params = _params(await request.body())
        pid = _patient(sim, params)
        start, end = _time(params, "startTime"), _time(params, "endTime")
        if end <= start:
            raise OperationError("endTime must be after startTime")
    except OperationError as exc:
        return fhir_response(request, sim.config.profile, exc.body, status=exc.status)
    service = (params.get("serviceType") or {}).get("valueCodeableConcept")
    booked = _booked_starts(sim, start, end)
    slot = start.replace(minute=0 if start.minute == 0 else 30, second=0, microsecond=0)
    if slot < start:
        slot += timedelta(minutes=SLOT_MINUTES)
    proposals: list[dict[str, Any]] = []
    while slot + timedelta(minutes=SLOT_MINUTES) <= end and len(proposals) < MAX_PROPOSALS:
        stamp = slot.strftime("%Y-%m-%dT%H:%M:%SZ")
        if 8 <= slot.hour < 17 and slot.weekday() < 5 and stamp not in booked:
            appt = appointment_resource(_slot_id(pid, slot), pid, slot, "proposed", "")
            appt.pop("identifier")
            if service:
                appt["serviceType"] = [service]
            sim.proposals[appt["id"]] = appt
            proposals.append(appt)
        slot += timedelta(minutes=SLOT_MINUTES)
    entries = [
        {
            "fullUrl": f"{sim.config.base_url}{STU3_PREFIX}/Appointment/{a['id']}",
            "resource": a,
            "search": {"mode": "match"},
        }
        for a in proposals
    ]
    if not entries:
        entries.append(
            {
                "resource": outcomes.outcome(
                    outcomes.issue(
                        "warning",
                        "processing",
                        outcomes.DISPLAYS[outcomes.NO_RESULTS],
                        epic_code=outcomes.NO_RESULTS,
                    )
                ),
                "search": {"mode": "outcome"},
            }
        )
    body = {"resourceType": "Bundle", "type": "searchset", "total": len(proposals), "entry": entries}
    return fhir_response(request, sim.config.profile, body)


async def book(request: Request) -> Response:
    sim = sim_of(request)
    denied = _guard(request, "Appointment", "operation")
    if denied is not None:
        return denied
    try:
        params = _params(await request.body())
        pid = _patient(sim, params)
        aid = _reference_id(params.get("appointment"), "Appointment")
        proposal = sim.proposals.get(aid or "")
        if proposal is None:
            raise OperationError(
                "The appointment was not returned by $find or has already been booked.",
                status=404 if aid else 400,
                code="not-found" if aid else "required",
            )
        if proposal["participant"][0]["actor"]["reference"] != f"Patient/{pid}":
            raise OperationError(
                "The appointment was proposed for a different patient.", status=409, code="conflict"
            )
        if proposal["start"] in _booked_starts(sim, *_around(proposal["start"])):
            raise OperationError("The slot is no longer available.", status=409, code="conflict")
    except OperationError as exc:
        return fhir_response(request, sim.config.profile, exc.body, status=exc.status)
    del sim.proposals[proposal["id"]]
    booked = dict(proposal, status="booked")
    booked["identifier"] = [
        {"use": "usual", "system": APPT_SYSTEM, "value": str(9_000_000 + sim.store.count("Appointment"))}
    ]
    note = (params.get("appointmentNote") or {}).get("valueString")
    if note:
        booked["comment"] = str(note)
    sim.store.insert(booked)
    return fhir_response(request, sim.config.profile, booked)


def _around(start: str) -> tuple[datetime, datetime]:
    moment = datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return moment, moment + timedelta(seconds=1)


def routes() -> list[BaseRoute]:
    return [
        Route(f"{STU3_PREFIX}/Appointment/$find", find, methods=["POST"]),
        Route(f"{STU3_PREFIX}/Appointment/$book", book, methods=["POST"]),
    ]
