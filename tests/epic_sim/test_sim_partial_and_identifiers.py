"""Two switches for the bridge's tests: partial answers (59204 warnings, optionally hiding the matches) for a
chosen client and resource type, and creates that keep only Epic's own identifier systems."""

from __future__ import annotations

from typing import Any

import pytest
from sim_support import Fhir, epic_codes, matches, outcome_issues

from epic_sim.cli import _parser, _partial_rule
from epic_sim.partial import PartialRule

DERRICK = "eq081-VQEgP8drUUqCWzHfw3"


def test_a_partial_rule_warns_only_its_client_and_type_and_can_hide_the_matches(
    epic_sim_factory: Any, connect: Any
) -> None:
    server = epic_sim_factory(patients=4)
    fhir: Fhir = connect(server)
    other: Fhir = connect(server, client_id="other-client")
    server.admin.put(
        "/admin/partial", json={"rules": [{"client_id": fhir.client_id, "resource": "Observation"}]}
    )
    bundle = fhir.search("Observation", patient=DERRICK, category="laboratory")
    assert matches(bundle) and epic_codes({"issue": outcome_issues(bundle)}) == ["59204"]
    assert outcome_issues(other.search("Observation", patient=DERRICK, category="laboratory")) == []
    assert outcome_issues(fhir.search("Patient", _id=DERRICK)) == []

    rules = {"rules": [{"client_id": fhir.client_id, "resource": "Patient", "hide": True}]}
    assert server.admin.put("/admin/partial", json=rules).json() == {
        "rules": [{"client_id": fhir.client_id, "resource": "Patient", "hide": True}]
    }
    hidden = fhir.search("Patient", _id=DERRICK)
    assert matches(hidden) == [] and hidden["total"] == 0
    assert "59204" in epic_codes({"issue": outcome_issues(hidden)})
    assert server.admin.put("/admin/partial", json={"rules": [{"nope": 1}]}).status_code == 400
    server.admin.delete("/admin/partial").raise_for_status()
    assert matches(fhir.search("Patient", _id=DERRICK))


def test_the_command_line_takes_partial_rules_and_identifier_switches() -> None:
    args = _parser().parse_args(
        [
            "serve",
            "--partial-answers",
            "bridge:Patient:hide",
            "--partial-answers",
            "*:Observation",
            "--drop-unknown-identifiers",
            "Observation,DocumentReference",
        ]
    )
    assert [_partial_rule(a) for a in args.partial_answers] == [
        PartialRule("bridge", "Patient", True),
        PartialRule(None, "Observation", False),
    ]
    assert args.drop_unknown_identifiers == "Observation,DocumentReference"
    with pytest.raises(SystemExit):
        _partial_rule("no-colon")


def test_creates_can_drop_identifier_systems_epic_does_not_know(epic_sim_factory: Any, connect: Any) -> None:
    server = epic_sim_factory(patients=1)
    fhir: Fhir = connect(server)
    assert server.admin.put("/admin/identifiers", json={"drop_unknown": ["Patient"]}).json() == {
        "drop_unknown": ["Patient"]
    }
    assert server.admin.put("/admin/identifiers", json={"drop_unknown": ["Nope"]}).status_code == 400
    created = fhir.post(
        "Patient",
        json={
            "resourceType": "Patient",
            "name": [{"family": "Dropped", "given": ["Id"]}],
            "identifier": [{"system": "urn:example:mine", "value": "1"}],
        },
    )
    assert created.status_code == 201
    patient = fhir.get(created.headers["Location"]).json()
    systems = [i["system"] for i in patient.get("identifier", [])]
    assert "urn:example:mine" not in systems and all(s.startswith("urn:oid:1.2.840.114350.") for s in systems)
