"""Epic's search rules, through real HTTP (epic-facts: "Searching and paging")."""

from __future__ import annotations

import pytest
from sim_support import Fhir, epic_codes, matches, outcome_issues

from epic_sim.outcomes import EPIC_OO_SYSTEM

MRN = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"
DERRICK = "eq081-VQEgP8drUUqCWzHfw3"
CAMILA = "erXuFYUfucBZaryVksYEcMg3"


def test_sandbox_patients_are_seeded(fhir: Fhir) -> None:
    for pid in (DERRICK, CAMILA, "eD.LxhDyX35TntF77l7etUA3", "evYS76EX6LLeCX2PlRLhvwg3"):
        assert fhir.get(f"Patient/{pid}").status_code == 200
    derrick = fhir.get(f"Patient/{DERRICK}").json()
    assert derrick["birthDate"] == "1973-06-03"
    assert {"system": MRN, "value": "203711"}.items() <= derrick["identifier"][0].items()


@pytest.mark.parametrize(
    "params",
    [
        {"_id": DERRICK},
        {"identifier": f"{MRN}|203711"},
        {"given": "Derrick", "family": "Lin", "birthdate": "1973-06-03"},
        {"given": "derr", "family": "LIN", "birthdate": "1973-06-03"},  # fuzzy: case-insensitive prefix
    ],
)
def test_patient_search_accepted_combinations(fhir: Fhir, params: dict[str, str]) -> None:
    assert [p["id"] for p in matches(fhir.search("Patient", **params))] == [DERRICK]


def test_patient_search_by_demographics_and_phone(fhir: Fhir) -> None:
    derrick = fhir.get(f"Patient/{DERRICK}").json()
    phone = next(t["value"] for t in derrick["telecom"] if t["system"] == "phone")
    email = next(t["value"] for t in derrick["telecom"] if t["system"] == "email")
    found = fhir.search("Patient", given="Derrick", family="Lin", gender="male", phone=phone)
    assert [p["id"] for p in matches(found)] == [DERRICK]
    found = fhir.search("Patient", given="Derrick", family="Lin", gender="male", email=email)
    assert [p["id"] for p in matches(found)] == [DERRICK]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"family": "Lin"},
        {"given": "Derrick", "family": "Lin"},
        {"given": "Derrick", "family": "Lin", "gender": "male"},
        {"birthdate": "1973-06-03"},
        {"name": "Lin"},
    ],
)
def test_patient_search_without_required_combination_is_59159(fhir: Fhir, params: dict[str, str]) -> None:
    response = fhir.get("Patient", params=params)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert epic_codes(outcome) == ["59159"]
    assert outcome["issue"][0]["details"]["coding"][0]["system"] == EPIC_OO_SYSTEM


def test_observation_needs_code_or_category(fhir: Fhir) -> None:
    response = fhir.get("Observation", params={"patient": DERRICK})
    assert response.status_code == 400
    assert "Must have either code or category" in response.text
    vitals = matches(fhir.search("Observation", patient=DERRICK, category="vital-signs"))
    assert vitals and all(o["category"][0]["coding"][0]["code"] == "vital-signs" for o in vitals)
    labs = matches(fhir.search("Observation", patient=DERRICK, category="laboratory"))
    assert labs and all(o["category"][0]["coding"][0]["code"] == "laboratory" for o in labs)
    bp = matches(fhir.search("Observation", patient=DERRICK, code="http://loinc.org|85354-9"))
    assert bp and all(o["code"]["coding"][0]["code"] == "85354-9" and o["component"] for o in bp)
    assert len(matches(fhir.search("Observation", subject=f"Patient/{DERRICK}", code="85354-9"))) == len(bp)


@pytest.mark.parametrize("rtype", ["Observation", "Encounter", "Appointment", "DocumentReference"])
def test_clinical_searches_need_a_patient(fhir: Fhir, rtype: str) -> None:
    response = fhir.get(rtype, params={"category": "vital-signs", "date": "ge2020"})
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_unsupported_parameter_is_ignored_with_59100(fhir: Fhir) -> None:
    everything = matches(fhir.search("Encounter", patient=DERRICK))
    # _lastUpdated is not supported on Encounter: the filter does not apply, everything comes back.
    bundle = fhir.search("Encounter", patient=DERRICK, _lastUpdated="gt2999-01-01")
    assert [e["id"] for e in matches(bundle)] == [e["id"] for e in everything]
    info = [i for i in outcome_issues(bundle) if i["severity"] == "information"]
    assert info and info[0]["details"]["coding"][0]["code"] == "59100"
    assert info[0]["diagnostics"] == "_lastUpdated"
    bogus = fhir.search("Appointment", patient=DERRICK, frobnicate="1", status="booked")
    assert [i["diagnostics"] for i in outcome_issues(bogus)] == ["frobnicate"]


def test_sort_is_not_supported(fhir: Fhir) -> None:
    plain = [o["id"] for o in matches(fhir.search("Observation", patient=DERRICK, category="laboratory"))]
    bundle = fhir.search("Observation", patient=DERRICK, category="laboratory", _sort="-date")
    assert [o["id"] for o in matches(bundle)] == plain
    assert [i["diagnostics"] for i in outcome_issues(bundle)] == ["_sort"]


def test_last_updated_is_honoured_on_document_reference(fhir: Fhir) -> None:
    notes = matches(fhir.search("DocumentReference", patient=DERRICK))
    assert len(notes) == 4
    assert matches(fhir.search("DocumentReference", patient=DERRICK, _lastUpdated="gt2999-01-01")) == []
    assert len(matches(fhir.search("DocumentReference", patient=DERRICK, _lastUpdated="ge2000-01-01"))) == 4
    # An update moves the (internally tracked) lastUpdated of that note only.
    updated = notes[0]
    updated["docStatus"] = "amended"
    mark = fhir.server.sim.store.get("DocumentReference", updated["id"]).last_updated
    fhir.server.admin.put(
        f"/admin/resources/DocumentReference/{updated['id']}", json=updated
    ).raise_for_status()
    recent = matches(fhir.search("DocumentReference", patient=DERRICK, _lastUpdated=f"gt{mark}"))
    assert [d["id"] for d in recent] == [updated["id"]]
    assert "meta" not in recent[0]


def test_date_filters(fhir: Fhir) -> None:
    encounters = matches(fhir.search("Encounter", patient=DERRICK))
    starts = sorted(e["period"]["start"] for e in encounters)
    day = starts[0][:10]
    on_day = matches(fhir.search("Encounter", patient=DERRICK, date=day))
    assert {e["period"]["start"][:10] for e in on_day} == {day}
    after = matches(fhir.search("Encounter", patient=DERRICK, date=f"gt{day}"))
    assert all(e["period"]["start"][:10] > day for e in after)
    window = matches(
        fhir.search("Encounter", patient=DERRICK, date=[f"ge{starts[0][:10]}", f"le{starts[-1][:10]}"])
    )
    assert len(window) == len(encounters)


def test_appointment_status_and_identifier(fhir: Fhir) -> None:
    booked = matches(fhir.search("Appointment", patient=DERRICK, status="booked"))
    assert booked and all(a["status"] == "booked" for a in booked)
    ident = booked[0]["identifier"][0]
    found = matches(
        fhir.search("Appointment", patient=DERRICK, identifier=f"{ident['system']}|{ident['value']}")
    )
    assert [a["id"] for a in found] == [booked[0]["id"]]
    encounter = matches(fhir.search("Encounter", patient=DERRICK))[0]
    csn = encounter["identifier"][0]["value"]
    assert [e["id"] for e in matches(fhir.search("Encounter", patient=DERRICK, identifier=csn))] == [
        encounter["id"]
    ]


def test_empty_result_is_an_outcome_entry(fhir: Fhir) -> None:
    bundle = fhir.search("Patient", identifier=f"{MRN}|nobody")
    assert bundle["total"] == 0
    assert matches(bundle) == []
    assert len(bundle["entry"]) == 1
    entry = bundle["entry"][0]
    assert entry["search"]["mode"] == "outcome"
    assert epic_codes(entry["resource"]) == ["4101"]


def test_group_roster_read(fhir: Fhir) -> None:
    stats = fhir.server.stats()
    assert (stats["roster_group"], stats["sandbox_group"]) == ("all-patients", "sandbox-test-patients")
    roster = fhir.get("Group/all-patients").json()
    assert roster["resourceType"] == "Group"
    assert len(roster["member"]) == roster["quantity"] == 10
    assert roster["member"][0]["entity"]["reference"] == f"Patient/{DERRICK}"
    sandbox = fhir.get("Group/sandbox-test-patients").json()
    assert len(sandbox["member"]) == 4


def test_new_patients_join_the_roster_group(fhir: Fhir) -> None:
    def members() -> list[str]:
        group = fhir.get("Group/all-patients").json()
        assert group["quantity"] == len(group["member"])
        return [m["entity"]["reference"].split("/", 1)[1] for m in group["member"]]

    created = fhir.post("Patient", json={"resourceType": "Patient", "name": [{"family": "Roster"}]})
    via_fhir = created.headers["location"].rsplit("/", 1)[1]
    admin = fhir.server.admin
    via_admin = admin.post(
        "/admin/resources/Patient", json={"resourceType": "Patient", "name": [{"family": "A"}]}
    )
    via_admin_id = via_admin.json()["id"]
    steps = admin.post("/admin/activity/step", json={"count": 200}).json()["changes"]
    via_activity = [c.split("/", 1)[1] for c in steps if c.startswith("Patient.create/")]
    assert via_activity
    assert {via_fhir, via_admin_id, *via_activity} <= set(members())
    admin.delete(f"/admin/resources/Patient/{via_admin_id}").raise_for_status()
    assert via_admin_id not in members()


def test_document_reference_category_and_date(fhir: Fhir) -> None:
    notes = matches(fhir.search("DocumentReference", patient=DERRICK, category="clinical-note"))
    assert len(notes) == 4
    assert matches(fhir.search("DocumentReference", patient=DERRICK, category="imaging")) == []
    day = notes[0]["date"][:10]
    on_day = matches(fhir.search("DocumentReference", patient=DERRICK, date=day))
    assert notes[0]["id"] in {n["id"] for n in on_day}
    assert all(n["date"][:10] == day for n in on_day)


def test_observation_date_is_the_recorded_time(fhir: Fhir) -> None:
    labs = matches(fhir.search("Observation", patient=DERRICK, category="laboratory"))
    when = labs[0]["effectiveDateTime"]
    same = matches(fhir.search("Observation", patient=DERRICK, category="laboratory", date=when))
    assert {o["id"] for o in same} == {o["id"] for o in labs if o["effectiveDateTime"] == when}
    assert matches(fhir.search("Observation", patient=DERRICK, category="laboratory", date="lt1900")) == []


def test_post_search_and_its_logged_parameters(fhir: Fhir) -> None:
    mark = fhir.server.requests()[-1]["seq"]
    response = fhir.post("Encounter/_search", data={"patient": DERRICK, "_sort": "date"})
    assert response.status_code == 200
    assert len(matches(response.json())) == 4
    logged = fhir.server.requests(since=mark)[0]
    assert logged["query"] == {"patient": [DERRICK], "_sort": ["date"]}


def test_patient_given_matches_any_given_name(fhir: Fhir) -> None:
    for given in ("Camila", "maria", "MAR"):
        found = fhir.search("Patient", given=given, family="Lopez", birthdate="1987-09-12")
        assert [p["id"] for p in matches(found)] == [CAMILA]
    assert matches(fhir.search("Patient", given="aria", family="Lopez", birthdate="1987-09-12")) == []
    assert matches(fhir.search("Patient", given="%", family="Lopez", birthdate="1987-09-12")) == []
