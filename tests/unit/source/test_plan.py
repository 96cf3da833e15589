"""Poll plans: only parameters the CapabilityStatement lists, Epic's anchoring rules, generic _lastUpdated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bridge.config import ConnectionConfig
from bridge.config.source import EPIC_OBSERVATION_CATEGORIES
from bridge.fhir.capabilities import Capabilities
from bridge.source.plan import PlanError, plan_resource

EPIC_PARAMS = {
    "Patient": ["_id", "identifier", "family", "given", "birthdate", "gender", "_count"],
    "Observation": ["patient", "subject", "category", "code", "date", "_count"],
    "Encounter": ["patient", "subject", "date", "identifier", "_count"],
    "Appointment": ["patient", "date", "identifier", "status", "_count"],
    "DocumentReference": ["patient", "subject", "category", "date", "_lastUpdated", "_count"],
}
ALL = {"Patient": {}, "Appointment": {}, "Encounter": {}, "Observation": {}, "DocumentReference": {}}


def statement(software: str, params: dict[str, list[str]], read_only: tuple[str, ...] = ()) -> Capabilities:
    resources: list[dict[str, Any]] = [
        {
            "type": rtype,
            "interaction": [{"code": "read"}] + ([] if rtype in read_only else [{"code": "search-type"}]),
            "searchParam": [{"name": p, "type": "token"} for p in names],
        }
        for rtype, names in params.items()
    ]
    resources.append({"type": "Group", "interaction": [{"code": "read"}]})
    return Capabilities.from_statement(
        {
            "resourceType": "CapabilityStatement",
            "software": {"name": software},
            "rest": [{"mode": "server", "resource": resources}],
        }
    )


EPIC = statement("Epic", EPIC_PARAMS)
GENERIC = statement("HAPI", {r: [*p, "_lastUpdated", "_id", "_sort"] for r, p in EPIC_PARAMS.items()})


def names(params: list[tuple[str, str]]) -> list[str]:
    return [n for n, _ in params]


def test_epic_patient_is_read_by_id_per_roster_patient(make_config: Callable[..., ConnectionConfig]) -> None:
    plan = plan_resource(make_config(resources=ALL), EPIC, "Patient")
    assert (plan.mode, plan.patient_param, plan.last_updated) == ("per-patient", "_id", False)
    assert plan.params(plan.variants[0], "p1", None, None) == [("_id", "p1"), ("_count", "200")]


def test_epic_observation_searches_once_per_category(make_config: Callable[..., ConnectionConfig]) -> None:
    cfg = make_config(resources={**ALL, "Observation": {"categories": ["vital-signs", "laboratory"]}})
    plan = plan_resource(cfg, EPIC, "Observation")
    assert plan.variants == ((("category", "vital-signs"),), (("category", "laboratory"),))
    assert plan.params(plan.variants[1], "p1", "2026-01-01T00:00:00Z", None) == [
        ("patient", "p1"),
        ("category", "laboratory"),
        ("_count", "200"),
    ]  # no _lastUpdated: Epic does not list it on Observation (and would ignore it)


def test_epic_observation_without_categories_uses_epics_documented_list(
    make_config: Callable[..., ConnectionConfig],
) -> None:
    plan = plan_resource(make_config(resources=ALL), EPIC, "Observation")
    assert [v[0][1] for v in plan.variants] == list(EPIC_OBSERVATION_CATEGORIES)


def test_epic_document_reference_gets_a_per_patient_last_updated_bound(
    make_config: Callable[..., ConnectionConfig],
) -> None:
    plan = plan_resource(make_config(resources=ALL), EPIC, "DocumentReference")
    assert (plan.mode, plan.last_updated) == ("per-patient", True)
    assert names(plan.params(plan.variants[0], "p1", "2026-11-25T08:00:00Z", None)) == [
        "patient",
        "_lastUpdated",
        "_count",
    ]


def test_date_window_only_where_date_is_listed(make_config: Callable[..., ConnectionConfig]) -> None:
    cfg = make_config(resources=ALL, source={"date_window_days": 30})
    encounter = plan_resource(cfg, EPIC, "Encounter")
    assert ("date", "ge2026-10-26") in encounter.params((), "p1", None, "2026-10-26")
    patient = plan_resource(cfg, EPIC, "Patient")
    assert "date" not in names(patient.params((), "p1", None, "2026-10-26"))


def test_generic_server_polls_unanchored_with_last_updated(
    make_config: Callable[..., ConnectionConfig],
) -> None:
    cfg = make_config(resources=ALL)
    for rtype in ALL:
        plan = plan_resource(cfg, GENERIC, rtype)
        assert (plan.mode, plan.uses_roster) == ("unanchored", False)
        assert plan.params(plan.variants[0], None, "2026-11-25T08:00:00Z", None) == [
            ("_lastUpdated", "ge2026-11-25T08:00:00Z"),
            ("_count", "200"),
        ]


def test_a_configured_profile_overrides_the_statement(make_config: Callable[..., ConnectionConfig]) -> None:
    plan = plan_resource(make_config(resources=ALL, server_profile="epic"), GENERIC, "Encounter")
    assert plan.mode == "per-patient"  # treated as Epic, but still only listed parameters
    assert plan.last_updated  # this server lists _lastUpdated on Encounter


def test_patient_read_when_id_search_is_not_listed(make_config: Callable[..., ConnectionConfig]) -> None:
    caps = statement("Epic", {**EPIC_PARAMS, "Patient": ["identifier"]})
    plan = plan_resource(make_config(resources=ALL), caps, "Patient")
    assert (plan.mode, plan.count) == ("read", None)


@pytest.mark.parametrize(
    ("caps", "rtype", "resources", "message"),
    [
        (statement("Epic", {"Patient": ["_id"]}), "Encounter", ALL, "does not list this resource"),
        (statement("Epic", {**EPIC_PARAMS, "Encounter": ["date"]}), "Encounter", ALL, "neither `patient`"),
        (
            statement("Epic", {**EPIC_PARAMS, "Appointment": ["patient"]}),
            "Appointment",
            {**ALL, "Appointment": {"categories": ["x"]}},
            "does not list `category`",
        ),
        (
            statement("Epic", EPIC_PARAMS, read_only=("Encounter",)),
            "Encounter",
            ALL,
            "does not support search",
        ),
    ],
)
def test_what_cannot_be_planned_is_refused_with_a_reason(
    make_config: Callable[..., ConnectionConfig],
    caps: Capabilities,
    rtype: str,
    resources: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(PlanError, match=message):
        plan_resource(make_config(resources=resources), caps, rtype)


def test_count_is_sent_only_where_listed(make_config: Callable[..., ConnectionConfig]) -> None:
    caps = statement("Epic", {**EPIC_PARAMS, "Encounter": ["patient"]})
    plan = plan_resource(make_config(resources=ALL, source={"page_size": 50}), caps, "Encounter")
    assert plan.params((), "p1", None, None) == [("patient", "p1")]
    assert plan_resource(make_config(resources=ALL, source={"page_size": 50}), EPIC, "Encounter").count == 50
