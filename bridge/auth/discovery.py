"""SMART configuration discovery (``{fhir base}/.well-known/smart-configuration``).

The endpoints it advertises are held to the rule of configured ones (``bridge.config.models.check_url``):
client secrets, signed assertions and refresh tokens go to the token endpoint, and the user's consent to
the authorize endpoint, so whoever can answer (or alter) the discovery document must not be able to send
them to plain http or another scheme.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from bridge.auth.errors import DiscoveryError, UnsafeEndpointError
from bridge.config.models import check_url

_CONFIGURED_INSTEAD = {"token_endpoint": "auth.token_url", "authorization_endpoint": "auth.authorize_url"}


def _safe_endpoint(doc: dict[str, Any], key: str, source: str) -> str | None:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        return None
    try:
        return check_url(value, key)
    except ValueError as exc:
        raise UnsafeEndpointError(
            f"{source} advertises an endpoint the bridge will not send credentials to: {exc}",
            "check that fhir_base_url is this Epic environment's https address (a proxy or a wrong server "
            f"may answer there), or set {_CONFIGURED_INSTEAD[key]} to the environment's https endpoint",
        ) from None


@dataclass(frozen=True)
class SmartConfiguration:
    token_endpoint: str
    authorization_endpoint: str | None = None
    token_endpoint_auth_methods: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str = "smart-configuration") -> SmartConfiguration:
        """UnsafeEndpointError when an endpoint breaks the https rule; DiscoveryError without a token one."""
        token = _safe_endpoint(doc, "token_endpoint", source)
        if token is None:
            raise DiscoveryError(f"{source} has no token_endpoint")

        def strs(key: str) -> tuple[str, ...]:
            v = doc.get(key)
            return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()

        return cls(
            token_endpoint=token,
            authorization_endpoint=_safe_endpoint(doc, "authorization_endpoint", source),
            token_endpoint_auth_methods=strs("token_endpoint_auth_methods_supported"),
            grant_types=strs("grant_types_supported"),
            capabilities=strs("capabilities"),
            scopes_supported=strs("scopes_supported"),
            raw=doc,
        )


def smart_configuration_url(fhir_base_url: str) -> str:
    return fhir_base_url.rstrip("/") + "/.well-known/smart-configuration"


async def discover(http: httpx.AsyncClient, fhir_base_url: str) -> SmartConfiguration:
    """Read the SMART configuration. Transport errors propagate (the caller reports unreachable)."""
    url = smart_configuration_url(fhir_base_url)
    response = await http.get(url, headers={"Accept": "application/json"})
    if response.status_code != 200:
        raise DiscoveryError(f"{url} answered HTTP {response.status_code}")
    try:
        doc = response.json()
    except ValueError:
        raise DiscoveryError(f"{url} did not answer JSON") from None
    if not isinstance(doc, dict):
        raise DiscoveryError(f"{url} did not answer a JSON object")
    return SmartConfiguration.from_json(doc, url)
