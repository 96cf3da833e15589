"""Booking an appointment on Epic: there is no R4 Appointment create, only STU3 `$find` + `$book`.

1. `$find` (patient, startTime, endTime, serviceType) proposes free slots, each an Appointment with an id;
2. `$book` (patient, the proposed appointment, appointmentNote) books the earliest; the booked
   appointment then shows in R4 Appointment searches.
`$find` changes nothing and is retried like a search. `$book` is a create: an interrupted one is
checked by searching the patient's booked appointments at the slot's start before booking again.
A slot taken by someone else between `$find` and `$book` (409) starts over with a new `$find`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from bridge.fhir.client import FHIRClient, parse_bundle
from bridge.fhir.errors import FHIRProtocolError
from bridge.sink.builders import Invalid, patient_of
from bridge.sink.calls import AmbiguousCreate, CommandCalls
from bridge.sink.failures import Failure, GiveUp, failure_summary
from bridge.sink.model import ErrorInfo
from bridge.sink.search import search_all

log = logging.getLogger(__name__)

FIND_URL = "../STU3/Appointment/$find"
BOOK_URL = "../STU3/Appointment/$book"
DEFAULT_WINDOW = dt.timedelta(minutes=30)
MAX_SLOT_RACES = 3


def _parse_instant(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _fmt(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class BookingRequest:
    """What $find and $book need, from the Appointment the command describes."""

    def __init__(self, resource: dict[str, Any]) -> None:
        patient = patient_of(resource)
        if patient is None:
            raise Invalid("Appointment.participant must include the Patient (actor Patient/<id>)")
        start = resource.get("start")
        if not isinstance(start, str):
            raise Invalid("Appointment.start (fields.start) is required: the earliest start to search")
        try:
            self.start = _parse_instant(start)
            end = resource.get("end")
            self.end = _parse_instant(end) if isinstance(end, str) else self.start + DEFAULT_WINDOW
        except ValueError:
            raise Invalid("Appointment.start/end must be FHIR instants") from None
        if self.end <= self.start:
            raise Invalid("Appointment.end must be after Appointment.start")
        self.patient = patient
        services = resource.get("serviceType")
        self.service = services[0] if isinstance(services, list) and services else None
        note = resource.get("comment")
        self.note = note if isinstance(note, str) and note else None

    def find_parameters(self) -> dict[str, Any]:
        parameter: list[dict[str, Any]] = [
            {"name": "patient", "valueReference": {"reference": f"Patient/{self.patient}"}},
            {"name": "startTime", "valueDateTime": _fmt(self.start)},
            {"name": "endTime", "valueDateTime": _fmt(self.end)},
        ]
        if isinstance(self.service, dict):
            parameter.append({"name": "serviceType", "valueCodeableConcept": self.service})
        return {"resourceType": "Parameters", "parameter": parameter}

    def book_parameters(self, appointment_id: str) -> dict[str, Any]:
        parameter: list[dict[str, Any]] = [
            {"name": "patient", "valueReference": {"reference": f"Patient/{self.patient}"}},
            {"name": "appointment", "valueReference": {"reference": f"Appointment/{appointment_id}"}},
        ]
        if self.note:
            parameter.append({"name": "appointmentNote", "valueString": self.note})
        return {"resourceType": "Parameters", "parameter": parameter}


def _booked(bundle_or_appointment: dict[str, Any]) -> dict[str, Any]:
    if bundle_or_appointment.get("resourceType") == "Appointment":
        return bundle_or_appointment
    if bundle_or_appointment.get("resourceType") == "Bundle":
        for resource in parse_bundle(bundle_or_appointment).resources:
            if resource.get("resourceType") == "Appointment":
                return resource
    raise FHIRProtocolError("$book answered no Appointment")


async def booked_in_window(
    fhir: FHIRClient,
    calls: CommandCalls,
    request: BookingRequest,
    *,
    start: dt.datetime | None = None,
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """The patient's booked appointments starting at `start` (or anywhere in the request's window)."""
    low = start or request.start
    high = (start + dt.timedelta(seconds=1)) if start is not None else request.end
    query = [("patient", request.patient), ("date", f"ge{_fmt(low)}"), ("date", f"lt{_fmt(high)}")]
    matches = await search_all(fhir, calls, "Appointment", query, max_pages=20, deadline=deadline)
    found = [a for a in matches.resources if a.get("status") == "booked"]
    if request.note is not None and start is None:
        found = [a for a in found if a.get("comment") == request.note]
    return found


async def book(
    fhir: FHIRClient,
    calls: CommandCalls,
    request: BookingRequest,
    recovery_deadline: float,
    settle_s: float = 1.0,
) -> dict[str, Any]:
    """Find the earliest free slot in the window and book it. Returns the booked Appointment."""
    for _race in range(MAX_SLOT_RACES):

        async def find() -> list[dict[str, Any]]:
            answer = await fhir.operation(FIND_URL, request.find_parameters(), idempotent=True)
            return [r for r in parse_bundle(answer).resources if r.get("resourceType") == "Appointment"]

        proposals = [p for p in await calls.call(find, what="$find") if isinstance(p.get("id"), str)]
        if not proposals:
            raise GiveUp(
                Failure(
                    ErrorInfo(
                        f"no free slot between {_fmt(request.start)} and {_fmt(request.end)} "
                        "($find proposed none); widen the window (fields.end)"
                    ),
                    retriable=False,
                    ambiguous=False,
                )
            )
        slot = min(proposals, key=lambda p: str(p.get("start")))
        parameters = request.book_parameters(str(slot["id"]))

        async def book_slot(parameters: dict[str, Any] = parameters) -> dict[str, Any]:
            return _booked(await fhir.operation(BOOK_URL, parameters, not_after=calls.not_after))

        try:
            return await calls.call(book_slot, creating=True, what="$book")
        except AmbiguousCreate as unsure:
            slot_start = _parse_instant(str(slot.get("start")))
            await calls.sleep(settle_s)  # let a request still in flight land
            log.warning(
                "$book interrupted (%s); checking the slot before booking again",
                failure_summary(unsure.failure),
            )
            found = await booked_in_window(fhir, calls, request, start=slot_start, deadline=recovery_deadline)
            if found:
                return found[0]
            await calls.pause(unsure.failure, what="$book")
        except GiveUp as refused:
            if refused.failure.error.http_status != 409:
                raise
            log.info("slot taken before it could be booked; asking $find again")
    raise GiveUp(
        Failure(
            ErrorInfo(f"every proposed slot was taken before it could be booked ({MAX_SLOT_RACES} tries)"),
            retriable=True,
            ambiguous=False,
        )
    )
