"""SMART configuration discovery (``{fhir base}/.well-known/smart-configuration``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from bridge.auth.errors import DiscoveryError


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
    def from_json(cls, doc: dict[str, Any]) -> SmartConfiguration:
        token = doc.get("token_endpoint")
        if not isinstance(token, str) or not token:
            raise DiscoveryError("smart-configuration has no token_endpoint")

        def strs(key: str) -> tuple[str, ...]:
            v = doc.get(key)
            return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()

        authz = doc.get("authorization_endpoint")
        return cls(
            token_endpoint=token,
            authorization_endpoint=authz if isinstance(authz, str) else None,
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
    return SmartConfiguration.from_json(doc)
