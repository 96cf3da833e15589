"""The CapabilityStatement at /metadata: truthful for the active profile (the bridge plans from it)."""

from __future__ import annotations

from typing import Any

from epic_sim.config import SimConfig
from epic_sim.search_rules import PARAM_TYPES, SEARCHABLE_TYPES, supported_params
from epic_sim.writes import EPIC_CREATE_VALIDATORS


def interactions(config: SimConfig, rtype: str) -> list[str]:
    if rtype == "Group":
        return ["read"]
    codes = ["read", "search-type"]
    if config.profile == "generic" or rtype in EPIC_CREATE_VALIDATORS:
        codes.append("create")
    return codes


def capability_statement(config: SimConfig) -> dict[str, Any]:
    epic = config.profile == "epic"
    resources = []
    for rtype in (*SEARCHABLE_TYPES, "Group"):
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": c} for c in interactions(config, rtype)],
        }
        if not epic:
            entry["versioning"] = "versioned"
        params = supported_params(config.profile, rtype)
        if params:
            entry["searchParam"] = [{"name": p, "type": PARAM_TYPES[p]} for p in params]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": config.anchor_date,
        "kind": "instance",
        "software": {"name": "Epic", "version": "November 2026 (simulated)"}
        if epic
        else {"name": "Generic FHIR Server (epic-sim)", "version": "1.0"},
        "implementation": {"description": f"epic-sim ({config.profile} profile)", "url": config.fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["xml", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [
                                {"url": "token", "valueUri": config.token_url},
                                {"url": "authorize", "valueUri": config.authorize_url},
                            ],
                        }
                    ],
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                },
                "resource": resources,
            }
        ],
    }
