"""Optional: FHIR resources as `fhir.resources` models.

fhir.resources has no R4 package of its own; its R4B models are R4 plus a few additions and read
Epic's R4 JSON for the resources the bridge publishes. The import is lazy, so the rest of the client
works without the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.client.errors import FhirModelsUnavailable


def fhir_model(resource: Mapping[str, Any]) -> Any:
    """A validated R4B model of `resource` (pydantic; `.model_dump()` gives the JSON back)."""
    try:
        from fhir.resources.R4B import get_fhir_model_class
    except ImportError as exc:
        raise FhirModelsUnavailable(
            "FHIR models need the optional package fhir.resources: "
            "pip install 'epic-kafka-bridge[fhir]' (or 'fhir.resources>=8,<9')"
        ) from exc
    model = get_fhir_model_class(str(resource["resourceType"]))
    return model.model_validate(dict(resource))
