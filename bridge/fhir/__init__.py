"""FHIR R4 client: errors, retries, rate limiting, capabilities."""

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
from bridge.fhir.ratelimit import AdaptiveRateLimiter

__all__ = [
    "AdaptiveRateLimiter",
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
    "SearchPage",
]
