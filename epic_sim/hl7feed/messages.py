"""HL7 v2.5.1 messages describing one change, shaped like a hospital interface engine's outbound feeds.

| change | message |
|---|---|
| Encounter created, inpatient class (IMP) | `ADT^A01` (admit), PV1-2 `I` |
| Encounter created, other classes | `ADT^A04` (register an outpatient visit), PV1-2 `O` |
| Encounter updated to `finished` | `ADT^A03` (discharge / end of visit) |
| Encounter otherwise updated, Patient updated | `ADT^A08` (update patient information) |
| Patient created | `ADT^A28` (add person information) |
| Appointment created / updated | `SIU^S12` (new) / `SIU^S14` (modified), SCH-25 the status |
| Observation created or updated | `ORU^R01`, OBR-25/OBX-11 `F` final or `C` corrected |
| DocumentReference created / updated | `MDM^T02` (new note) / `MDM^T08` (edited note) |

PID-3 is the patient's MRN as a CX: `<MRN>^^^EPI&1.2.840.114350.1.13.0.1.7.5.737384.14&ISO^MR` (assigning
authority: namespace `EPI`, universal id the OID of Epic's MRN system, type ISO; identifier type code
`MR`). A patient without an MRN gets no message. Text is UTF-8 (MSH-18 `UNICODE UTF-8`) with the
delimiters escaped and line breaks as `\\.br\\`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from epic_sim.seed import MRN_SYSTEM
from epic_sim.timefmt import normalize_instant

MRN_AUTHORITY = "EPI&" + MRN_SYSTEM.removeprefix("urn:oid:") + "&ISO"
SENDING = ("EPIC", "EPICSIM")
RECEIVING = ("RECEIVER", "RECEIVER")
VERSION = "2.5.1"
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "~": "\\R\\", "&": "\\T\\"}
_SEX = {"male": "M", "female": "F", "other": "O"}
_APPOINTMENT_STATUS = {
    "proposed": "Pending",
    "pending": "Pending",
    "booked": "Booked",
    "arrived": "Arrived",
    "checked-in": "Arrived",
    "fulfilled": "Complete",
    "cancelled": "Cancelled",
    "noshow": "Noshow",
}


@dataclass(frozen=True)
class Hl7Message:
    text: str  # segments separated by \r, ending with \r
    type: str  # e.g. "ADT^A01"
    control_id: str


def escape(value: Any) -> str:
    # lone surrogates (valid in JSON, not in UTF-8) become "?" so that every message can be encoded
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    text = "".join(_ESCAPES.get(c, c) for c in text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\.br\\")
    return "".join(c if c >= " " else " " for c in text)


def ts(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S.%f")[:-3] + "+0000"


def fhir_ts(value: Any) -> str:
    """A FHIR date or UTC dateTime as an HL7 DTM (empty when absent)."""
    if not isinstance(value, str) or not value:
        return ""
    if "T" not in value:
        return value.replace("-", "")
    utc = normalize_instant(value)  # YYYY-MM-DDTHH:MM:SS.ffffffZ in UTC
    return "" if utc is None else "".join(c for c in utc[:19] if c.isdigit()) + "+0000"


def mrn_of(patient: dict[str, Any]) -> str | None:
    for identifier in patient.get("identifier", []):
        if (
            isinstance(identifier, dict)
            and identifier.get("system") == MRN_SYSTEM
            and identifier.get("value")
        ):
            return str(identifier["value"])
    return None


def _segment(name: str, fields: dict[int, str]) -> str:
    values = [""] * (max(fields, default=0) + 1)
    values[0] = name
    for index, value in fields.items():
        values[index] = value
    return "|".join(values)


def _code(concept: Any) -> tuple[str, str, str]:
    """(code, display, coding system abbreviation) of a CodeableConcept's first coding."""
    concept = concept if isinstance(concept, dict) else {}
    for coding in concept.get("coding", []):
        system = "LN" if coding.get("system") == "http://loinc.org" else "L"
        return str(coding.get("code", "")), str(coding.get("display") or concept.get("text", "")), system
    return "", str(concept.get("text", "")), ""


def message_type(resource: dict[str, Any], kind: str) -> tuple[str, str, str]:
    """(message code, trigger event, message structure) for a created or updated resource."""
    rtype = resource["resourceType"]
    if rtype == "Patient":
        return ("ADT", "A28", "ADT_A05") if kind == "create" else ("ADT", "A08", "ADT_A01")
    if rtype == "Encounter":
        if kind == "create":
            inpatient = (resource.get("class") or {}).get("code") == "IMP"
            return "ADT", "A01" if inpatient else "A04", "ADT_A01"
        return (
            ("ADT", "A03", "ADT_A03") if resource.get("status") == "finished" else ("ADT", "A08", "ADT_A01")
        )
    if rtype == "Appointment":
        return "SIU", "S12" if kind == "create" else "S14", "SIU_S12"
    if rtype == "Observation":
        return "ORU", "R01", "ORU_R01"
    if rtype == "DocumentReference":
        return "MDM", "T02" if kind == "create" else "T08", "MDM_T02"
    raise ValueError(f"no HL7 message for {rtype}")


def _pid(patient: dict[str, Any], mrn: str) -> str:
    name = (patient.get("name") or [{}])[0]
    given = name.get("given") or []
    address = (patient.get("address") or [{}])[0]
    phone = next((t.get("value", "") for t in patient.get("telecom", []) if t.get("system") == "phone"), "")
    xad = [*(address.get("line") or [""])[:1], "", address.get("city", ""), address.get("state", "")]
    xad += [address.get("postalCode", ""), address.get("country", "")]
    return _segment(
        "PID",
        {
            1: "1",
            3: f"{escape(mrn)}^^^{MRN_AUTHORITY}^MR",
            5: "^".join(escape(p) for p in [name.get("family", ""), *given[:2]]),
            7: fhir_ts(patient.get("birthDate")),
            8: _SEX.get(str(patient.get("gender")), "U"),
            11: "^".join(escape(p) for p in xad) if address else "",
            13: escape(phone),
        },
    )


def _pv1(encounter: dict[str, Any] | None) -> str:
    if encounter is None:
        return _segment("PV1", {1: "1", 2: "N"})
    period = encounter.get("period") or {}
    location = ((encounter.get("location") or [{}])[0].get("location") or {}).get("display", "")
    csn = next((str(i.get("value", "")) for i in encounter.get("identifier", [])), "")
    inpatient = (encounter.get("class") or {}).get("code") == "IMP"
    return _segment(
        "PV1",
        {
            1: "1",
            2: "I" if inpatient else "O",
            3: escape(location),
            19: escape(csn),
            44: fhir_ts(period.get("start")),
            45: fhir_ts(period.get("end")),
        },
    )


def _appointment(appointment: dict[str, Any]) -> list[str]:
    number = next((str(i.get("value", "")) for i in appointment.get("identifier", [])), "")
    code, display, _ = _code((appointment.get("serviceType") or [{}])[0])
    start, end = fhir_ts(appointment.get("start")), fhir_ts(appointment.get("end"))
    minutes = str(appointment.get("minutesDuration", ""))
    status = _APPOINTMENT_STATUS.get(str(appointment.get("status")), "Booked")
    service = f"{escape(code)}^{escape(display)}"
    return [
        _segment(
            "SCH",
            {1: escape(number), 2: escape(number), 6: service, 11: f"^^{minutes}^{start}^{end}", 25: status},
        ),
        "RGS|1",
        _segment("AIS", {1: "1", 3: service, 4: start, 7: minutes, 8: "min"}),
    ]


def _result_status(observation: dict[str, Any]) -> str:
    status = observation.get("status")
    return {"amended": "C", "corrected": "C", "preliminary": "P", "cancelled": "X"}.get(str(status), "F")


def _observation(observation: dict[str, Any]) -> list[str]:
    code, display, system = _code(observation.get("code"))
    when = fhir_ts(observation.get("effectiveDateTime") or observation.get("issued"))
    status = _result_status(observation)
    obr = _segment(
        "OBR",
        {
            1: "1",
            4: f"{escape(code)}^{escape(display)}^{system}",
            7: when,
            22: fhir_ts(observation.get("issued")),
            25: status,
        },
    )
    values = [observation, *observation.get("component", [])] if "component" in observation else [observation]
    segments = [obr]
    for holder in values:
        ident = _code(holder.get("code"))
        if isinstance(holder.get("valueQuantity"), dict):
            quantity = holder["valueQuantity"]
            kind, value, unit = "NM", str(quantity.get("value", "")), escape(quantity.get("unit", ""))
        elif isinstance(holder.get("valueCodeableConcept"), dict):
            kind, value, unit = "ST", escape(holder["valueCodeableConcept"].get("text", "")), ""
        else:
            continue
        segments.append(
            _segment(
                "OBX",
                {
                    1: str(len(segments)),
                    2: kind,
                    3: f"{escape(ident[0])}^{escape(ident[1])}^{ident[2]}",
                    5: escape(value) if kind == "NM" else value,
                    6: unit,
                    11: status,
                    14: when,
                },
            )
        )
    return segments


def _note(note: dict[str, Any]) -> list[str]:
    code, display, system = _code(note.get("type"))
    number = str(int(hashlib.sha256(str(note.get("id")).encode()).hexdigest()[:12], 16))
    attachment = ((note.get("content") or [{}])[0]).get("attachment") or {}
    try:
        text = base64.b64decode(attachment.get("data", "")).decode(errors="replace")
    except (binascii.Error, TypeError):  # a note stored with a broken attachment: send it without text
        text = ""
    return [
        _segment(
            "TXA",
            {1: "1", 2: "PN", 3: "TX", 4: fhir_ts(note.get("date")), 12: number, 17: "AU", 19: "AV"},
        ),
        _segment(
            "OBX",
            {1: "1", 2: "TX", 3: f"{escape(code)}^{escape(display)}^{system}", 5: escape(text), 11: "F"},
        ),
    ]


def build_message(
    resource: dict[str, Any],
    kind: str,
    *,
    patient: dict[str, Any],
    encounter: dict[str, Any] | None,
    control_id: str,
    now: datetime,
) -> Hl7Message | None:
    """The message for a change to `resource` of `patient`, or None when the patient has no MRN.

    `encounter` is the resource's encounter (the resource itself for an Encounter), or None.
    """
    mrn = mrn_of(patient)
    if mrn is None:
        return None
    code, event, structure = message_type(resource, kind)
    msh = _segment(
        "MSH",
        {
            1: "^~\\&",
            2: SENDING[0],
            3: SENDING[1],
            4: RECEIVING[0],
            5: RECEIVING[1],
            6: ts(now),
            8: f"{code}^{event}^{structure}",
            9: control_id,
            10: "P",
            11: VERSION,
            17: "UNICODE UTF-8",
        },
    )
    evn = _segment("EVN", {1: event, 2: ts(now)})
    pid = _pid(patient, mrn)
    body: list[str]
    if code == "ADT":
        body = [evn, pid, _pv1(encounter)]
    elif code == "SIU":
        appointment = _appointment(resource)
        body = [appointment[0], pid, *appointment[1:]]
    elif code == "ORU":
        body = [pid, _pv1(encounter), *_observation(resource)]
    else:
        body = [evn, pid, _pv1(encounter), *_note(resource)]
    return Hl7Message("\r".join([msh, *body]) + "\r", f"{code}^{event}", control_id)
