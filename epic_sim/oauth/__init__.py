"""OAuth 2.0 authorization server of the Epic simulator.

Public API: `OAuthServer`, `Grant`, `OAuthHTTPException`, plus `InvalidRegistration` (raised by
`OAuthServer.register_client`), `Refusal` (what `OAuthServer.last_error` returns) and `Interaction`
(the Literal type of `authorize()`'s interaction argument).
"""

from .errors import InvalidRegistration, OAuthHTTPException
from .refusals import Refusal
from .scopes import Interaction
from .server import Grant, OAuthServer

__all__ = ["Grant", "Interaction", "InvalidRegistration", "OAuthHTTPException", "OAuthServer", "Refusal"]
