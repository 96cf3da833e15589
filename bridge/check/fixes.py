"""The likely fix for each failure ``check`` can see, in plain words."""

from __future__ import annotations

import httpx

from bridge.auth.keys import KeySet
from bridge.config.models import BackendServicesAuth, ConnectionConfig

_LETTER = {"read": "r", "search": "s", "create": "c"}
_API_WORD = {"read": "Read", "search": "Search", "create": "Create"}


def fix_unreachable(url: str) -> str:
    host = httpx.URL(url).host
    return (
        f"cannot reach {host}: check the URL in the config, DNS, firewall/proxy or VPN, and that it is "
        "the environment you mean (sandbox and production hosts differ)"
    )


def fix_wrong_token_url(configured: str, advertised: str) -> str:
    return (
        f"wrong token URL: the config says {configured} but the server advertises {advertised}; the JWT "
        "aud must be exactly the token URL — remove auth.token_url to use the advertised one, "
        "or copy it exactly"
    )


def fix_bad_key(cfg: ConnectionConfig, keys: KeySet | None, jwks_url: str | None) -> str:
    kids = ", ".join(k.kid for k in keys.keys) if keys else "?"
    where = (
        jwks_url
        or "(this bridge's public URL)/.well-known/jwks.json (set EPIC_BRIDGE_PUBLIC_URL to see it here)"
    )
    return (
        f"Epic did not accept the signed JWT for client {cfg.auth.client_id}: register the JWK Set URL "
        f"{where} on the Epic app for this environment (Epic caches it for up to 29 hours) and make sure "
        f"it serves the key(s) {kids}; if this client id belongs to another environment "
        "(non-production vs production), you are using the wrong environment's client id"
    )


def fix_clock(offset: float) -> str:
    return (
        f"clock skew on the JWT: this machine's clock is {abs(offset):.0f}s "
        f"{'behind' if offset > 0 else 'ahead of'} the server; enable NTP time sync"
    )


def fix_missing_scope(cfg: ConnectionConfig, resource: str, capability: str) -> str:
    if isinstance(cfg.auth, BackendServicesAuth):
        return (
            f"register the {resource}.{_API_WORD[capability]} (R4) API on the Epic app (scope "
            f"system/{resource}.{_LETTER[capability]}) and wait for it to reach this environment"
        )
    return (
        f"register the {resource}.{_API_WORD[capability]} (R4) API on the Epic app, add "
        f"user/{resource}.{_LETTER[capability]} (or user/{resource}.read/write) to auth.scopes, then run "
        f"`epic-bridge connect {cfg.name}` again"
    )


def fix_not_supported(resource: str, capability: str, needed_by: str) -> str:
    return (
        f"the server's CapabilityStatement does not offer {capability} on {resource}; disable "
        f"{needed_by} for {resource} in the config (Epic R4 has no create for Encounter or Appointment)"
    )


def fix_redirect(uri: str, client_id: str, body: str) -> str:
    if "redirect" in body.lower():
        return (
            f"redirect URI mismatch: register {uri} on the Epic app exactly (scheme, host, port and path), "
            "or change auth.redirect_uri to the registered one"
        )
    return (
        f"the authorize endpoint refused client {client_id} with redirect URI {uri}: check the client id "
        "belongs to this environment and the redirect URI is registered exactly"
    )
