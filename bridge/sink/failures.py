"""What a failed call to the server means for a command: retry it, answer it, or look before creating again.

retriable   429, 503, other 5xx, 408, timeouts, dropped connections, unreadable answers, an expired
            token (401 after the client refreshed once), the token endpoint unreachable
permanent   400, 403, 404, 410, 422 and every other 4xx: answered at once with Epic's code
ambiguous   for a create only: the request may have reached the server and been carried out
            (timeout or dropped connection after sending, 5xx other than 503, an unreadable answer).
            Never retried blindly: the caller searches for the resource first.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.auth.errors import AuthError, InvalidClientError, InvalidGrantError, TokenEndpointError
from bridge.fhir.errors import (
    FHIRError,
    FHIRHTTPError,
    FHIRNotSent,
    FHIRProtocolError,
    FHIRTransportError,
    FHIRUnauthorized,
)
from bridge.sink.model import ErrorInfo

RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# A create answered with one of these was not carried out (the server says so), so it can be re-sent.
NOT_CARRIED_OUT = frozenset({401, 408, 429, 503})


@dataclass(frozen=True)
class Failure:
    error: ErrorInfo
    retriable: bool
    ambiguous: bool  # a create may have happened anyway
    retry_after_s: float | None = None


class GiveUp(Exception):
    """Raised inside the executor to answer a command at once with this failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error.message)
        self.failure = failure


def classify(exc: BaseException, *, creating: bool = False) -> Failure | None:
    """The meaning of an exception raised by the FHIR client; None for anything else (a bug)."""
    if isinstance(exc, FHIRHTTPError):
        retriable = exc.status in RETRIABLE_STATUSES or isinstance(exc, FHIRUnauthorized)
        ambiguous = creating and retriable and exc.status not in NOT_CARRIED_OUT
        message = str(exc)
        if isinstance(exc, FHIRUnauthorized):
            message += " (the access token was refused even after a refresh)"
        return Failure(
            ErrorInfo(
                message,
                http_status=exc.status,
                epic_code=exc.code,
                operation_outcome=exc.outcome,
                retriable=retriable,
            ),
            retriable=retriable,
            ambiguous=ambiguous,
            retry_after_s=exc.retry_after,
        )
    if isinstance(exc, FHIRTransportError):
        return Failure(ErrorInfo(str(exc), retriable=True), retriable=True, ambiguous=creating)
    if isinstance(exc, FHIRProtocolError):
        # Not FHIR where FHIR was promised (HTML, XML, a Bundle for a read): asking again gets the same
        # answer. After a create, though, the server may have created it: the caller searches first.
        return Failure(ErrorInfo(str(exc), retriable=creating), retriable=creating, ambiguous=creating)
    if isinstance(exc, FHIRNotSent):  # the create's promised time was up: it was not sent, nothing happened
        return Failure(ErrorInfo(str(exc), retriable=True), retriable=False, ambiguous=False)
    if isinstance(exc, FHIRError):  # e.g. a link to another origin: retrying cannot help
        return Failure(ErrorInfo(str(exc)), retriable=False, ambiguous=False)
    if isinstance(exc, TokenEndpointError):
        transient = not isinstance(exc, InvalidClientError | InvalidGrantError) and (
            exc.status is None or exc.status >= 500 or exc.status in (408, 429)
        )
        return Failure(
            ErrorInfo(f"no access token: {exc}", http_status=exc.status, retriable=transient),
            retriable=transient,
            ambiguous=False,
        )
    if isinstance(exc, AuthError):
        return Failure(ErrorInfo(f"no access token: {exc}"), retriable=False, ambiguous=False)
    return None


def failure_summary(failure: Failure) -> str:
    """For a log line: the HTTP status and Epic's code, not the message (it can quote patient data)."""
    error = failure.error
    parts = [f"HTTP {error.http_status}" if error.http_status is not None else "no HTTP answer"]
    if error.epic_code:
        parts.append(f"code {error.epic_code}")
    return ", ".join(parts) + (", retriable" if failure.retriable else "")
