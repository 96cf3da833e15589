"""Content fingerprints: how the bridge tells "changed" from "same" on a server without versions.

Epic resources carry no meta.versionId or meta.lastUpdated, so the only evidence of a change is the
content itself. The fingerprint is a hash of the resource's canonical JSON with the fields that change
without the resource changing (server bookkeeping) left out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Fields a server may rewrite on every read without a clinical change.
VOLATILE_META = frozenset({"versionId", "lastUpdated", "source", "tag"})


def _without_volatile(resource: Mapping[str, Any]) -> dict[str, Any]:
    cleaned = dict(resource)
    meta = cleaned.get("meta")
    if isinstance(meta, Mapping):
        kept = {k: v for k, v in meta.items() if k not in VOLATILE_META}
        if kept:
            cleaned["meta"] = kept
        else:
            cleaned.pop("meta")
    return cleaned


def canonical_json(resource: Mapping[str, Any]) -> bytes:
    """Key-sorted, whitespace-free UTF-8 JSON of the resource without volatile fields."""
    return json.dumps(
        _without_volatile(resource), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def fingerprint(resource: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON."""
    return hashlib.sha256(canonical_json(resource)).hexdigest()
