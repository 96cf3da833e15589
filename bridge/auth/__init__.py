"""OAuth 2.0 to Epic: backend services (private_key_jwt), authorization code + refresh, token manager."""

from bridge.auth.errors import (
    AuthError,
    BareBadRequestError,
    ConsentError,
    InvalidClientError,
    InvalidGrantError,
    KeyMaterialError,
    NotConnectedError,
    TokenEndpointError,
    TokenEndpointUnavailable,
)
from bridge.auth.keys import KeySet, SigningKey
from bridge.auth.manager import BearerAuth, TokenManager
from bridge.auth.tokens import Token, TokenEndpoint

__all__ = [
    "AuthError",
    "BareBadRequestError",
    "BearerAuth",
    "ConsentError",
    "InvalidClientError",
    "InvalidGrantError",
    "KeyMaterialError",
    "KeySet",
    "NotConnectedError",
    "SigningKey",
    "Token",
    "TokenEndpoint",
    "TokenEndpointError",
    "TokenEndpointUnavailable",
    "TokenManager",
]
