from __future__ import annotations

from bridge.fhir.capabilities import Capabilities

STATEMENT = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "software": {"name": "Epic"},
    "rest": [
        {
            "mode": "server",
            "resource": [
                {
                    "type": "Patient",
                    "interaction": [{"code": "read"}, {"code": "search-type"}, {"code": "create"}],
                    "searchParam": [{"name": "_id"}, {"name": "identifier"}, {"name": "family"}],
                },
                {
                    "type": "Encounter",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [{"name": "patient"}, {"name": "date"}, {"name": "_count"}],
                },
                {
                    "type": "DocumentReference",
                    "interaction": [{"code": "search-type"}, {"code": "create"}],
                    "searchParam": [{"name": "patient"}, {"name": "_lastUpdated"}],
                    "operation": [{"name": "$docref"}],
                },
            ],
        }
    ],
}


def test_answers() -> None:
    caps = Capabilities.from_statement(STATEMENT)
    assert caps.is_epic and caps.profile("auto") == "epic" and caps.profile("generic") == "generic"
    assert caps.supports_search_param("Encounter", "date")
    assert caps.supports_search_param("Encounter", "date:ge")
    assert not caps.supports_search_param("Encounter", "_lastUpdated")
    assert caps.supports_search_param("DocumentReference", "_lastUpdated")
    assert caps.supports_create("Patient") and not caps.supports_create("Encounter")
    assert caps.supports_interaction("Encounter", "search") and caps.supports_read("Encounter")
    assert not caps.supports_read("DocumentReference")
    assert not caps.supports_resource("Appointment") and not caps.supports_create("Appointment")
    assert caps.supports_operation("DocumentReference", "docref")


def test_generic_and_empty() -> None:
    caps = Capabilities.from_statement({"resourceType": "CapabilityStatement", "software": {"name": "HAPI"}})
    assert caps.profile("auto") == "generic" and not caps.supports_search("Patient")
