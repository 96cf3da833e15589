"""A search followed page by page (each page its own retried call) up to a page cap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.fhir.client import FHIRClient, OutcomeMessage, SearchPage, parse_bundle
from bridge.sink.calls import CommandCalls
from bridge.sink.failures import Failure, GiveUp
from bridge.sink.model import ErrorInfo


@dataclass(frozen=True)
class Matches:
    resources: list[dict[str, Any]]
    truncated: bool  # the page cap stopped the search with a next link left
    # The server's warnings on any page (e.g. Epic 59204): what it returned may not be all that matches.
    warnings: list[OutcomeMessage] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [str(r.get("id")) for r in self.resources]

    @property
    def partial(self) -> bool:
        return bool(self.warnings)

    def warning_texts(self) -> tuple[str, ...]:
        """The warnings for a result's reader: code and the server's text, each once."""
        return tuple(dict.fromkeys(f"{w.code or 'no code'}: {w.text}" for w in self.warnings))


async def search_all(
    fhir: FHIRClient,
    calls: CommandCalls,
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    max_pages: int,
    deadline: float | None = None,
) -> Matches:
    """Every matching resource of `resource_type` (OperationOutcome entries are not resources),
    de-duplicated by id, in the server's order."""
    seen_links: set[str] = set()
    found: dict[str, dict[str, Any]] = {}
    warnings: list[OutcomeMessage] = []
    url: str = resource_type
    query: list[tuple[str, str]] | None = list(params)
    for number in range(1, max_pages + 1):

        async def page(
            url: str = url,
            query: list[tuple[str, str]] | None = query,
            number: int = number,
        ) -> SearchPage:
            response = await fhir.send("GET", url, params=query)
            return parse_bundle(fhir.json_of(response), number=number)

        result = await calls.call(page, deadline=deadline, what=f"search page {number}")
        warnings.extend(result.warnings)
        for resource in result.resources:
            if resource.get("resourceType") != resource_type:
                continue
            rid = resource.get("id")
            key = str(rid) if rid is not None else f"#{len(found)}"
            found.setdefault(key, resource)
        if result.next_url is None:
            return Matches(list(found.values()), truncated=False, warnings=warnings)
        if result.next_url in seen_links:
            message = f"paging loop: the server repeated a next link on page {number}"
            raise GiveUp(Failure(ErrorInfo(message), retriable=False, ambiguous=False))
        seen_links.add(result.next_url)
        url, query = result.next_url, None  # followed exactly as given (opaque sessionID links)
    return Matches(list(found.values()), truncated=True, warnings=warnings)
