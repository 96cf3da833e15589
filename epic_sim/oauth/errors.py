"""Errors of the OAuth server and the exact HTTP responses Epic gives for them.

Two families:
- `OAuthError`: a refusal at the token or authorize endpoint. It carries the OAuth `error` code that
  goes on the wire and a `reason` that only goes to the server log (Epic never tells a client *why*
  its assertion was refused; tests read the reason through `OAuthServer.last_error`).
- `OAuthHTTPException`: raised by `OAuthServer.authorize()` for FHIR calls; `.response` is ready to return.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

EPIC_OO_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"
# A header value, not a secret.
INVALID_TOKEN_WWW_AUTHENTICATE = (
    'Bearer error="invalid_token", error_description="The access token provided is not valid"'  # noqa: S105
)
# Code Epic uses for "Client not authorized for ..." (seen as a warning inside 200 bundles).
NOT_AUTHORIZED_CODE = "59204"

# Token-endpoint error codes (RFC 6749 section 5.2) and their HTTP status.
_STATUS = {
    "invalid_request": 400,
    "invalid_client": 401,
    "invalid_grant": 400,
    "unauthorized_client": 400,
    "unsupported_grant_type": 400,
    "invalid_scope": 400,
}
NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """A refusal with an OAuth error code (sent) and a reason (logged only)."""

    def __init__(self, error: str, reason: str, *, client_id: str | None = None) -> None:
        if error not in _STATUS:
            raise ValueError(f"unknown OAuth error code {error!r}")
        super().__init__(f"{error}: {reason}")
        self.error = error
        self.reason = reason
        self.client_id = client_id

    @property
    def status_code(self) -> int:
        return _STATUS[self.error]


class InvalidRegistration(ValueError):
    """A client registration that cannot be accepted; the message says why."""


class OAuthHTTPException(Exception):
    """Raised by `OAuthServer.authorize()`; `.response` carries Epic's exact 401 or 403."""

    def __init__(self, response: Response, *, reason: str, outcome: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.response = response
        self.reason = reason
        self.outcome = outcome


def token_error_response(err: OAuthError, *, basic_auth_used: bool = False) -> JSONResponse:
    """Epic's shape: `{"error": "invalid_grant", "error_description": null}`."""
    headers = dict(NO_STORE_HEADERS)
    if err.error == "invalid_client" and basic_auth_used:
        # RFC 6749 5.2: a 401 must name the scheme the client tried.
        headers["WWW-Authenticate"] = 'Basic realm="epic-sim"'
    return JSONResponse(
        {"error": err.error, "error_description": None}, status_code=err.status_code, headers=headers
    )


def invalid_token(reason: str) -> OAuthHTTPException:
    response = Response(
        status_code=401, headers={"WWW-Authenticate": INVALID_TOKEN_WWW_AUTHENTICATE}, content=b""
    )
    return OAuthHTTPException(response, reason=reason)


def forbidden(resource_type: str, interaction: str, reason: str) -> OAuthHTTPException:
    text = f"Client not authorized for {resource_type} - {interaction.capitalize()}"
    outcome: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "fatal",
                "code": "forbidden",
                "details": {
                    "coding": [{"system": EPIC_OO_SYSTEM, "code": NOT_AUTHORIZED_CODE, "display": text}],
                    "text": text,
                },
                "diagnostics": text,
            }
        ],
    }
    response = Response(
        content=json.dumps(outcome).encode(),
        status_code=403,
        media_type="application/fhir+json; charset=utf-8",
    )
    return OAuthHTTPException(response, reason=reason, outcome=outcome)
