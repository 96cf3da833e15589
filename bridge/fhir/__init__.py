"""FHIR R4 client: errors, retries, the request budget, capabilities."""

from bridge.fhir.budget import Priority, RequestBudget
from bridge.fhir.capabilities import Capabilities
from bridge.fhir.client import CreateResult, FHIRClient, OutcomeMessage, SearchPage
from bridge.fhir.errors import (
    CrossOriginLinkError,
    FHIRBadRequest,
    FHIRError,
    FHIRForbidden,
    FHIRHTTPError,
    FHIRInvalidRequest,
    FHIRNotFound,
    FHIRProtocolError,
    FHIRRateLimited,
    FHIRServerError,
    FHIRTimeout,
    FHIRTransportError,
    FHIRUnauthorized,
)

__all__ = [
    "Capabilities",
    "CreateResult",
    "CrossOriginLinkError",
    "FHIRBadRequest",
    "FHIRClient",
    "FHIRError",
    "FHIRForbidden",
    "FHIRHTTPError",
    "FHIRInvalidRequest",
    "FHIRNotFound",
    "FHIRProtocolError",
    "FHIRRateLimited",
    "FHIRServerError",
    "FHIRTimeout",
    "FHIRTransportError",
    "FHIRUnauthorized",
    "OutcomeMessage",
    "Priority",
    "RequestBudget",
    "SearchPage",
]
