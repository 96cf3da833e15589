"""Partial answers: a 200 search Bundle carrying Epic's 59204 warning ("Client not authorized for ...").

Epic answers a search with what the client may see and a warning OperationOutcome entry for what it
left out; the Bundle is still a 200. A rule names the client and/or resource type it applies to; with
`hide` the matches themselves are withheld too, so the answer looks like "no match" plus a warning — the
case a find-or-create must not mistake for the truth.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from epic_sim import outcomes


@dataclass(frozen=True)
class PartialRule:
    client_id: str | None = None  # None: every client
    resource: str | None = None  # None: every resource type
    hide: bool = False  # withhold the matches as well as warning

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartialRule:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown partial-answer fields: {', '.join(sorted(unknown))}")
        client, resource = data.get("client_id"), data.get("resource")
        return cls(
            client_id=str(client) if client is not None else None,
            resource=str(resource) if resource is not None else None,
            hide=bool(data.get("hide", False)),
        )

    @classmethod
    def parse(cls, text: str) -> PartialRule:
        """`CLIENT:RESOURCE[:hide]` (the CLI form); `*` for any client or resource."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "hide"):
            raise ValueError(f"expected CLIENT:RESOURCE[:hide], got {text!r}")
        return cls(
            client_id=None if parts[0] in ("", "*") else parts[0],
            resource=None if parts[1] in ("", "*") else parts[1],
            hide=len(parts) == 3,
        )

    def applies(self, client_id: str | None, resource: str) -> bool:
        return (self.client_id is None or self.client_id == client_id) and (
            self.resource is None or self.resource == resource
        )


class PartialAnswers:
    def __init__(self, rules: list[dict[str, Any]] | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[PartialRule] = []
        self.configure({"rules": rules or []})

    def configure(self, body: dict[str, Any]) -> None:
        """Replace the rules: body is {"rules": [...]}."""
        raw = body.get("rules", [])
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise ValueError("'rules' must be a list of objects")
        rules = [PartialRule.from_json(r) for r in raw]
        with self._lock:
            self._rules = rules

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._rules]

    def rule_for(self, client_id: str | None, resource: str) -> PartialRule | None:
        with self._lock:
            return next((r for r in self._rules if r.applies(client_id, resource)), None)


def not_authorized_warning(resource: str) -> dict[str, Any]:
    return outcomes.issue(
        "warning",
        "suppressed",
        f"Client not authorized for some {resource} content. Results may be incomplete.",
        epic_code=outcomes.NOT_AUTHORIZED_WARNING,
    )
