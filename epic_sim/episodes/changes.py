"""Makes one planned change in the store, shaped so that a client polling Epic-style can see it.

Observations carry Epic's categories (vital-signs, laboratory) and are dated now, encounters and
appointments name their patient and move to today, DocumentReference updates move `_lastUpdated`, and
Patient updates change demographics. Every update changes the resource's content; one that would not
(its target was edited away meanwhile) is skipped rather than logged as a change nobody could see.

Values and new ids come from a generator seeded with (seed, episode, step), so a change's content
does not depend on how other episodes interleave with it.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from epic_sim.episodes.timetable import VISIT_STEPS, Planned
from epic_sim.seed import (
    CSN_SYSTEM,
    LABS,
    appointment_resource,
    encounter_resource,
    epic_id,
    lab_observation,
    note_resource,
    vital_observation,
)
from epic_sim.store import Store, StoredRow, dumps

Kind = Literal["create", "update"]
_ROW_COLUMNS = "seq, type, id, version, last_updated, json"
_INPATIENT_CLASS = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "code": "IMP",
    "display": "inpatient encounter",
}
_WARDS = ("EMH 4 West", "EMH 5 East", "EMH ICU", "EMH 3 North")


@dataclass(frozen=True)
class Change:
    patient_id: str
    kind: Kind
    row: StoredRow  # as stored right after the change

    @property
    def resource(self) -> dict[str, Any]:
        resource: dict[str, Any] = json.loads(self.row.json)
        return resource

    @property
    def category(self) -> str | None:
        """The Observation/DocumentReference category code (what Epic's category searches match)."""
        if self.row.type not in ("Observation", "DocumentReference"):
            return None
        for concept in self.resource.get("category", []):
            for coding in concept.get("coding", []):
                if coding.get("code"):
                    return str(coding["code"])
        return None


def _instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bed(rng: random.Random) -> str:
    return f"{rng.choice(_WARDS)} Room {rng.randint(100, 499)} Bed {rng.choice('AB')}"


def inpatient_encounter(eid: str, pid: str, start: datetime, csn: str, bed: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "identifier": [{"use": "usual", "system": CSN_SYSTEM, "value": csn}],
        "status": "in-progress",
        "class": dict(_INPATIENT_CLASS),
        "type": [{"text": "Hospital Encounter"}],
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": _instant(start)},
        "location": [{"location": {"display": bed}}],
    }


@dataclass(frozen=True)
class _Step:
    planned: Planned
    patient: str
    rng: random.Random
    now: datetime


class ClinicalChanges:
    """`apply(planned, patient_id)` writes one change and returns it (None when it cannot be made)."""

    def __init__(self, store: Store, seed: int) -> None:
        self.store = store
        self._seed = seed
        # Per episode: the encounter it runs in, its notes, its appointment (visits are forgotten at the end).
        self._encounters: dict[str, str] = {}
        self._notes: dict[str, list[str]] = {}
        self._appointments: dict[str, str] = {}
        self._actions: dict[str, Callable[[_Step], Change | None]] = {
            "admit": self._admit,
            "encounter-update": self._move_bed,
            "encounter-start": self._start_encounter,
            "encounter-finish": self._finish_encounter,
            "appointment-arrive": self._arrive,
            "appointment-fulfil": self._fulfil,
            "vitals": self._vitals,
            "lab": self._lab,
            "note": self._note,
            "note-amend": self._amend_note,
            "lab-amend": self._amend_lab,
            "demographics": self._demographics,
        }

    def apply(self, planned: Planned, patient_id: str) -> Change | None:
        rng = random.Random(f"{self._seed}:{planned.episode}:{planned.step}")
        step = _Step(planned, patient_id, rng, datetime.now(UTC))
        try:
            if not self.store.exists("Patient", patient_id):
                return None
            return self._actions[planned.action](step)
        finally:
            if planned.source == "visit" and planned.step == len(VISIT_STEPS) - 1:
                for held in (self._encounters, self._notes, self._appointments):
                    held.pop(planned.episode, None)

    # --- store helpers ----------------------------------------------------------------------------
    def _new_id(self, rtype: str, rng: random.Random) -> str:
        while True:
            rid = epic_id(rng)
            if not self.store.exists(rtype, rid):
                return rid

    def _create(self, patient: str, resource: dict[str, Any]) -> Change:
        return Change(patient, "create", self.store.insert(resource))

    def _update(
        self, patient: str, rtype: str, rid: str | None, edit: Callable[[dict[str, Any]], None]
    ) -> Change | None:
        row = self.store.get(rtype, rid) if rid else None
        if row is None:
            return None
        resource = json.loads(row.json)
        edit(resource)
        if dumps(resource) == row.json:
            return None
        stored = self.store.update(resource)
        return Change(patient, "update", stored) if stored else None

    def _patient_rows(self, rtype: str, patient: str, **equal: str) -> list[StoredRow]:
        """The patient's resources of a type in storage order, filtered on a category or status."""
        sql = f"SELECT {_ROW_COLUMNS} FROM resources WHERE type=? AND patient=?"  # noqa: S608 (constant)
        params: list[Any] = [rtype, patient]
        for column in sorted(equal):
            if column not in ("category", "status"):
                raise ValueError(f"not a filter column: {column}")
            sql += f" AND {column}=?"
            params.append(equal[column])
        return self.store.query(sql + " ORDER BY seq", params)

    # --- encounters -------------------------------------------------------------------------------
    def _admit(self, step: _Step) -> Change:
        eid = self._new_id("Encounter", step.rng)
        csn = str(step.rng.randint(10**8, 10**9))
        change = self._create(
            step.patient, inpatient_encounter(eid, step.patient, step.now, csn, _bed(step.rng))
        )
        self._encounters[step.planned.episode] = eid
        return change

    def _move_bed(self, step: _Step) -> Change | None:
        def edit(encounter: dict[str, Any]) -> None:
            encounter["location"] = [{"location": {"display": _bed(step.rng)}}]

        return self._update(step.patient, "Encounter", self._encounters.get(step.planned.episode), edit)

    def _start_encounter(self, step: _Step) -> Change:
        eid = self._new_id("Encounter", step.rng)
        encounter = encounter_resource(
            step.rng, eid, step.patient, step.now, str(step.rng.randint(10**8, 10**9))
        )
        encounter["status"] = "in-progress"
        encounter["period"].pop("end", None)
        self._encounters[step.planned.episode] = eid
        return self._create(step.patient, encounter)

    def _finish_encounter(self, step: _Step) -> Change | None:
        def edit(encounter: dict[str, Any]) -> None:
            encounter["status"] = "finished"
            encounter.setdefault("period", {})["end"] = _instant(step.now)

        return self._update(step.patient, "Encounter", self._encounters.get(step.planned.episode), edit)

    # --- appointments -----------------------------------------------------------------------------
    def _arrive(self, step: _Step) -> Change | None:
        """The next booked appointment moves to now and is marked arrived (else a walk-in is created)."""
        start = step.now.replace(second=0)
        booked = self._patient_rows("Appointment", step.patient, status="booked")
        if not booked:
            aid = self._new_id("Appointment", step.rng)
            number = str(step.rng.randint(10**7, 10**8))
            self._appointments[step.planned.episode] = aid
            return self._create(
                step.patient, appointment_resource(aid, step.patient, start, "arrived", number)
            )

        def edit(appointment: dict[str, Any]) -> None:
            minutes = int(appointment.get("minutesDuration", 30))
            appointment["status"] = "arrived"
            appointment["start"] = _instant(start)
            appointment["end"] = _instant(start + timedelta(minutes=minutes))

        self._appointments[step.planned.episode] = booked[0].id
        return self._update(step.patient, "Appointment", booked[0].id, edit)

    def _fulfil(self, step: _Step) -> Change | None:
        def edit(appointment: dict[str, Any]) -> None:
            appointment["status"] = "fulfilled"

        return self._update(step.patient, "Appointment", self._appointments.get(step.planned.episode), edit)

    # --- results and notes ------------------------------------------------------------------------
    def _vitals(self, step: _Step) -> Change | None:
        return self._observation(step, vital_observation, 5)  # kind 0 is a blood-pressure panel

    def _lab(self, step: _Step) -> Change | None:
        return self._observation(step, lab_observation, len(LABS))

    def _observation(self, step: _Step, build: Callable[..., dict[str, Any]], kinds: int) -> Change | None:
        eid = self._encounters.get(step.planned.episode)
        if eid is None:
            return None
        oid = self._new_id("Observation", step.rng)
        kind = step.rng.randrange(kinds)
        return self._create(step.patient, build(step.rng, oid, step.patient, eid, _instant(step.now), kind))

    def _note(self, step: _Step) -> Change | None:
        eid = self._encounters.get(step.planned.episode)
        if eid is None:
            return None
        nid = self._new_id("DocumentReference", step.rng)
        what = "Inpatient progress note" if step.planned.source == "inpatient" else "Office visit note"
        text = f"{what} recorded {_instant(step.now)}.\nAssessment and plan reviewed."
        self._notes.setdefault(step.planned.episode, []).append(nid)
        return self._create(step.patient, note_resource(nid, step.patient, eid, _instant(step.now), text))

    def _amend_note(self, step: _Step) -> Change | None:
        notes = self._notes.get(step.planned.episode) or [
            row.id for row in self._patient_rows("DocumentReference", step.patient)
        ]
        if not notes:
            return self._demographics(step)

        def edit(note: dict[str, Any]) -> None:
            note["docStatus"] = "amended"
            attachment = note["content"][0]["attachment"]
            text = base64.b64decode(attachment.get("data", "")).decode(errors="replace")
            text += f"\nAddendum {_instant(step.now)}: reviewed and amended."
            attachment["data"] = base64.b64encode(text.encode()).decode()

        return self._update(step.patient, "DocumentReference", step.rng.choice(notes), edit)

    def _amend_lab(self, step: _Step) -> Change | None:
        labs = self._patient_rows("Observation", step.patient, category="laboratory")
        if not labs:
            return self._demographics(step)

        def edit(observation: dict[str, Any]) -> None:
            observation["status"] = "corrected"
            quantity = observation.get("valueQuantity")
            if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
                delta = step.rng.choice((-1, 1)) * step.rng.randint(1, 20) / 10
                quantity["value"] = round(quantity["value"] + delta, 1)
            observation["issued"] = _instant(step.now)

        return self._update(step.patient, "Observation", step.rng.choice(labs).id, edit)

    # --- demographics -----------------------------------------------------------------------------
    def _demographics(self, step: _Step) -> Change | None:
        def edit(patient: dict[str, Any]) -> None:
            if step.rng.random() < 0.6:
                phones = [t for t in patient.get("telecom", []) if t.get("system") == "phone"]
                others = [t for t in patient.get("telecom", []) if t.get("system") != "phone"]
                number = f"608-555-{step.rng.randint(1000, 9999)}"
                patient["telecom"] = [{"system": "phone", "value": number, "use": "home"}, *others]
                if phones and phones[0].get("value") == number:
                    patient["telecom"][0]["value"] = f"608-556-{number[-4:]}"
            else:
                address = {"use": "home", "line": [f"{step.rng.randint(1, 9999)} Oak Ave"]}
                address |= {"city": "Madison", "state": "WI", "postalCode": "53703", "country": "US"}
                patient["address"] = [address]

        return self._update(step.patient, "Patient", step.patient, edit)
