"""The SMART scope grammar (pure functions; the HTTP behaviour is in test_oauth_tokens.py)."""

from __future__ import annotations

import pytest

from epic_sim.oauth.scopes import (
    PASS_THROUGH_USER_SCOPES,
    ResourceScope,
    covers,
    narrow,
    parse_resource_scope,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("system/Patient.r", ResourceScope("system", "Patient", frozenset("r"))),
        ("system/Observation.rs", ResourceScope("system", "Observation", frozenset("rs"))),
        ("system/Patient.cruds", ResourceScope("system", "Patient", frozenset("cruds"))),
        ("user/Patient.read", ResourceScope("user", "Patient", frozenset("rs"))),
        ("patient/*.write", ResourceScope("patient", "*", frozenset("cud"))),
        ("system/DocumentReference.*", ResourceScope("system", "DocumentReference", frozenset("cruds"))),
        ("openid", None),
        ("launch/patient", None),
        ("epic.scanning.dmsusername", None),
    ],
)
def test_parse(text: str, expected: ResourceScope | None) -> None:
    assert parse_resource_scope(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "system/Patient.sr",
        "system/Patient.rr",
        "system/Patient.",
        "system/patient.r",
        "system/Patient.x",
        "a b",
    ],
)
def test_parse_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_resource_scope(text)


@pytest.mark.parametrize(
    ("granted", "resource", "interaction", "allowed"),
    [
        (["system/Patient.r"], "Patient", "read", True),
        (["system/Patient.r"], "Patient", "search", False),
        (["system/Patient.s"], "Patient", "search", True),
        (["system/Patient.read"], "Patient", "search", True),
        (["system/Patient.read"], "Patient", "create", False),
        (["system/Patient.write"], "Patient", "create", True),
        (["system/Patient.c"], "Patient", "create", True),
        (["system/Patient.write"], "Patient", "update", True),
        (["system/Patient.cud"], "Patient", "delete", True),
        (["system/Patient.rs"], "Patient", "delete", False),
        (["system/*.rs"], "Encounter", "read", True),
        (["user/Appointment.r"], "Appointment", "operation", True),
        (["system/Appointment.rs"], "Patient", "operation", False),
        (["openid", "fhirUser"], "Patient", "read", False),
        (["garbage scope!", "system/Patient.r"], "Patient", "read", True),
    ],
)
def test_covers(granted: list[str], resource: str, interaction: str, allowed: bool) -> None:
    assert covers(granted, resource, interaction) is allowed  # type: ignore[arg-type]


def test_narrow_keeps_what_registered_scopes_grant() -> None:
    registered = ["system/Patient.rs", "system/Observation.read", "system/*.s", "user/Patient.read"]
    requested = [
        "system/Patient.r",  # within .rs
        "system/Patient.c",  # not granted
        "system/Observation.rs",  # v1 read = rs
        "system/Encounter.s",  # via *.s
        "system/Encounter.r",  # no
        "user/Patient.r",  # wrong context for a backend token
        "openid",  # not registered, no pass-through
    ]
    assert narrow(requested, registered, contexts={"system"}) == [
        "system/Patient.r",
        "system/Observation.rs",
        "system/Encounter.s",
    ]


def test_narrow_user_context_passes_openid_through() -> None:
    kept = narrow(
        ["openid", "fhirUser", "user/Patient.read", "system/Patient.read"],
        ["user/Patient.read", "system/Patient.read"],
        contexts={"user", "patient"},
        pass_through=PASS_THROUGH_USER_SCOPES,
    )
    assert kept == ["openid", "fhirUser", "user/Patient.read"]


def test_narrow_combines_separately_registered_letters() -> None:
    registered = ["system/Patient.r", "system/Patient.s", "system/Patient.c"]
    assert narrow(
        ["system/Patient.rs", "system/Patient.read", "system/Patient.rsd"], registered, contexts={"system"}
    ) == [
        "system/Patient.rs",
        "system/Patient.read",
    ]
