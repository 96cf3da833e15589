"""SMART scope grammar and the checks built on it.

Accepted resource scopes: `(system|user|patient)/<Type>.<perms>` where `<Type>` is a FHIR resource type
or `*`, and `<perms>` is either SMART v2 letters (a non-empty, in-order subset of `cruds`) or a SMART v1
word (`read` = r+s, `write` = c+u+d, `*` = all). Anything else that does not start with a context is
an opaque scope token (`openid`, `fhirUser`, `launch/patient`, `offline_access`, ...).
FHIR read needs `r`, search `s`, create `c` (update `u`, delete `d`); an operation ($find, $book) is
allowed by any permission on its type.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

Interaction = Literal["read", "search", "create", "update", "delete", "operation"]

_RESOURCE_SCOPE = re.compile(r"^(system|user|patient)/(\*|[A-Z][A-Za-z]+)\.([A-Za-z*]+)$")
_CONTEXT_PREFIX = re.compile(r"^(system|user|patient)/")
_V2_LETTERS = re.compile(r"^c?r?u?d?s?$")
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 3.3 scope-token
_V1_WORDS = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset("cruds")}
_NEEDED = {"read": "r", "search": "s", "create": "c", "update": "u", "delete": "d"}

# Scopes a user-facing (authorization_code) grant may carry without being a registered API.
PASS_THROUGH_USER_SCOPES = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)


@dataclass(frozen=True)
class ResourceScope:
    context: str  # system | user | patient
    resource_type: str  # a FHIR type or "*"
    perms: frozenset[str]  # subset of {"c", "r", "u", "d", "s"}

    def allows(self, resource_type: str, interaction: Interaction) -> bool:
        if self.resource_type not in ("*", resource_type):
            return False
        if interaction == "operation":
            return bool(self.perms)
        return _NEEDED[interaction] in self.perms


def parse_resource_scope(text: str) -> ResourceScope | None:
    """The resource scope `text` denotes; None for non-resource scope tokens.

    Raises ValueError for a token that starts with a context (`system/`...) but is malformed.
    """
    if not _CONTEXT_PREFIX.match(text):
        if not _SCOPE_TOKEN.match(text):
            raise ValueError(f"malformed scope token {text!r}")
        return None
    m = _RESOURCE_SCOPE.match(text)
    if m is None:
        raise ValueError(f"malformed resource scope {text!r}")
    context, resource_type, perm_text = m.groups()
    if perm_text in _V1_WORDS:
        perms = _V1_WORDS[perm_text]
    elif _V2_LETTERS.match(perm_text) and perm_text:
        perms = frozenset(perm_text)
    else:
        raise ValueError(
            f"unknown permissions {perm_text!r} in scope {text!r} (use cruds letters or read/write/*)"
        )
    return ResourceScope(context, resource_type, perms)


def validate_scopes(scopes: Iterable[str]) -> list[str]:
    """Parse every scope (raising ValueError on a malformed one) and return them as a list."""
    out = []
    for s in scopes:
        if not isinstance(s, str):
            raise ValueError(f"scope must be a string, got {s!r}")
        parse_resource_scope(s)
        out.append(s)
    return out


def split_scope_param(value: str | None) -> list[str]:
    """The space-separated `scope` parameter as a list (order kept, duplicates dropped)."""
    if not value:
        return []
    return list(dict.fromkeys(value.split()))


def covers(granted: Iterable[str], resource_type: str, interaction: Interaction) -> bool:
    """True when some granted resource scope allows `interaction` on `resource_type`."""
    for text in granted:
        try:
            scope = parse_resource_scope(text)
        except ValueError:
            continue
        if scope is not None and scope.allows(resource_type, interaction):
            return True
    return False


def narrow(
    requested: Iterable[str],
    registered: Collection[str],
    *,
    contexts: Collection[str],
    pass_through: Collection[str] = (),
) -> list[str]:
    """The requested scopes the client may have.

    A requested resource scope is kept when its context is in `contexts` and the registered scopes of the
    same context and type (or `*`) together grant at least its permissions (so `system/Patient.rs` is
    granted by registered `system/Patient.r` + `system/Patient.s`); an opaque token is kept when registered
    or in `pass_through`. Malformed or unknown tokens are dropped (the response's `scope` tells the client).
    """
    registered_parsed = []
    for text in registered:
        parsed = parse_resource_scope(text)
        if parsed is not None:
            registered_parsed.append(parsed)
    kept = []
    for text in requested:
        try:
            scope = parse_resource_scope(text)
        except ValueError:
            continue
        if scope is None:
            if text in registered or text in pass_through:
                kept.append(text)
            continue
        if scope.context not in contexts:
            continue
        granted: set[str] = set()
        for r in registered_parsed:
            if r.context == scope.context and r.resource_type in ("*", scope.resource_type):
                granted |= r.perms
        if scope.perms <= granted:
            kept.append(text)
    return kept


def registered_in_contexts(registered: Iterable[str], contexts: Collection[str]) -> list[str]:
    """The registered resource scopes whose context is in `contexts`."""
    out = []
    for text in registered:
        scope = parse_resource_scope(text)
        if scope is not None and scope.context in contexts:
            out.append(text)
    return out
