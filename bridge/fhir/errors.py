"""One small exception tree for everything that can go wrong talking FHIR.

httpx exceptions never leave the client: they are translated here, at the boundary.

    FHIRError
    ├── FHIRTransportError          (no HTTP answer)
    │   ├── FHIRTimeout
    │   └── FHIRConnectionError
    ├── FHIRHTTPError               (an HTTP answer that is not a success; .status, .code, .outcome)
    │   ├── FHIRBadRequest          400 / 422
    │   ├── FHIRUnauthorized        401 (after one refresh and one retry)
    │   ├── FHIRForbidden           403 (scope/API not registered for this app)
    │   ├── FHIRNotFound            404
    │   ├── FHIRRateLimited         429 (after retries; .retry_after)
    │   └── FHIRServerError         5xx (after retries)
    ├── FHIRProtocolError           (not FHIR JSON, wrong resource type, ...)
    ├── FHIRInvalidRequest          (refused before sending: a malformed type or id; also a ValueError)
    ├── FHIRNotSent                 (refused before sending: its `not_after` time had passed)
    └── CrossOriginLinkError        (a link to another origin was refused)
"""

from __future__ import annotations

from typing import Any

import httpx

from bridge.errors import BridgeError

EPIC_CODE_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"


class FHIRError(BridgeError):
    """Base of every FHIR client failure."""


class FHIRTransportError(FHIRError):
    """The server gave no HTTP answer (connection refused, DNS, timeout, dropped connection)."""


class FHIRTimeout(FHIRTransportError):
    pass


class FHIRConnectionError(FHIRTransportError):
    pass


class FHIRProtocolError(FHIRError):
    """The answer is not what FHIR promises (e.g. XML or HTML instead of FHIR JSON)."""


class FHIRInvalidRequest(FHIRError, ValueError):
    """Refused before sending: not a FHIR resource type or id (ids may come from commands)."""


class FHIRNotSent(FHIRError):
    """Refused before sending: the request was only to go out before a time (`not_after`), now past."""


class CrossOriginLinkError(FHIRError):
    """A link points outside the connection's origin; following it could leak the bearer token."""


class FHIRHTTPError(FHIRError):
    """An HTTP error answer: ``code`` is Epic's (else the issue's) code, ``outcome`` the OperationOutcome.

    ``server_text`` is the part of the message the server wrote (the OperationOutcome's words, which can
    quote patient data): log lines hide it (``bridge.logs.error_text``); results keep the whole message.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        outcome: dict[str, Any] | None = None,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
        www_authenticate: str | None = None,
        server_text: str | None = None,
    ) -> None:
        self.status = status
        self.server_text = server_text
        self.code = code
        self.outcome = outcome
        self.method = method
        self.path = path
        self.retry_after = retry_after
        self.www_authenticate = www_authenticate
        where = f" {method} {path}" if method else ""
        super().__init__(f"HTTP {status}{where}: {message}" + (f" (code {code})" if code else ""))


class FHIRBadRequest(FHIRHTTPError):
    pass


class FHIRUnauthorized(FHIRHTTPError):
    pass


class FHIRForbidden(FHIRHTTPError):
    pass


class FHIRNotFound(FHIRHTTPError):
    pass


class FHIRRateLimited(FHIRHTTPError):
    pass


class FHIRServerError(FHIRHTTPError):
    pass


_BY_STATUS: dict[int, type[FHIRHTTPError]] = {
    400: FHIRBadRequest,
    422: FHIRBadRequest,
    401: FHIRUnauthorized,
    403: FHIRForbidden,
    404: FHIRNotFound,
    410: FHIRNotFound,
    429: FHIRRateLimited,
}


def outcome_issues(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    issues = outcome.get("issue")
    return [i for i in issues if isinstance(i, dict)] if isinstance(issues, list) else []


def issue_code(issue: dict[str, Any]) -> str | None:
    """Epic's code from ``details.coding`` (Epic's system first), else the FHIR issue code."""
    details = issue.get("details")
    codings = details.get("coding") if isinstance(details, dict) else None
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict) and coding.get("system") == EPIC_CODE_SYSTEM and coding.get("code"):
                return str(coding["code"])
        for coding in codings:
            if isinstance(coding, dict) and coding.get("code"):
                return str(coding["code"])
    code = issue.get("code")
    return str(code) if code else None


def issue_text(issue: dict[str, Any]) -> str:
    details = issue.get("details")
    if isinstance(details, dict) and isinstance(details.get("text"), str):
        return str(details["text"])
    codings = details.get("coding") if isinstance(details, dict) else None
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                return str(coding["display"])
    diag = issue.get("diagnostics")
    return str(diag) if isinstance(diag, str) else str(issue.get("code") or "")


def _outcome_of(response: httpx.Response) -> dict[str, Any] | None:
    ctype = response.headers.get("Content-Type", "")
    if "json" not in ctype:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body
    return None


def error_from_response(response: httpx.Response, *, retry_after: float | None = None) -> FHIRHTTPError:
    """Translate an error answer into the typed error (reads the body; call after it was loaded)."""
    status = response.status_code
    outcome = _outcome_of(response)
    code: str | None = None
    message = response.reason_phrase or "error"
    server_text: str | None = None
    if outcome is not None:
        issues = outcome_issues(outcome)
        errors = [i for i in issues if i.get("severity") in ("error", "fatal")] or issues
        if errors:
            code = issue_code(errors[0])
            server_text = issue_text(errors[0]) or None
            message = server_text or message
    elif "html" in response.headers.get("Content-Type", "") and status == 404:
        message = "not found (HTML page: unknown resource type or wrong base URL)"
    cls = _BY_STATUS.get(status, FHIRServerError if status >= 500 else FHIRHTTPError)
    return cls(
        status,
        message,
        code=code,
        outcome=outcome,
        method=response.request.method,
        path=response.request.url.path,
        retry_after=retry_after,
        www_authenticate=response.headers.get("WWW-Authenticate"),
        server_text=server_text,
    )


def translate_transport_error(exc: httpx.TransportError, method: str, path: str) -> FHIRTransportError:
    what = f"{method} {path}: {type(exc).__name__}"
    if isinstance(exc, httpx.TimeoutException):
        return FHIRTimeout(f"{what} (timed out)")
    return FHIRConnectionError(f"{what} ({exc})" if str(exc) else what)
