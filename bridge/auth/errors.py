"""Authentication errors, each saying what it means in plain words. No message carries a secret."""

from __future__ import annotations

from bridge.errors import BridgeError


class AuthError(BridgeError):
    """Base of every authentication failure."""


class KeyMaterialError(AuthError):
    """A private key cannot be loaded (missing file, wrong passphrase, unsupported type)."""


class DiscoveryError(AuthError):
    """The SMART configuration could not be read."""


class UnsafeEndpointError(DiscoveryError):
    """The SMART configuration advertises an endpoint the bridge will not send credentials to.

    ``problem`` says what is wrong with it, ``fix`` what the operator can do.
    """

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; fix: {fix}")


class TokenEndpointError(AuthError):
    """The token endpoint refused the request.

    ``error`` is the OAuth error code (``invalid_client``...) or None for a bare answer.
    """

    meaning = "the token endpoint refused the request"

    def __init__(
        self,
        status: int | None,
        error: str | None = None,
        description: str | None = None,
        *,
        token_url: str = "",
    ) -> None:
        self.status = status
        self.error = error
        self.description = description
        self.token_url = token_url
        self.server_time_offset_s: float | None = None
        detail = f"HTTP {status}" if status is not None else "no HTTP answer"
        if error:
            detail += f", error={error}"
        if description:
            detail += f" ({description})"
        super().__init__(f"{self.meaning}: {detail}" + (f" from {token_url}" if token_url else ""))


class InvalidClientError(TokenEndpointError):
    meaning = (
        "the token endpoint did not accept this client's credentials (invalid_client): unknown client id "
        "in this environment, a signature that matches no registered public key, a JWT aud that is not the "
        "exact token URL, a JWT outside its validity window (clock skew), or a wrong client secret"
    )


class InvalidGrantError(TokenEndpointError):
    meaning = (
        "the grant was refused (invalid_grant): the authorization code or refresh token is expired, "
        "revoked, already used, or was issued to another client or redirect URI"
    )


class InvalidScopeError(TokenEndpointError):
    meaning = "a requested scope is not allowed for this app (invalid_scope)"


class UnauthorizedClientError(TokenEndpointError):
    meaning = "this client may not use this grant type (unauthorized_client)"


class BareBadRequestError(TokenEndpointError):
    meaning = (
        "the token endpoint kept answering a bare HTTP 400 (Epic sometimes does this spuriously; it "
        "also happens for bad credentials)"
    )


class TokenEndpointUnavailable(TokenEndpointError):
    meaning = "the token endpoint could not be reached or kept failing"


class NotConnectedError(AuthError):
    """No refresh token stored for an authorization-code connection."""


class ConsentError(AuthError):
    """The authorization-code redirect did not come back as expected (denied, state mismatch, timeout)."""


ERRORS_BY_CODE: dict[str, type[TokenEndpointError]] = {
    "invalid_client": InvalidClientError,
    "invalid_grant": InvalidGrantError,
    "invalid_scope": InvalidScopeError,
    "unauthorized_client": UnauthorizedClientError,
}
